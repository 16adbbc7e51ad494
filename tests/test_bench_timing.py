"""The benchmarks' timing (benchmarks/bench_hstu_attention.py's median_ms) on the CPU, with CUDA
events and triton's do_bench stood in for: every median has at least MIN_TIMED_RUNS timed runs,
slow functions included (a 45-50 ms backward was timed once or twice, docs/hstu_sm90/35.md);
and the card's clocks over each timed window, as the rows report them (36.md)."""

from __future__ import annotations

import sys
import types

import pytest
import repo_modules

bench = repo_modules.load("benchmarks/bench_hstu_attention.py")
clocks = repo_modules.load("benchmarks/gpu_clocks.py")  # (the one it imported)


@pytest.mark.parametrize(
    ("estimate_ms", "runs"), [(1e-6, 1000), (0.05, 1000), (1.0, 100), (9.0, 11), (50.0, 10)]
)
def test_timed_runs_take_about_100_ms_and_at_least_the_minimum(estimate_ms, runs):
    assert bench.timed_runs(estimate_ms) == runs


class FakeEvent:
    """A CUDA event whose elapsed time is the stand-in function's time."""

    def __init__(self, ms: float, **_: object) -> None:
        self.ms = ms

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, _: FakeEvent) -> float:
        return self.ms


def _fake_cuda(monkeypatch, ms: float) -> None:
    monkeypatch.setattr(bench.torch.cuda, "Event", lambda **kw: FakeEvent(ms, **kw))
    monkeypatch.setattr(bench.torch.cuda, "synchronize", lambda: None)


@pytest.mark.parametrize("ms", [0.02, 3.0, 50.0, 400.0])
def test_do_bench_is_asked_for_enough_runs(monkeypatch, ms):
    # do_bench times int(rep / estimate) runs after warmup / estimate, where its estimate is
    # the function's time plus an L2 flush: here 5% more.
    timed = {}

    def timed_fn():
        pass

    def do_bench(fn, warmup, rep, return_mode):
        assert fn is timed_fn
        own_estimate = 1.05 * ms
        timed["runs"] = max(1, int(rep / own_estimate))
        timed["warmup"] = max(1, int(warmup / own_estimate))
        assert return_mode == "median"
        return ms

    testing = types.ModuleType("triton.testing")
    testing.do_bench = do_bench
    monkeypatch.setitem(sys.modules, "triton.testing", testing)
    _fake_cuda(monkeypatch, ms)
    assert bench.median_ms(timed_fn) == ms
    assert timed["runs"] >= bench.MIN_TIMED_RUNS
    assert timed["runs"] >= min(1000, int(100 / (1.05 * ms)))  # (~100 ms of runs when fast)
    assert timed["warmup"] >= 1


def test_the_event_loop_times_the_minimum_when_triton_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton.testing", None)  # (import fails)
    _fake_cuda(monkeypatch, 50.0)
    calls = []
    assert bench.median_ms(lambda: calls.append(1)) == 50.0
    # one untimed run, one estimate, one warmup, then the timed runs
    assert len(calls) == 3 + bench.MIN_TIMED_RUNS


def _row_with_clocks(bwd_clocks: dict | None) -> object:
    fwd = {"samples": 4, "sm_mhz_median": 1980.0, "sm_mhz_min": 1965, "power_w_median": 512.4}
    fwd |= {"temp_c_max": 55, "reasons": []}
    return bench.Row(
        "full_n8192", "freescale sm90", 14.1, 622.8, 46.7, 470.6, 1, "", fwd, bwd_clocks
    )


def test_rows_report_the_clocks_they_were_timed_at():
    bwd = {"samples": 9, "sm_mhz_median": 1755.0, "sm_mhz_min": 1620, "power_w_median": 699.6}
    bwd |= {"temp_c_max": 71, "reasons": ["sw_power_cap"]}
    row = _row_with_clocks(bwd)
    assert bench.clocks_note(row) == " [fwd 1980 MHz, bwd 1755 MHz]"
    table = bench.clocks_table([row]).splitlines()
    assert len(table) == 3
    assert table[2] == (
        "| full_n8192 | freescale sm90 | 1980 / 1965 | 512 | none | 1755 / 1620 | 700 | sw_power_cap |"
    )


def test_unsampled_rows_report_no_clocks():
    row = _row_with_clocks({"samples": 0})
    assert bench.clocks_note(row) == " [fwd 1980 MHz]"
    assert bench.clocks_table([row]).splitlines()[2] == (
        "| full_n8192 | freescale sm90 | 1980 / 1965 | 512 | none | - | - | - |"
    )
    unsampled = bench.Row("GEMM", "torch.matmul", 1.0, 1.0, 0.0, 0.0, 0)
    assert bench.clocks_note(unsampled) == ""
    assert bench.clocks_table([unsampled]) == ""


def test_timed_with_clocks_summarizes_the_timed_window(monkeypatch):
    readings = iter([clocks.Sample(1700 + 10 * i, 600.0, 60, 0x4) for i in range(3)])
    sampler = clocks.ClockSampler(lambda: next(readings))

    def timed(fn):
        if bench._CLOCKS is not None:
            for _ in range(3):
                sampler.sample_once()  # as the sampler thread would while fn runs
        return 2.5

    monkeypatch.setattr(bench, "median_ms", timed)
    monkeypatch.setattr(bench, "_CLOCKS", sampler)
    ms, stats = bench.timed_with_clocks(lambda: None)
    assert ms == 2.5
    assert stats["samples"] == 3 and stats["sm_mhz_median"] == 1710
    assert stats["reasons"] == ["sw_power_cap"]
    monkeypatch.setattr(bench, "_CLOCKS", None)
    assert bench.timed_with_clocks(lambda: None) == (2.5, None)
