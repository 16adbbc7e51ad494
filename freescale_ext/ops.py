"""Typed wrappers, fake (meta) implementations and autograd for `torch.ops.freescale`."""

from __future__ import annotations

import torch

from freescale_ext import _loader  # noqa: F401  (registers the ops)

_HSTU = "freescale::hstu_attention"
_HSTU_BWD = "freescale::hstu_attention_backward"


def _int32(t: torch.Tensor | None, name: str) -> torch.Tensor | None:
    if t is None or t.dtype == torch.int32:
        return t
    # Only integer tensors are converted: a float tensor here is a caller's mistake, and
    # truncating it (3.5 -> 3) would give a silently wrong answer.
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise RuntimeError(f"{name} must be an integer tensor, got {t.dtype}")
    return t.to(torch.int32)


def check_seq_offsets(
    seq_offsets: torch.Tensor,
    total_len: int,
    max_seq_len: int,
    num_targets: torch.Tensor | None = None,
) -> None:
    """Raise a RuntimeError naming the first bad value if the jagged offsets are malformed.

    Checks: offsets start at 0, never decrease, end at `total_len`, each length is at most
    `max_seq_len`, and 0 <= num_targets[b] <= length[b]. Reads the offsets, so for CUDA tensors
    this waits for the device.
    """
    torch.ops.freescale.check_seq_offsets(
        _int32(seq_offsets, "seq_offsets"),
        int(total_len),
        int(max_seq_len),
        _int32(num_targets, "num_targets"),
    )


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
    num_targets: torch.Tensor | None = None,
    contextual_len: int = 0,
    max_attn_len: int = 0,
    pos_weight: torch.Tensor | None = None,
    ts_weight: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Jagged HSTU attention (DESIGN §4): o_i = sum_j SiLU(alpha q_i.k_j + b_ij) / N * M_ij * v_j.

    Args:
        q, k: [T, H, d_qk] packed over the batch; v: [T, H, d_v]. float32/float16/bfloat16
            (float64 on CPU). Rows may be strided views of a fused projection.
        seq_offsets: [B+1] offsets of each sequence into T (int32; int64 is converted).
        max_seq_len: N, the fixed normalizer (use the same value in training, evaluation and
            serving); every sequence must be at most this long.
        alpha: scale of q.k.
        num_targets: optional [B]; the last num_targets[b] tokens of sequence b see the whole
            history and themselves only.
        contextual_len: a prefix of this many contextual tokens that see the whole history.
        max_attn_len: if > 0, a row attends at most this far back (local window).
        pos_weight: optional [2N-1] relative position table, b_ij += pos_weight[N-1+j-i].
        ts_weight: optional [num_buckets+1] time table, b_ij += ts_weight[bucket(t_{i+1}-t_j)],
            bucket(x) = clamp(floor(ln(max(|x|,1)) / 0.301), 0, num_buckets); needs timestamps.
        timestamps: optional [T] int64, one per token.
        validate: check the offsets' values first (a device sync for CUDA inputs). Callers that
            validated their batch once on the host (freescale's models do) pass False; the
            kernels never read or write out of bounds either way.

    Returns:
        [T, H, d_v] in q's dtype. Differentiable in q, k, v, pos_weight and ts_weight.
    """
    seq_offsets = _int32(seq_offsets, "seq_offsets")
    num_targets = _int32(num_targets, "num_targets")
    if timestamps is not None and timestamps.dtype != torch.int64:
        timestamps = timestamps.to(torch.int64)
    if validate:
        check_seq_offsets(seq_offsets, q.shape[0], max_seq_len, num_targets)
    return torch.ops.freescale.hstu_attention(
        q,
        k,
        v,
        seq_offsets,
        int(max_seq_len),
        float(alpha),
        num_targets,
        int(contextual_len),
        int(max_attn_len),
        pos_weight,
        ts_weight,
        timestamps,
    )


@torch.library.register_fake(_HSTU)
def _hstu_attention_fake(
    q,
    k,
    v,
    seq_offsets,
    max_seq_len,
    alpha=1.0,
    num_targets=None,
    contextual_len=0,
    max_attn_len=0,
    pos_weight=None,
    ts_weight=None,
    timestamps=None,
):
    torch._check(k.shape == q.shape, lambda: "hstu_attention: k must have q's shape")
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


@torch.library.register_fake(_HSTU_BWD)
def _hstu_attention_backward_fake(
    grad_out,
    q,
    k,
    v,
    seq_offsets,
    max_seq_len,
    alpha,
    num_targets,
    contextual_len,
    max_attn_len,
    pos_weight,
    ts_weight,
    timestamps,
):
    # The CPU and CUDA kernels return fresh contiguous tensors whatever the inputs' strides
    # (empty_like would copy the strides of a permuted dense input and mismatch them).
    grad_pos = pos_weight.new_empty(pos_weight.shape) if pos_weight is not None else q.new_empty(0)
    grad_ts = ts_weight.new_empty(ts_weight.shape) if ts_weight is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_pos, grad_ts


def _hstu_setup_context(ctx, inputs, output):
    (
        q,
        k,
        v,
        seq_offsets,
        max_seq_len,
        alpha,
        num_targets,
        contextual_len,
        max_attn_len,
        pos_weight,
        ts_weight,
        timestamps,
    ) = inputs
    ctx.save_for_backward(q, k, v, seq_offsets, num_targets, pos_weight, ts_weight, timestamps)
    ctx.scalars = (max_seq_len, alpha, contextual_len, max_attn_len)


def _hstu_backward(ctx, grad_out):
    q, k, v, seq_offsets, num_targets, pos_weight, ts_weight, timestamps = ctx.saved_tensors
    max_seq_len, alpha, contextual_len, max_attn_len = ctx.scalars
    dq, dk, dv, dpos, dts = torch.ops.freescale.hstu_attention_backward(
        grad_out,
        q,
        k,
        v,
        seq_offsets,
        max_seq_len,
        alpha,
        num_targets,
        contextual_len,
        max_attn_len,
        pos_weight,
        ts_weight,
        timestamps,
    )
    return (
        dq,
        dk,
        dv,
        None,
        None,
        None,
        None,
        None,
        None,
        dpos if pos_weight is not None else None,
        dts if ts_weight is not None else None,
        None,
    )


torch.library.register_autograd(_HSTU, _hstu_backward, setup_context=_hstu_setup_context)
