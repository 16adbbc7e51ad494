"""Model of the sm_90a bias backward's time-bucket run flushes (no GPU).

Replays, for the benchmark's times (non-decreasing, consecutive gaps uniform in [0, 1e5)), what
each consumer warp of `hstu_bwd_sm90.cuh` does per step with its key rows' runs: which rows take
the two-bucket path (every lane's row spans at most two buckets) or the per-pair cell path, and
its flush points: the warp instructions at which some lane's run changes bucket and that lane
adds the run to the block's copy of the table with one global reduction (add_to_run). The cell
path tests for a flush at each of a row's 16 pairs, and ptxas lays a branch around each
reduction; the two-bucket path tests twice per row. Taking the reductions out ran the bias
backward 1.09x faster at n = 2048 and 1.18x at n = 1024 (docs/hstu_sm90/25.md call 1).

`--span K` adds the rows whose every lane spans at most K buckets: the rows a path with K
buckets per row would take (K = 2: the two-bucket path's). `--lanes L` gives each bucket L
floats per copy of the table (lane l adds to float l % L; main has 8 since 93dfb73, 1 before;
the default models the old layout), and the depth column the largest number of a flush point's
reductions that meet on one address. 8 floats (depth 2.4 at n = 2048) ran faster than 32 (depth
1), so the depth is not the flushes' whole cost (docs/hstu_sm90/27.md).
Per step distance from the diagonal (row tiles past the key block's first), averaged over
warp-steps:

    python3 scripts/model_bwd_ts_flushes.py [--n 1024] [--seqs 2] [--span 3] [--lanes 8]
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict

import numpy as np

NUM_BUCKETS = 128
# Per distance: warp-steps, rows on the cell path, rows on the two-bucket path, flush points,
# lanes flushing, rows within --span buckets, and the flush points' same-address depths summed.
STEPS, CELL_ROWS, TWO_BUCKET_ROWS, FLUSH_POINTS, FLUSH_LANES, SPAN_ROWS, FLUSH_DEPTH = range(7)
NUM_COUNTS = FLUSH_DEPTH + 1  # (the unpacking fails if range's count and the names differ)


def bucket(gap: int) -> int:
    """The float64 bucket of DESIGN §4, clamped."""
    b = int(math.floor(math.log(max(gap, 1)) / 0.301))
    return min(max(b, 0), NUM_BUCKETS)


def model(n: int, seqs: int, span: int = 2, lanes: int = 1) -> dict[int, np.ndarray]:
    """Per distance (9 = 9 or more), the counts named by STEPS .. FLUSH_DEPTH."""
    rng = np.random.default_rng(0)
    stats: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(NUM_COUNTS))
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
                        st[STEPS] += 1
                        for r in range(2):
                            rows = [col0 + key_base + warp * 16 + g + 8 * r for g in range(8)]
                            _row_step(st, run, rows, row0, r, n, gap, span, lanes)
    return stats


def _flush(st, run, lanes_buckets, r, lanes) -> None:
    """One flush point: each (g, t) lane (lane 4 g + t) moves its run to `bucket`, flushing the
    open one into float (4 g + t) % `lanes` of the open bucket."""
    addresses = Counter()
    for (g, t), b in lanes_buckets.items():
        prev = run.get((g, t, r), -1)
        if b != prev:
            if prev >= 0:
                addresses[(prev, (4 * g + t) % lanes)] += 1
            run[(g, t, r)] = b
    if addresses:
        st[FLUSH_POINTS] += 1
        st[FLUSH_LANES] += addresses.total()
        st[FLUSH_DEPTH] += max(addresses.values())


def _row_step(st, run, rows, row0, r, n, gap, span, lanes) -> None:
    bounds = {}
    for g, j in enumerate(rows):
        for t in range(4):
            lo = bucket(max(gap(row0 + 2 * t, j), 0))
            up = bucket(max(gap(min(row0 + 57 + 2 * t, n - 1), j), 0))
            bounds[(g, t)] = (lo, up)

    def within(buckets: int) -> bool:  # every lane's row spans at most `buckets`
        return all(up >= lo and up - lo < buckets for lo, up in bounds.values())

    if within(span):
        st[SPAN_ROWS] += 1
    if within(2):
        st[TWO_BUCKET_ROWS] += 1
        _flush(st, run, {k: lo for k, (lo, _) in bounds.items()}, r, lanes)
        _flush(st, run, {k: up for k, (lo, up) in bounds.items() if up != lo}, r, lanes)
        return
    st[CELL_ROWS] += 1
    for c in range(8):
        for b in range(2):
            visible = {}
            for g, j in enumerate(rows):
                for t in range(4):
                    i = row0 + 8 * c + 2 * t + b
                    if i < n and j <= i:
                        visible[(g, t)] = bucket(gap(i, j))
            _flush(st, run, visible, r, lanes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--seqs", type=int, default=2)
    parser.add_argument(
        "--span", type=int, default=2, help="the last column: rows within this many buckets"
    )
    parser.add_argument(
        "--lanes", type=int, default=1, help="floats per bucket and copy (lane l adds to l %% L)"
    )
    args = parser.parse_args()
    stats = model(args.n, args.seqs, args.span, args.lanes)
    print(
        "distance | warp-steps | cell rows | two-bucket rows | flush points | lanes | depth | "
        f"rows within {args.span}"
    )
    total = np.zeros(NUM_COUNTS)
    for d in sorted(stats):
        v = stats[d]
        total += v
        label = f"{d}+" if d == 9 else str(d)
        print(_row(label, v))
    print(_row("all", total))


def _row(label: str, v: np.ndarray) -> str:
    """Rows and flush points per warp-step; lanes and same-address depth per flush point."""
    steps = max(v[STEPS], 1)
    points = max(v[FLUSH_POINTS], 1)
    return (
        f"{label:>8} | {int(v[STEPS]):10d} | {v[CELL_ROWS] / steps:9.2f} | "
        f"{v[TWO_BUCKET_ROWS] / steps:15.2f} | {v[FLUSH_POINTS] / steps:12.2f} | "
        f"{v[FLUSH_LANES] / points:5.1f} | {v[FLUSH_DEPTH] / points:5.1f} | "
        f"{v[SPAN_ROWS] / steps:9.2f}"
    )


if __name__ == "__main__":
    main()
