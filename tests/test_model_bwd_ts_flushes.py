"""scripts/model_bwd_ts_flushes.py, the model of the bias backward's time-bucket run flushes: its
accounting holds together on a short sequence, and it gives the figures docs/hstu_sm90/25.md
quotes for a three-bucket path."""

from __future__ import annotations

import repo_modules

flush_model = repo_modules.load("scripts/model_bwd_ts_flushes.py")


def test_buckets_are_the_float64_ones():
    assert [flush_model.bucket(g) for g in (0, 1, 2, 3, 10**4)] == [0, 0, 2, 3, 30]
    assert flush_model.bucket(2**62) == flush_model.NUM_BUCKETS


def test_accounting_holds_and_spans_nest():
    # (every gap of the 256 times lies within 129 buckets: a span of 130 takes every row)
    by_span = {k: flush_model.model(256, 1, k) for k in (1, 2, 3, 130)}
    assert sorted(by_span[2]) == list(range(4))  # 4 row tiles
    for d, v in by_span[2].items():
        assert (
            v[flush_model.CELL_ROWS] + v[flush_model.TWO_BUCKET_ROWS] == 2 * v[flush_model.STEPS]
        )  # one path per key row
        assert (
            v[flush_model.FLUSH_POINTS]
            <= v[flush_model.FLUSH_LANES]
            <= 32 * v[flush_model.FLUSH_POINTS]
        )
        # more buckets take more rows, at most every row; one bucket takes only rows that step
        # nowhere, which the two-bucket path takes too (span 2 is that path's test itself)
        assert by_span[130][d][flush_model.SPAN_ROWS] == 2 * v[flush_model.STEPS]
        assert by_span[1][d][flush_model.SPAN_ROWS] <= v[flush_model.TWO_BUCKET_ROWS]
        assert (
            by_span[1][d][flush_model.SPAN_ROWS]
            <= v[flush_model.SPAN_ROWS]
            <= by_span[3][d][flush_model.SPAN_ROWS]
        )
        assert (
            by_span[3][d][: flush_model.SPAN_ROWS] == v[: flush_model.SPAN_ROWS]
        ).all()  # --span only adds
    assert (
        by_span[2][1][flush_model.CELL_ROWS] > 0 and by_span[2][3][flush_model.TWO_BUCKET_ROWS] > 0
    )


def test_same_address_depth_falls_with_the_floats_per_bucket():
    """--lanes L: a flush point's deepest address holds at least one reduction and at most its
    lanes; with a float per lane (32) exactly one; fewer floats, no shallower; the paths and
    flush points themselves do not change."""
    by_lanes = {k: flush_model.model(256, 1, 2, k) for k in (1, 8, 32)}
    depth, points, lanes = (
        flush_model.FLUSH_DEPTH,
        flush_model.FLUSH_POINTS,
        flush_model.FLUSH_LANES,
    )
    for d, v in by_lanes[1].items():
        assert v[points] <= v[depth] <= v[lanes]
        assert by_lanes[32][d][depth] == v[points]
        assert by_lanes[32][d][depth] <= by_lanes[8][d][depth] <= v[depth]
        for k in (8, 32):
            assert (by_lanes[k][d][:depth] == v[:depth]).all()
    # the lanes that flush together mostly share a bucket (the lane copies' reason): with one
    # float per bucket the deepest address holds most of a flush point's reductions
    total = {k: sum(v.values()) for k, v in by_lanes.items()}
    assert total[1][depth] > 0.5 * total[1][lanes] and total[1][depth] > 3 * total[8][depth]


def test_the_figures_25_md_quotes():
    """At n = 2048 (`--n 2048 --span 3`): 5.9 rows per warp and key block on the cell path, 3.9
    left with a path for rows within three buckets (one step per distance)."""
    stats = flush_model.model(2048, 2, 3)
    per_step = {d: v / v[flush_model.STEPS] for d, v in stats.items()}
    cell = sum(v[flush_model.CELL_ROWS] for v in per_step.values())
    beyond_three = sum(2 - v[flush_model.SPAN_ROWS] for v in per_step.values())
    assert round(cell, 1) == 5.9
    assert round(beyond_three, 1) == 3.9
