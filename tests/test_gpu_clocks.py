"""benchmarks/gpu_clocks.py on the CPU, with NVML stood in for: a window's summary holds exactly
the samples taken inside it, and the clock-event bits it names are the ones the samples set."""

from __future__ import annotations

import threading

import pytest
import repo_modules

clocks = repo_modules.load("benchmarks/gpu_clocks.py")


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_since_summarizes_only_the_samples_inside_its_window():
    now = FakeTime()
    readings = iter(
        [
            clocks.Sample(1980, 300.0, 40, 0x1),  # before the block (idle)
            clocks.Sample(1755, 690.0, 61, 0x4),  # inside: power cap
            clocks.Sample(1830, 650.0, 63, 0x0),
            clocks.Sample(1600, 700.0, 70, 0x20 | 0x4),  # inside: thermal and power
            clocks.Sample(1000, 100.0, 90, 0x8),  # after the block
        ]
    )
    sampler = clocks.ClockSampler(lambda: next(readings), now=now)
    sampler.sample_once()
    now.t = 1.0
    started = sampler.now()
    for t in (1.5, 2.0, 2.5):
        now.t = t
        sampler.sample_once()
    now.t = 3.0
    stats = sampler.since(started)
    now.t = 4.0
    sampler.sample_once()
    assert sampler.since(started).samples == 4  # (a later window holds the later sample)
    assert stats.samples == 3
    assert stats.sm_mhz_median == 1755
    assert stats.sm_mhz_min == 1600
    assert stats.power_w_median == 690.0
    assert stats.temp_c_max == 70
    assert stats.reasons == ["sw_power_cap", "sw_thermal"]


def test_a_window_without_samples_says_so():
    sampler = clocks.ClockSampler(lambda: clocks.Sample(1980, 1.0, 30, 0))
    assert sampler.between(0.0, 1.0) == clocks.ClockStats()


def test_idle_and_application_clock_bits_are_not_named():
    stats = clocks.summarize([clocks.Sample(1980, 80.0, 35, 0x1 | 0x2 | 0x100)])
    assert stats.reasons == []


def test_the_thread_samples_until_stopped():
    taken = threading.Semaphore(0)

    def read():
        taken.release()
        return clocks.Sample(1980, 500.0, 50, 0)

    sampler = clocks.ClockSampler(read, interval_s=0.001).start()
    for _ in range(3):
        assert taken.acquire(timeout=5.0)
    sampler.stop()
    count = sampler.between(float("-inf"), float("inf")).samples
    assert count >= 3
    assert sampler.between(float("-inf"), float("inf")).samples == count  # no sampling after stop


def test_nvml_errors_name_the_call():
    with pytest.raises(RuntimeError, match=r"NVML clock failed with status 999"):
        clocks.Nvml._check(999, "clock")


def test_a_failing_read_ends_the_sampling_with_a_message(capsys):
    calls = []

    def read():
        calls.append(1)
        raise RuntimeError("NVML clock failed with status 15")

    sampler = clocks.ClockSampler(read, interval_s=0.001).start()
    sampler._thread.join(timeout=5.0)
    assert not sampler._thread.is_alive() and len(calls) == 1
    sampler.stop()
    assert (
        "GPU clocks no longer sampled: NVML clock failed with status 15" in capsys.readouterr().out
    )


class FakeNvmlLibrary:
    """libnvidia-ml.so.1's calls that Nvml makes, writing through their ctypes out-arguments as
    the library does (`byref(x)._obj` is x); `statuses` sets a call's return status."""

    def __init__(self, new_reasons_name: bool = True, statuses: dict | None = None) -> None:
        self.statuses = statuses or {}
        self.bus_ids: list[bytes] = []
        reasons = self._out("reasons", 0x4 | 0x20)
        if new_reasons_name:
            self.nvmlDeviceGetCurrentClocksEventReasons = reasons
        else:
            self.nvmlDeviceGetCurrentClocksThrottleReasons = reasons
        self.nvmlDeviceGetClockInfo = self._out("clock", 1755, arg=2, expect=(1,))
        self.nvmlDeviceGetPowerUsage = self._out("power", 612_345)
        self.nvmlDeviceGetTemperature = self._out("temp", 66, arg=2, expect=(0,))

    def _status(self, name: str) -> int:
        return self.statuses.get(name, 0)

    def nvmlInit_v2(self) -> int:
        return self._status("init")

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus_id: bytes, handle) -> int:
        self.bus_ids.append(bus_id)
        handle._obj.value = 1234
        return self._status("handle")

    def _out(self, name: str, value: int, arg: int = 1, expect: tuple = ()):
        def call(device, *args):
            assert device.value == 1234  # the handle the library gave
            assert args[: arg - 1] == expect  # (NVML_CLOCK_SM = 1, NVML_TEMPERATURE_GPU = 0)
            args[arg - 1]._obj.value = value
            return self._status(name)

        return call


@pytest.mark.parametrize("new_reasons_name", [True, False])
def test_nvml_reads_through_the_library(monkeypatch, new_reasons_name):
    library = FakeNvmlLibrary(new_reasons_name)
    monkeypatch.setattr(clocks.ctypes, "CDLL", lambda name: library)
    sample = clocks.Nvml("00000000:1A:00.0").read()
    assert library.bus_ids == [b"00000000:1A:00.0"]
    assert sample == clocks.Sample(sm_mhz=1755, power_w=612.345, temp_c=66, reasons=0x24)
    assert clocks.summarize([sample]).reasons == ["sw_power_cap", "sw_thermal"]


@pytest.mark.parametrize(
    "failing, message",
    [
        ("init", "nvmlInit_v2"),
        ("handle", r"nvmlDeviceGetHandleByPciBusId_v2\(0000"),
        ("power", "power"),
    ],
)
def test_nvml_failures_raise_with_the_call_named(monkeypatch, failing, message):
    library = FakeNvmlLibrary(statuses={failing: 3})
    monkeypatch.setattr(clocks.ctypes, "CDLL", lambda name: library)
    with pytest.raises(RuntimeError, match=f"NVML {message}.* failed with status 3"):
        clocks.Nvml("00000000:1A:00.0").read()
