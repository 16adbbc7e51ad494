"""scripts/model_bwd_ts_flushes.py, the model of the bias backward's time-bucket run flushes, on a
short sequence: its accounting holds together and the slot copies per (g, t parity) never take
more compare-and-swap rounds than the copies per g."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "model_bwd_ts_flushes.py"
_spec = importlib.util.spec_from_file_location("model_bwd_ts_flushes", SCRIPT)
flush_model = importlib.util.module_from_spec(_spec)
sys.modules["model_bwd_ts_flushes"] = flush_model
_spec.loader.exec_module(flush_model)


def test_buckets_are_the_float64_ones():
    assert [flush_model.bucket(g) for g in (0, 1, 2, 3, 10**4)] == [0, 0, 2, 3, 30]
    assert flush_model.bucket(2**62) == flush_model.NUM_BUCKETS


def test_rounds_at_least_one_per_flush_and_fewer_with_more_copies():
    per_g = flush_model.model(256, 1, "g")
    per_g_t = flush_model.model(256, 1, "g+t%2")
    assert sorted(per_g) == sorted(per_g_t) == list(range(4))  # 4 row tiles
    for d, v in per_g.items():
        steps, cell_rows, two_rows, flushes, lanes, rounds = v
        assert cell_rows + two_rows == 2 * steps  # each warp-step's two key rows take one path
        assert flushes <= lanes <= 32 * flushes and flushes <= rounds <= lanes
        assert (per_g_t[d][:5] == v[:5]).all()  # the same flushes, on other addresses
        assert flushes <= per_g_t[d][5] <= rounds
    assert per_g[1][1] > 0 and per_g[3][2] > 0  # both paths ran
    assert sum(v[5] for v in per_g_t.values()) < sum(v[5] for v in per_g.values())


def _rounds_per_warp_step(stats, distance=None) -> float:
    rows = [stats[distance]] if distance is not None else list(stats.values())
    return sum(v[5] for v in rows) / sum(v[0] for v in rows)


def test_the_figures_the_kernel_comment_quotes():
    """hstu_bwd_sm90.cuh's BwdTiles::kTsCopies comment: at n = 1024 (the script's defaults), 10
    rounds per warp-step with copies per (g, t parity) instead of 16 with copies per g, and 31
    instead of 46 next to the diagonal (distance 1)."""
    per_g = flush_model.model(1024, 2, "g")
    per_g_t = flush_model.model(1024, 2, "g+t%2")
    assert round(_rounds_per_warp_step(per_g)) == 16
    assert round(_rounds_per_warp_step(per_g_t)) == 10
    assert round(_rounds_per_warp_step(per_g, 1)) == 46
    assert round(_rounds_per_warp_step(per_g_t, 1)) == 31
