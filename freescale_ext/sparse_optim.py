"""Sparse (row) optimizer updates of embedding tables, DESIGN §7.

Every update takes `rows` (unique int64 row indices into the table) and `grads` ([len(rows),
dim], the summed gradient of each row) and updates the table and its state in place, touching
only those rows. Duplicated rows must be coalesced first (`coalesce_rows`).

`rowwise_adagrad_` and `sparse_adam_` run the fused CUDA kernels (`torch.ops.freescale.
sparse_rowwise_adagrad_` / `sparse_adam_`, one warp per row) for float32 and float64 CUDA
tables, and the PyTorch references `reference_rowwise_adagrad_` / `reference_sparse_adam_`
otherwise.
"""

from __future__ import annotations

import math

import torch

import freescale_ext._loader  # noqa: F401  (registers the ops)
from freescale_ext._loader import cuda_compiled


def coalesce_rows(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique rows ascending, the summed gradient of each)."""
    unique, inverse = torch.unique(rows, sorted=True, return_inverse=True)
    summed = grads.new_zeros((unique.numel(), grads.shape[1])).index_add_(0, inverse, grads)
    return unique, summed


def _check(table: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor, *states) -> None:
    """Shapes and dtypes (no values read)."""
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


def reference_rowwise_adagrad_(
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


def reference_sparse_adam_(
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


def validate_rows(table: torch.Tensor, rows: torch.Tensor) -> None:
    """Raises unless `rows` are unique and inside the table. Reads them: a device sync for CUDA
    tensors."""
    if rows.numel() == 0:
        return
    if int(rows.min()) < 0 or int(rows.max()) >= table.shape[0]:
        raise ValueError(
            f"sparse update: rows must be in [0, {table.shape[0]}), got "
            f"[{int(rows.min())}, {int(rows.max())}]"
        )
    if torch.unique(rows).numel() != rows.numel():
        raise ValueError("sparse update: rows must be unique (coalesce_rows sums duplicates)")


def has_kernel(table: torch.Tensor) -> bool:
    """Whether the fused CUDA kernels serve this table."""
    return table.is_cuda and table.dtype in (torch.float32, torch.float64) and cuda_compiled()


def rowwise_adagrad_(
    table: torch.Tensor,
    sum_sq: torch.Tensor,
    rows: torch.Tensor,
    grads: torch.Tensor,
    *,
    lr: float,
    eps: float = 1e-8,
    validate: bool = True,
) -> None:
    """Row-wise Adagrad (see `reference_rowwise_adagrad_`); `validate` checks that rows are
    unique and inside the table first (a device sync on CUDA)."""
    _check(table, rows, grads, sum_sq)
    if validate:
        validate_rows(table, rows)
    if has_kernel(table):
        torch.ops.freescale.sparse_rowwise_adagrad_(table, sum_sq, rows, grads, lr, eps)
    else:
        reference_rowwise_adagrad_(table, sum_sq, rows, grads, lr=lr, eps=eps)


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
    validate: bool = True,
) -> None:
    """Lazy Adam (see `reference_sparse_adam_`); `validate` checks that rows are unique and
    inside the table first (a device sync on CUDA)."""
    _check(table, rows, grads, exp_avg, exp_avg_sq)
    if validate:
        validate_rows(table, rows)
    if has_kernel(table):
        torch.ops.freescale.sparse_adam_(
            table, exp_avg, exp_avg_sq, rows, grads, step, lr, betas[0], betas[1], eps
        )
    else:
        reference_sparse_adam_(
            table, exp_avg, exp_avg_sq, rows, grads, step=step, lr=lr, betas=betas, eps=eps
        )


@torch.library.register_fake("freescale::sparse_rowwise_adagrad_")
def _adagrad_fake(table, sum_sq, rows, grads, lr, eps) -> None:
    return None


@torch.library.register_fake("freescale::sparse_adam_")
def _adam_fake(table, exp_avg, exp_avg_sq, rows, grads, step, lr, beta1, beta2, eps) -> None:
    return None
