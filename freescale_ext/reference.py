"""Reference implementations: the oracle the native ops are tested against.

Plain PyTorch, one sequence at a time, written for clarity rather than speed, and
differentiated by autograd (the native ops implement the backward formulas by hand, so
agreement checks both). Runs in whatever dtype it is given: float64 for the oracle, the
kernel's own dtype for the "same-precision PyTorch implementation" whose error sets the
tolerance (FlashAttention's rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TS_BUCKET_DIVISOR = 0.301  # bucket(Δ) = floor(ln(max(|Δ|, 1)) / 0.301)
NUM_TS_BUCKETS = 128


def hstu_valid_mask(
    length: int,
    *,
    contextual_len: int = 0,
    num_targets: int | None = None,
    max_attn_len: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[length, length] bool: may row i attend to column j?

    Each position gets an id: positions of the contextual prefix share id 0, history positions
    count up from there, and all targets share the id of the first target. Then:
    causal over ids with the diagonal allowed, optionally within `max_attn_len` ids, and the
    contextual rows additionally see every non-target column.
    """
    idx = torch.arange(length, device=device)
    ids = idx.clone()
    max_id = length
    if contextual_len > 0:
        ids = (idx - contextual_len + 1).clamp(min=0)
        max_id = length - contextual_len + 1
    if num_targets is not None:
        max_id = max_id - int(num_targets)
        ids = ids.clamp(max=max_id)
    row, col = ids[:, None], ids[None, :]
    valid = (idx[:, None] == idx[None, :]) | (row > col)
    if max_attn_len > 0:
        valid &= (row - col) <= max_attn_len
    if contextual_len > 0:
        valid |= (row == 0) & (col < max_id)
    return valid


def ts_bucket(delta: torch.Tensor, num_buckets: int = NUM_TS_BUCKETS) -> torch.Tensor:
    """Time-gap buckets of the research HSTU layer, computed in float64."""
    gap = delta.abs().clamp(min=1).to(torch.float64)
    return torch.floor(torch.log(gap) / TS_BUCKET_DIVISOR).long().clamp(0, num_buckets)


def hstu_relative_bias(
    length: int,
    max_seq_len: int,
    pos_weight: torch.Tensor | None,
    ts_weight: torch.Tensor | None,
    timestamps: torch.Tensor | None,
) -> torch.Tensor | None:
    """[length, length] b_ij = pos_weight[N-1+j-i] + ts_weight[bucket(t_{i+1} - t_j)]."""
    bias = None
    if pos_weight is not None:
        i = torch.arange(length, device=pos_weight.device)
        bias = pos_weight[max_seq_len - 1 + i[None, :] - i[:, None]]
    if ts_weight is not None:
        assert timestamps is not None, "ts_weight needs timestamps"
        t = timestamps.long()
        t_next = torch.cat([t[1:], t[-1:]])  # the last token uses its own timestamp
        b = ts_weight[ts_bucket(t_next[:, None] - t[None, :], ts_weight.numel() - 1)]
        bias = b if bias is None else bias + b
    return bias


def hstu_attention_reference(
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
) -> torch.Tensor:
    """Same contract as `freescale_ext.hstu_attention`; differentiable by autograd."""
    offsets = seq_offsets.long().tolist()
    targets = num_targets.tolist() if num_targets is not None else None
    outputs = []
    for b in range(len(offsets) - 1):
        start, end = offsets[b], offsets[b + 1]
        n = end - start
        if n == 0:
            continue
        qb, kb, vb = (x[start:end].transpose(0, 1) for x in (q, k, v))  # [H, n, d]
        scores = alpha * qb @ kb.transpose(-1, -2)
        bias = hstu_relative_bias(
            n,
            max_seq_len,
            pos_weight.to(q.dtype) if pos_weight is not None else None,
            ts_weight.to(q.dtype) if ts_weight is not None else None,
            timestamps[start:end] if timestamps is not None else None,
        )
        if bias is not None:
            scores = scores + bias
        mask = hstu_valid_mask(
            n,
            contextual_len=contextual_len,
            num_targets=targets[b] if targets is not None else None,
            max_attn_len=max_attn_len,
            device=q.device,
        )
        probs = F.silu(scores) / max_seq_len * mask.to(scores.dtype)
        outputs.append((probs @ vb).transpose(0, 1))
    if not outputs:
        return q.new_zeros((q.shape[0], q.shape[1], v.shape[2]))
    return torch.cat(outputs)


def compressed_valid_mask(region: torch.Tensor, is_token: torch.Tensor) -> torch.Tensor:
    """[n, n] bool of one sequence: (j <= i) and (is_token_j or region_j == region_i)."""
    n = region.numel()
    idx = torch.arange(n, device=region.device)
    causal = idx[None, :] <= idx[:, None]
    return causal & (is_token[None, :] | (region[None, :] == region[:, None]))


def compressed_attention_reference(
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
    """Same contract as `freescale_ext.compressed_attention`; differentiable by autograd."""
    offsets = seq_offsets.long().tolist()
    outputs = []
    for b in range(len(offsets) - 1):
        start, end = offsets[b], offsets[b + 1]
        if end == start:
            continue
        qb, kb, vb = (x[start:end].transpose(0, 1) for x in (q, k, v))  # [H, n, d]
        mask = compressed_valid_mask(region[start:end], is_token[start:end])
        probs = F.silu(alpha * qb @ kb.transpose(-1, -2)) / max_seq_len * mask.to(q.dtype)
        outputs.append((probs @ vb).transpose(0, 1))
    if not outputs:
        return q.new_zeros((q.shape[0], q.shape[1], v.shape[2]))
    return torch.cat(outputs)
