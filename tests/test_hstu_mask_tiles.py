"""The mask and tile-skip ranges compiled into the CUDA kernels (csrc/attention/hstu_mask.h),
checked on the CPU against the reference mask for every small configuration: a tile the
kernels skip must hold no valid pair, for the row-tile (forward, dQ) and column-tile (dK, dV)
loops alike: column_range bounds the columns of a row tile, row_range the rows of a column
tile (the sm_90a backward walks the rows of each key tile)."""

import itertools

import numpy as np
import pytest
import torch

from freescale_ext import _C
from freescale_ext.reference import hstu_valid_mask

LENGTHS = [1, 2, 5, 16, 17, 31, 33, 47, 64, 65]
CONTEXTUAL = [0, 1, 3, 40]
WINDOWS = [0, 1, 7, 20]


def configs():
    for n, c, w in itertools.product(LENGTHS, CONTEXTUAL, WINDOWS):
        for targets in sorted({-1, 0, 1, n // 3, n}):
            yield n, c, targets, w


@pytest.mark.parametrize("tile", [16, 32])
def test_kernel_mask_and_tile_ranges_match_the_reference(tile):
    checked = fast_tiles = 0
    for n, c, targets, window in configs():
        got = _C.hstu_mask_tiles(n, c, targets, window, tile)
        ref = hstu_valid_mask(
            n, contextual_len=c, num_targets=None if targets < 0 else targets, max_attn_len=window
        ).numpy()
        valid = np.array(got["valid"], dtype=bool)
        assert np.array_equal(valid, ref), (n, c, targets, window)
        for t, (lo, hi) in enumerate(got["column_ranges"]):
            rows = ref[t * tile : (t + 1) * tile]
            outside = np.ones(n, dtype=bool)
            outside[lo:hi] = False
            assert not rows[:, outside].any(), (n, c, targets, window, t, lo, hi)
            # the kernels start at the tile holding `lo`; the range must not be empty
            assert 0 <= lo < hi <= n
        for t, (lo, hi) in enumerate(got["row_ranges"]):
            columns = ref[:, t * tile : (t + 1) * tile]
            outside = np.ones(n, dtype=bool)
            outside[lo:hi] = False
            assert not columns[outside].any(), (n, c, targets, window, t, lo, hi)
            assert 0 <= lo < hi <= n
            # tight where it cuts: its first row (after row 0) and, below a window's cut, its
            # last row see the tile
            assert lo == 0 or columns[lo].any(), (n, c, targets, window, t, lo, hi)
            assert hi == n or columns[hi - 1].any(), (n, c, targets, window, t, lo, hi)
        for t, (prefix_end, lo, hi) in enumerate(got["split_row_ranges"]):
            columns = ref[:, t * tile : (t + 1) * tile]
            outside = np.ones(n, dtype=bool)
            outside[:prefix_end] = False
            outside[lo:hi] = False
            assert not columns[outside].any(), (n, c, targets, window, t, prefix_end, lo, hi)
            assert 0 <= prefix_end <= min(c, n) and t * tile == lo < hi <= n
        for ti, row in enumerate(got["fully_visible"]):
            for tj, full in enumerate(row):
                if full:  # the kernels skip the mask there: every pair must be valid
                    block = ref[ti * tile : (ti + 1) * tile, tj * tile : (tj + 1) * tile]
                    assert block.shape == (tile, tile) and block.all(), (n, c, targets, window)
                    fast_tiles += 1
        checked += 1
    assert checked == len(list(configs())) > 500
    assert fast_tiles > 0  # the fast path is taken somewhere (plain causal, with targets)


def test_every_row_sees_at_least_its_diagonal():
    for n, c, targets, window in configs():
        valid = torch.tensor(_C.hstu_mask_tiles(n, c, targets, window, 16)["valid"])
        assert valid.diagonal().all()


def test_threshold_buckets_equal_the_float64_buckets():
    """The sm_90a kernels bucket time gaps by comparing with a threshold table: the same bucket
    as the float64 logarithm for every gap, at every boundary (both sides, both signs), for
    random gaps over the whole int64 range and under every clamp."""
    import hstu_cases as cases

    gen = torch.Generator().manual_seed(0)
    gaps = list(cases.bucket_test_gaps())
    for bits in range(1, 63):
        gaps += torch.randint(0, 2**bits, (40,), generator=gen).tolist()
    gaps += [-g for g in gaps[::3]] + [0, 1, -1, 2**63 - 1, -(2**63 - 1)]
    for num_buckets in (128, 10, 0, 200):
        got = _C.hstu_ts_buckets(gaps, num_buckets)
        mismatches = [
            (g, d, t)
            for g, d, t in zip(gaps, got["direct"], got["thresholds"], strict=True)
            if d != t
        ]
        assert not mismatches, mismatches[:10]
    table = _C.hstu_ts_buckets([], 128)["table"]
    assert table[0] == 0 and table == sorted(table) and table[-1] == 2**63 - 1


def test_cell_buckets_equal_the_float64_buckets():
    """For gaps below 2^31 the sm_90a kernels bucket with one table cell per quarter of a power
    of two and a compare: the float64 bucket for every gap on both sides of every bucket boundary
    and of every cell edge, for random gaps of every magnitude, and under every clamp (including
    clamps that fall inside a cell)."""
    import hstu_cases as cases

    gen = torch.Generator().manual_seed(1)
    gaps = [g for g in cases.bucket_test_gaps() if abs(g) < 2**31]
    for e in range(32):
        for m in range(4):
            edge = -(-(2**e * (4 + m)) // 4)  # ceil(2^e (4 + m) / 4)
            gaps += [edge - 1, edge, edge + 1]
    for bits in range(1, 32):
        gaps += torch.randint(0, 2**bits, (200,), generator=gen).tolist()
    gaps = [g for g in gaps if g < 2**31]
    gaps += [-g for g in gaps[::2]] + [0, 1, -1, 2**31 - 1, -(2**31 - 1)]
    for num_buckets in (128, 71, 70, 40, 10, 3, 1, 0, 1023):
        got = _C.hstu_ts_buckets(gaps, num_buckets)
        assert None not in got["cells"]
        mismatches = [
            (g, d, o) for g, d, o in zip(gaps, got["direct"], got["cells"], strict=True) if d != o
        ]
        assert not mismatches, (num_buckets, mismatches[:10])
    assert _C.hstu_ts_buckets([2**31, -(2**31), 2**40], 128)["cells"] == [None] * 3


def test_cell_weights_give_the_float64_bucket_and_its_weight():
    """The sm_90a forward reads a pair's time weight from the cell table with each cell's two
    bucket weights beside it (one 16-byte read and a compare): the float64 bucket and exactly
    that bucket's weight, for gaps on both sides of every bucket boundary and cell edge and of
    every magnitude, under every clamp (including those with every gap in the last bucket)."""
    import hstu_cases as cases

    gen = torch.Generator().manual_seed(2)
    gaps = [g for g in cases.bucket_test_gaps() if abs(g) < 2**31]
    for e in range(32):
        for m in range(4):
            edge = -(-(2**e * (4 + m)) // 4)
            gaps += [edge - 1, edge, edge + 1]
    for bits in range(1, 32):
        gaps += torch.randint(0, 2**bits, (50,), generator=gen).tolist()
    gaps = [g for g in gaps if g < 2**31]
    gaps += [-g for g in gaps[::2]] + [0, 1, -1, 2**31 - 1, -(2**31 - 1)]
    for num_buckets in (128, 71, 10, 1, 0, 1023):
        # distinct weights (the bucket's index plus a quarter), so a neighbour's would show
        weights = [float(b) + 0.25 for b in range(num_buckets + 1)]
        got = _C.hstu_ts_buckets(gaps, num_buckets, weights)
        expected = [(d, weights[d]) for d in got["direct"]]
        mismatches = [
            (g, e, w) for g, e, w in zip(gaps, expected, got["cell_weights"], strict=True) if e != w
        ]
        assert not mismatches, (num_buckets, mismatches[:10])
    assert _C.hstu_ts_buckets([2**31, 5], 3, [0.0] * 4)["cell_weights"][0] is None
    with pytest.raises(ValueError, match="num_buckets \\+ 1"):
        _C.hstu_ts_buckets([5], 3, [0.0] * 3)


def test_two_bucket_rows_equal_the_float64_buckets():
    """Where a kernel row's gaps lie between two ends whose buckets differ by at most one, the
    sm_90a kernels bucket each gap with one compare (ts_two_buckets; the forward compares the
    column's time offset with ts_last_upper_offset instead): the float64 bucket of every gap in
    between (negative ones clamped at 0, as the masked pairs are), for stretches at every scale,
    across boundaries and under clamps; stretches spanning more buckets say so."""
    gen = torch.Generator().manual_seed(2)
    thresholds = [t for t in _C.hstu_ts_buckets([], 0)["table"] if t < 2**31]
    offset_bound = 2**30  # small_ts_offset's
    spans = clamped = 0
    for num_buckets in (128, 40, 10, 0):
        for _ in range(400):
            largest = int(torch.randint(0, 2**31, (1,), generator=gen)) >> int(
                torch.randint(0, 31, (1,), generator=gen)
            )
            smallest = largest - int(torch.randint(0, largest // 2 + 2, (1,), generator=gen))
            if int(torch.randint(0, 8, (1,), generator=gen)) == 0:
                smallest = -int(torch.randint(1, 1000, (1,), generator=gen))  # a masked pair
            inside = torch.randint(smallest, largest + 1, (64,), generator=gen).tolist()
            inside += [smallest, largest]
            inside += [  # both sides of every boundary in the stretch
                g for t in thresholds for g in (t - 1, t) if smallest <= g <= largest
            ]
            # The forward compares column time offsets o_j = row - gap (within +-2^30, as
            # small_ts_offset keeps them) instead of gaps: with the highest and the lowest row
            # offset the stretch allows (a negative one takes the clamp of a one-bucket row).
            highest = min(offset_bound, smallest + offset_bound) - 1
            lowest = max(-offset_bound, largest - offset_bound) + 1
            rows = [highest, lowest] if lowest <= highest else []
            got = _C.hstu_ts_two_buckets(smallest, largest, inside, num_buckets)
            direct = _C.hstu_ts_buckets([max(g, 0) for g in inside], num_buckets)["direct"]
            ends = _C.hstu_ts_buckets([max(smallest, 0), max(largest, 0)], num_buckets)["direct"]
            assert (got["lower"], got["upper"]) == tuple(ends)
            assert got["two"] == (ends[1] - ends[0] <= 1)
            if got["two"]:
                assert got["buckets"] == direct, (smallest, largest, num_buckets)
                spans += got["lower"] != got["upper"]
                for row in rows:
                    by_offset = _C.hstu_ts_two_buckets(
                        smallest, largest, inside, num_buckets, row_offset=row
                    )["buckets_by_offset"]
                    assert by_offset == direct, (smallest, largest, num_buckets, row)
                    clamped += got["lower"] == got["upper"] and row - (2**31 - 1) < -(2**31)
    assert spans > 100  # many stretches cross a boundary (the compare decides)
    assert clamped > 100
    with pytest.raises(ValueError, match="2\\^30"):
        _C.hstu_ts_two_buckets(0, 10, [5], 128, row_offset=-(2**30) + 2)
