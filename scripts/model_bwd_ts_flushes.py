"""Model of the sm_90a bias backward's time-bucket run flushes (no GPU).

Replays, for the benchmark's times (non-decreasing, consecutive gaps uniform in [0, 1e5)), what
each consumer warp of `hstu_bwd_sm90.cuh` does per step with its key rows' runs: which rows take
the two-bucket path (every lane's row spans at most two buckets) or the per-pair cell path, and,
per flushing pair (one warp instruction), how many lanes flush (each lane's flush is one global
reduction into the block's copy of the table, since 61c931e) and how many rounds a shared float
atomic's compare-and-swap loop went onto the per-lane slot copies the kernel had until then (the
most lanes on one address; kept to compare with the earlier measurements). Per step distance
from the diagonal, averaged over warp-steps:

    python3 scripts/model_bwd_ts_flushes.py [--n 1024] [--seqs 2] [--copies g|g+t%2]

`--copies` is the former slot copy a lane flushed to: one per row group g, or per g and parity of t.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np

NUM_BUCKETS = 128


def bucket(gap: int) -> int:
    """The float64 bucket of DESIGN §4, clamped."""
    b = int(math.floor(math.log(max(gap, 1)) / 0.301))
    return min(max(b, 0), NUM_BUCKETS)


def copy_of(g: int, t: int, copies: str) -> int:
    return g if copies == "g" else g + 8 * (t & 1)


def model(n: int, seqs: int, copies: str) -> dict[int, np.ndarray]:
    """Per distance (row tiles past the key block's first, 9 = 9 or more): warp-steps, rows on
    the cell path, rows on the two-bucket path, flushing instructions, lanes flushing, rounds."""
    rng = np.random.default_rng(0)
    stats: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(6))
    for _ in range(seqs):
        ts = np.cumsum(rng.integers(0, 10**5, n))

        def gap(i: int, j: int, ts=ts) -> int:  # t_{i+1} - t_j (the last query: t_i - t_j)
            return int(ts[min(i + 1, n - 1)] - ts[j])

        for col0 in range(0, n, 128):
            for key_base in (0, 64):
                for warp in range(4):
                    run: dict[tuple, int] = {}  # (g, t, r) -> open run's bucket
                    for tile in range(col0 // 64, (n + 63) // 64):
                        row0 = tile * 64
                        st = stats[min(tile - col0 // 64, 9)]
                        st[0] += 1
                        for r in range(2):
                            rows = [col0 + key_base + warp * 16 + g + 8 * r for g in range(8)]
                            _row_step(st, run, rows, row0, r, n, gap, copies)
    return stats


def _flush(st, run, lanes_buckets, r, copies) -> None:
    """One warp instruction: each (g, t, bucket) lane moves its run to `bucket`."""
    on_address: dict[tuple, int] = defaultdict(int)
    for (g, t), b in lanes_buckets.items():
        prev = run.get((g, t, r), -1)
        if b != prev:
            if prev >= 0:
                on_address[(copy_of(g, t, copies), prev)] += 1
            run[(g, t, r)] = b
    if on_address:
        st[3] += 1
        st[4] += sum(on_address.values())
        st[5] += max(on_address.values())


def _row_step(st, run, rows, row0, r, n, gap, copies) -> None:
    bounds = {}
    for g, j in enumerate(rows):
        for t in range(4):
            lo = bucket(max(gap(row0 + 2 * t, j), 0))
            up = bucket(max(gap(min(row0 + 57 + 2 * t, n - 1), j), 0))
            bounds[(g, t)] = (lo, up)
    if all(up >= lo and up - lo <= 1 for lo, up in bounds.values()):
        st[2] += 1
        _flush(st, run, {k: lo for k, (lo, _) in bounds.items()}, r, copies)
        _flush(st, run, {k: up for k, (lo, up) in bounds.items() if up != lo}, r, copies)
        return
    st[1] += 1
    for c in range(8):
        for b in range(2):
            visible = {}
            for g, j in enumerate(rows):
                for t in range(4):
                    i = row0 + 8 * c + 2 * t + b
                    if i < n and j <= i:
                        visible[(g, t)] = bucket(gap(i, j))
            _flush(st, run, visible, r, copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--seqs", type=int, default=2)
    parser.add_argument("--copies", choices=["g", "g+t%2"], default="g+t%2")
    args = parser.parse_args()
    stats = model(args.n, args.seqs, args.copies)
    print("distance | warp-steps | cell rows | two-bucket rows | flushing pairs | lanes | rounds")
    total = np.zeros(6)
    for d in sorted(stats):
        v = stats[d]
        total += v
        label = f"{d}+" if d == 9 else str(d)
        print(_row(label, v))
    print(_row("all", total))


def _row(label: str, v: np.ndarray) -> str:
    """Rows and flushing pairs per warp-step; lanes per flushing pair; rounds per warp-step."""
    steps = max(v[0], 1)
    return (
        f"{label:>8} | {int(v[0]):10d} | {v[1] / steps:9.2f} | {v[2] / steps:15.2f} | "
        f"{v[3] / steps:14.2f} | {v[4] / max(v[3], 1):5.1f} | {v[5] / steps:6.2f}"
    )


if __name__ == "__main__":
    main()
