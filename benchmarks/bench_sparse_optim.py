"""Microbenchmark of the fused sparse optimizer kernels (row-wise Adagrad, lazy Adam) against
the PyTorch reference update (gather, compute, scatter), on an embedding table of `--rows`
rows: the update of R unique random rows (sorted, as `coalesce_rows` returns them).

    python benchmarks/bench_sparse_optim.py [--rows 10000000] [--dim 128] [--out results.json]
    pytest benchmarks/bench_sparse_optim.py --run-benchmarks -s

Bytes moved per update (the traffic the kernel cannot avoid): Adagrad reads the gradient and
reads and writes the row and its accumulator, 3·R·D·4 + 2·R·4 bytes (float32); Adam also reads
and writes both moments, 7·R·D·4 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass

import pytest
import torch
from bench_hstu_attention import median_ms

from freescale_ext.sparse_optim import (
    reference_rowwise_adagrad_,
    reference_sparse_adam_,
    rowwise_adagrad_,
    sparse_adam_,
)


@dataclass
class Result:
    optimizer: str
    table_rows: int
    dim: int
    rows: int
    kernel_ms: float
    torch_ms: float
    kernel_gbps: float
    torch_gbps: float


def run_case(optimizer: str, table_rows: int, dim: int, rows: int) -> Result:
    gen = torch.Generator(device="cuda").manual_seed(0)
    table = torch.randn(table_rows, dim, device="cuda", generator=gen) * 0.01
    touched = torch.randperm(table_rows, device="cuda", generator=gen)[:rows].sort().values
    grads = torch.randn(rows, dim, device="cuda", generator=gen)
    if optimizer == "rowwise_adagrad":
        sum_sq = torch.zeros(table_rows, device="cuda")
        moved = rows * dim * 4 * 3 + rows * 4 * 2

        def kernel():
            rowwise_adagrad_(table, sum_sq, touched, grads, lr=0.01, validate=False)

        def reference():
            reference_rowwise_adagrad_(table, sum_sq, touched, grads, lr=0.01)
    else:
        exp_avg, exp_avg_sq = torch.zeros_like(table), torch.zeros_like(table)
        moved = rows * dim * 4 * 7
        kw = dict(step=10, lr=1e-3)

        def kernel():
            sparse_adam_(table, exp_avg, exp_avg_sq, touched, grads, **kw, validate=False)

        def reference():
            reference_sparse_adam_(table, exp_avg, exp_avg_sq, touched, grads, **kw)

    kernel_ms, torch_ms = median_ms(kernel), median_ms(reference)
    return Result(
        optimizer,
        table_rows,
        dim,
        rows,
        kernel_ms,
        torch_ms,
        moved / kernel_ms / 1e6,
        moved / torch_ms / 1e6,
    )


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| optimizer | table rows | dim | rows updated | fused ms | PyTorch ms | speed-up "
        "| fused GB/s | PyTorch GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.optimizer} | {r.table_rows:,} | {r.dim} | {r.rows:,} | {r.kernel_ms:.3f} | "
            f"{r.torch_ms:.3f} | {r.torch_ms / r.kernel_ms:.1f}x | {r.kernel_gbps:.0f} | "
            f"{r.torch_gbps:.0f} |"
        )
    return "\n".join(lines)


pytestmark = [pytest.mark.benchmark, pytest.mark.gpu]


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adam"])
def test_sparse_optimizer(optimizer):
    result = run_case(optimizer, 1_000_000, 128, 65_536)
    print(markdown_table([result]))
    assert result.kernel_ms > 0 and result.torch_ms > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="table rows")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--updated", default="16384,262144,1048576", help="rows per update")
    parser.add_argument("--out", default=os.environ.get("FREESCALE_BENCH_OUT"), help="JSON path")
    args = parser.parse_args()
    results = []
    for optimizer in ("rowwise_adagrad", "adam"):
        for rows in (int(r) for r in args.updated.split(",")):
            results.append(run_case(optimizer, args.rows, args.dim, rows))
            print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
            torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}, float32")
    print(markdown_table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)


if __name__ == "__main__":
    main()
