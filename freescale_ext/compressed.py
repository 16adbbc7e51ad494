"""Typed wrapper, fake (meta) implementation and autograd of the token-compressed (PerSRec)
attention op `torch.ops.freescale.compressed_attention` (DESIGN §5)."""

from __future__ import annotations

import functools

import torch

from freescale_ext._loader import _C, compiled_for, cuda_compiled
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
    skip_empty_tiles: bool = True,
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
        skip_empty_tiles: CUDA kernels skip the tiles the mask empties (block-sparse); False
            visits every causal tile (the dense masked computation, a benchmark baseline).

    CUDA float16/bfloat16 inputs with head dims up to 128 run the block-sparse tensor-core
    kernels (sm_80+); other CUDA inputs run `compressed_attention_dense`.

    Returns:
        [T, H, d_v] in q's dtype, differentiable in q, k and v.
    """
    seq_offsets = _int32(seq_offsets, "seq_offsets")
    region = _int32(region, "region")
    if is_token.dtype != torch.bool:
        raise RuntimeError(f"compressed_attention: is_token must be bool, got {is_token.dtype}")
    if validate:
        check_seq_offsets(seq_offsets, q.shape[0], max_seq_len)
    if q.device.type != "cpu" and not has_kernel(q, k, v):
        return compressed_attention_dense(
            q, k, v, seq_offsets, region, is_token, int(max_seq_len), alpha=float(alpha)
        )
    return torch.ops.freescale.compressed_attention(
        q, k, v, seq_offsets, region, is_token, int(max_seq_len), float(alpha), skip_empty_tiles
    )


_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
_KERNEL_MAX_HEAD_DIM = 128


def has_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether CUDA inputs of these dtypes and head dims run the block-sparse kernels."""
    return (
        q.device.type == "cuda"
        and cuda_compiled()
        and q.dtype in _KERNEL_DTYPES
        and max(q.shape[-1], v.shape[-1]) <= _KERNEL_MAX_HEAD_DIM
        and compiled_for(torch.cuda.get_device_capability(q.device))
        and kernels_fit(q.device, max(q.shape[-1], v.shape[-1]))
    )


def kernels_fit(device: torch.device, head_dim: int) -> bool:
    """Whether the kernels' shared memory at this head dim fits a block of `device`: GPUs of
    sm_86, sm_89 and sm_120 offer 99 KB, less than the backward takes at head dims over 64, and
    there the wrapper runs densely (the op itself raises)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _kernel_shared_bytes(head_dim) <= _block_shared_bytes(index)


@functools.cache
def _kernel_shared_bytes(head_dim: int) -> int:
    return _C.compressed_shared_memory_bytes(head_dim)


@functools.cache
def _block_shared_bytes(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin


def compressed_attention_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    region: torch.Tensor,
    is_token: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float = 1.0,
) -> torch.Tensor:
    """The same function with PyTorch ops on any device, batched over padded [B, H, L, L]
    scores (every pair computed, then masked); differentiable by autograd. Inputs are trusted
    (no checks beyond PyTorch's own). Computes in float32 for half-precision inputs."""
    total, heads = q.shape[0], q.shape[1]
    if total == 0:
        return q.new_zeros((0, heads, v.shape[2]))
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    layout = PaddedLayout(seq_offsets, region, is_token, total)
    qp, kp, vp = (layout.pad(x.to(compute)).transpose(1, 2) for x in (q, k, v))  # [B, H, L, d]
    scores = torch.nn.functional.silu(alpha * qp @ kp.transpose(-1, -2))
    probs = scores * (layout.mask[:, None].to(compute) / max_seq_len)
    return layout.unpad((probs @ vp).transpose(1, 2)).to(q.dtype)


class PaddedLayout:
    """Jagged rows padded per sequence, and the PerSRec mask over the padding: mask[b, i, j]
    is True where row i of sequence b sees its row j (j <= i, both real rows, and is_token_j or
    region_j == region_i). Padded to `width` when given (at least the longest length), else
    to the longest length, read from the offsets: one host sync."""

    def __init__(
        self,
        seq_offsets: torch.Tensor,
        region: torch.Tensor,
        is_token: torch.Tensor,
        total: int,
        width: int | None = None,
    ) -> None:
        offsets = seq_offsets.long()
        lengths = offsets[1:] - offsets[:-1]
        device = region.device
        self.batch = lengths.numel()
        self.seq = torch.repeat_interleave(
            torch.arange(self.batch, device=device), lengths, output_size=total
        )
        self.pos = torch.arange(total, device=device) - offsets[self.seq]
        self.width = int(lengths.max()) if width is None else int(width)
        reg = self.pad(region.long(), -1)  # [B, L]
        tok = self.pad(is_token, False)
        idx = torch.arange(self.width, device=device)
        in_seq = idx[None, :] < lengths[:, None]
        mask = (idx[None, :, None] >= idx[None, None, :]) & in_seq[:, :, None] & in_seq[:, None, :]
        self.mask = mask & (tok[:, None, :] | (reg[:, :, None] == reg[:, None, :]))

    def pad(self, x: torch.Tensor, fill=0) -> torch.Tensor:
        """[T, ...] -> [B, L, ...]"""
        out = x.new_full((self.batch, self.width, *x.shape[1:]), fill)
        out[self.seq, self.pos] = x
        return out

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [T, ...]"""
        return x[self.seq, self.pos]


@torch.library.register_fake(_OP)
def _fake(q, k, v, seq_offsets, region, is_token, max_seq_len, alpha=1.0, skip_empty_tiles=True):
    torch._check(k.shape == q.shape, lambda: "compressed_attention: k must have q's shape")
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


@torch.library.register_fake(_OP + "_backward")
def _backward_fake(
    grad_out, q, k, v, seq_offsets, region, is_token, max_seq_len, alpha, skip_empty_tiles=True
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, seq_offsets, region, is_token, max_seq_len, alpha, skip_empty_tiles = inputs
    ctx.save_for_backward(q, k, v, seq_offsets, region, is_token)
    ctx.scalars = (max_seq_len, alpha, skip_empty_tiles)


def _backward(ctx, grad_out):
    q, k, v, seq_offsets, region, is_token = ctx.saved_tensors
    dq, dk, dv = torch.ops.freescale.compressed_attention_backward(
        grad_out, q, k, v, seq_offsets, region, is_token, *ctx.scalars
    )
    return dq, dk, dv, None, None, None, None, None, None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
