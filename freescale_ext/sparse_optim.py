"""Sparse (row) optimizer updates of embedding tables, DESIGN §7: the reference implementation
in PyTorch ops (any device), which the fused CUDA kernels are to match.

Every function takes `rows` (unique int64 row indices into the table) and `grads` ([len(rows),
dim], the summed gradient of each row) and updates the table and its state in place, touching
only those rows. Duplicated rows must be coalesced first (`coalesce_rows`).
"""

from __future__ import annotations

import math

import torch


def coalesce_rows(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique rows ascending, the summed gradient of each)."""
    unique, inverse = torch.unique(rows, sorted=True, return_inverse=True)
    summed = grads.new_zeros((unique.numel(), grads.shape[1])).index_add_(0, inverse, grads)
    return unique, summed


def _check(table: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor, *states) -> None:
    if rows.dim() != 1 or grads.dim() != 2 or grads.shape != (rows.numel(), table.shape[1]):
        raise ValueError(
            f"sparse update: rows must be [R] and grads [R, {table.shape[1]}], got "
            f"{tuple(rows.shape)} and {tuple(grads.shape)}"
        )
    if rows.dtype != torch.int64:
        raise ValueError(f"sparse update: rows must be int64, got {rows.dtype}")
    for state in states:
        if state.shape[0] != table.shape[0]:
            raise ValueError("sparse update: optimizer state must have the table's rows")


def rowwise_adagrad_(
    table: torch.Tensor,
    sum_sq: torch.Tensor,
    rows: torch.Tensor,
    grads: torch.Tensor,
    *,
    lr: float,
    eps: float = 1e-8,
) -> None:
    """Row-wise Adagrad (one accumulator per row, as torchrec's EXACT_ROWWISE_ADAGRAD):
    G_r += mean_d(g_rd^2); w_r -= lr * g_r / (sqrt(G_r) + eps). sum_sq: [num_rows]."""
    _check(table, rows, grads, sum_sq)
    acc = sum_sq[rows] + grads.pow(2).mean(dim=1)
    sum_sq[rows] = acc
    table[rows] -= lr * grads / (acc.sqrt() + eps)[:, None]


def sparse_adam_(
    table: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    rows: torch.Tensor,
    grads: torch.Tensor,
    *,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """Lazy Adam, exactly `torch.optim.SparseAdam`'s update: the moments of the given rows only,
    bias correction with the optimizer's global step (1 on the first update):
    w_r -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m_r / (sqrt(v_r) + eps)."""
    _check(table, rows, grads, exp_avg, exp_avg_sq)
    beta1, beta2 = betas
    m = exp_avg[rows] * beta1 + grads * (1 - beta1)
    v = exp_avg_sq[rows] * beta2 + grads.pow(2) * (1 - beta2)
    exp_avg[rows] = m
    exp_avg_sq[rows] = v
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    table[rows] -= step_size * m / (v.sqrt() + eps)
