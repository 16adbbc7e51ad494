"""Partitioner speed on the CPU (DESIGN §8 targets: 1e5 samples into 256 parts <= 10 ms, into
4096 parts <= 30 ms), with the quality reached (largest part / lower bound).

    python benchmarks/bench_partitioner.py
    pytest benchmarks/bench_partitioner.py --run-benchmarks -s
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from freescale.balance import CostModel, lower_bound, partition

CASES = [(100_000, 256), (100_000, 4096), (10_000, 64), (1_000_000, 4096)]


def long_tailed_costs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(np.log(400), 1.0, n), 4096).round() + 1
    return CostModel(a=1.0, b=512.0)(lengths)


def measure(n: int, parts: int, refine_rounds: int = 8, repeats: int = 9) -> dict:
    costs = long_tailed_costs(n)
    partition(costs, parts, refine_rounds)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = partition(costs, parts, refine_rounds)
        times.append(time.perf_counter() - start)
    return {
        "samples": n,
        "parts": parts,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_over_bound": float(result.loads.max() / lower_bound(costs, parts)),
    }


@pytest.mark.benchmark
@pytest.mark.parametrize("n, parts", CASES)
def test_partitioner_speed(n, parts):
    row = measure(n, parts)
    print(f"\n{row}")


def main() -> None:
    print("| samples | parts | median ms | min ms | largest part / lower bound |")
    print("|---:|---:|---:|---:|---:|")
    for n, parts in CASES:
        r = measure(n, parts)
        print(
            f"| {n} | {parts} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
            f"{r['max_over_bound']:.5f} |"
        )


if __name__ == "__main__":
    main()
