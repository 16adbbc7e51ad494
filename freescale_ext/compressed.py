"""Typed wrapper, fake (meta) implementation and autograd of the token-compressed (PerSRec)
attention op `torch.ops.freescale.compressed_attention` (DESIGN §5)."""

from __future__ import annotations

import torch

from freescale_ext.ops import _int32, check_seq_offsets

_OP = "freescale::compressed_attention"


def compressed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    region: torch.Tensor,
    is_token: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    validate: bool = True,
) -> torch.Tensor:
    """o_i = sum_j SiLU(alpha q_i.k_j) / N * M_ij * v_j with, inside each sequence,
    M_ij = (j <= i) and (is_token_j or region_j == region_i).

    A PerSRec sequence is laid out [history segment(s) | token groups | recent items]: a token
    group carries the region of the segment before it, so history rows see their own segment,
    token rows their segment and every earlier token, and recent rows every token and the
    earlier recent rows, never raw history.

    Args:
        q, k: [T, H, d_qk] packed over the batch; v: [T, H, d_v]. float32/float16/bfloat16
            (float64 too).
        seq_offsets: [B+1] offsets of each sequence into T (int32; int64 is converted).
        region: [T] segment id of every position (integer; converted to int32).
        is_token: [T] bool, True at the learnable compression tokens.
        max_seq_len: N, the fixed normalizer, the same in training and (cached) serving.
        alpha: scale of q.k.
        validate: check the offsets' values first (reads them: a device sync for CUDA inputs).

    Returns:
        [T, H, d_v] in q's dtype, differentiable in q, k and v.
    """
    if q.device.type != "cpu":
        raise NotImplementedError(
            "compressed_attention has a CPU implementation only so far; its CUDA kernels are "
            f"not built yet (got tensors on {q.device})"
        )
    seq_offsets = _int32(seq_offsets, "seq_offsets")
    region = _int32(region, "region")
    if is_token.dtype != torch.bool:
        raise RuntimeError(f"compressed_attention: is_token must be bool, got {is_token.dtype}")
    if validate:
        check_seq_offsets(seq_offsets, q.shape[0], max_seq_len)
    return torch.ops.freescale.compressed_attention(
        q, k, v, seq_offsets, region, is_token, int(max_seq_len), float(alpha)
    )


@torch.library.register_fake(_OP)
def _fake(q, k, v, seq_offsets, region, is_token, max_seq_len, alpha=1.0):
    torch._check(k.shape == q.shape, lambda: "compressed_attention: k must have q's shape")
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


@torch.library.register_fake(_OP + "_backward")
def _backward_fake(grad_out, q, k, v, seq_offsets, region, is_token, max_seq_len, alpha):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, seq_offsets, region, is_token, max_seq_len, alpha = inputs
    ctx.save_for_backward(q, k, v, seq_offsets, region, is_token)
    ctx.scalars = (max_seq_len, alpha)


def _backward(ctx, grad_out):
    q, k, v, seq_offsets, region, is_token = ctx.saved_tensors
    dq, dk, dv = torch.ops.freescale.compressed_attention_backward(
        grad_out, q, k, v, seq_offsets, region, is_token, *ctx.scalars
    )
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
