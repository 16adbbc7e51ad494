"""The GPU's SM clock, power draw and clock-event reasons while a benchmark times something.

Two rows of the HSTU benchmark that ran one backward kernel read up to 12% apart in one run
(docs/hstu_sm90/35.md); whether the card's clocks moved between them was a guess. A sampler
thread reads NVML (through ctypes: libnvidia-ml ships with the driver, so no Python package is
needed) every `interval_s` (100 ms: a median's window is at least ~125 ms, and each sample is a
query to the driver, kept rare beside the timed work), and `ClockSampler.since(t0)` summarizes
the samples taken since `t0`: median and lowest SM clock, median power, hottest
temperature, and every clock-event reason NVML named (a power cap or a thermal slowdown is why a
clock dropped).
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# nvmlClocksEventReasons bits (nvml.h); GpuIdle and the applications-clocks setting say nothing
# about a slowdown under load, so they are left out.
EVENT_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}


@dataclass(frozen=True)
class Sample:
    sm_mhz: int
    power_w: float
    temp_c: int
    reasons: int  # nvmlClocksEventReasons bit mask


@dataclass
class ClockStats:
    """A window's samples, summarized (`samples` = 0: none fell in it; the rest is then 0)."""

    samples: int = 0
    sm_mhz_median: float = 0.0
    sm_mhz_min: int = 0
    power_w_median: float = 0.0
    temp_c_max: int = 0
    reasons: list[str] = field(default_factory=list)


def summarize(samples: list[Sample]) -> ClockStats:
    if not samples:
        return ClockStats()
    mask = 0
    for s in samples:
        mask |= s.reasons
    return ClockStats(
        samples=len(samples),
        sm_mhz_median=statistics.median(s.sm_mhz for s in samples),
        sm_mhz_min=min(s.sm_mhz for s in samples),
        power_w_median=statistics.median(s.power_w for s in samples),
        temp_c_max=max(s.temp_c for s in samples),
        reasons=[name for bit, name in EVENT_REASONS.items() if mask & bit],
    )


class ClockSampler:
    """Samples `read()` every `interval_s` on a thread between start() and stop()."""

    def __init__(
        self,
        read: Callable[[], Sample],
        interval_s: float = 0.1,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self._interval, self._now = read, interval_s, now
        self._samples: list[tuple[float, Sample]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> None:
        sample = self._read()
        with self._lock:
            self._samples.append((self._now(), sample))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample_once()
            except RuntimeError as err:  # (the rows' windows then hold fewer samples, or none)
                print(f"GPU clocks no longer sampled: {err}", flush=True)
                return

    def start(self) -> ClockSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="gpu-clocks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def between(self, t0: float, t1: float) -> ClockStats:
        with self._lock:
            return summarize([s for t, s in self._samples if t0 <= t <= t1])

    def now(self) -> float:
        """The sampler's clock: the start of a window for since()."""
        return self._now()

    def since(self, t0: float) -> ClockStats:
        """The samples taken from `t0` (a now()) until this call, summarized."""
        return self.between(t0, self._now())


class Nvml:
    """The few NVML calls the sampler needs, for the device with PCI bus id `pci_bus_id`."""

    def __init__(self, pci_bus_id: str) -> None:
        self._lib = ctypes.CDLL("libnvidia-ml.so.1")
        self._check(self._lib.nvmlInit_v2(), "nvmlInit_v2")
        self._device = ctypes.c_void_p()
        self._check(
            self._lib.nvmlDeviceGetHandleByPciBusId_v2(
                pci_bus_id.encode(), ctypes.byref(self._device)
            ),
            f"nvmlDeviceGetHandleByPciBusId_v2({pci_bus_id})",
        )
        # Drivers before 535 have only the older name of the event reasons' call.
        reasons = getattr(self._lib, "nvmlDeviceGetCurrentClocksEventReasons", None)
        self._reasons = reasons or self._lib.nvmlDeviceGetCurrentClocksThrottleReasons

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"NVML {what} failed with status {status}")

    def read(self) -> Sample:
        clock, milliwatts, temp = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
        reasons = ctypes.c_ulonglong()
        self._check(self._lib.nvmlDeviceGetClockInfo(self._device, 1, ctypes.byref(clock)), "clock")
        self._check(
            self._lib.nvmlDeviceGetPowerUsage(self._device, ctypes.byref(milliwatts)), "power"
        )
        self._check(self._lib.nvmlDeviceGetTemperature(self._device, 0, ctypes.byref(temp)), "temp")
        self._check(self._reasons(self._device, ctypes.byref(reasons)), "clock-event reasons")
        return Sample(clock.value, milliwatts.value / 1000.0, temp.value, reasons.value)


def cuda_device_sampler(device: int = 0) -> ClockSampler | None:
    """A started sampler of CUDA device `device` (found in NVML by its PCI bus id), or None with a
    printed reason where NVML cannot be read."""
    import torch

    try:
        props = torch.cuda.get_device_properties(device)
        bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        nvml = Nvml(bus_id)
        nvml.read()
    except (OSError, RuntimeError, AttributeError) as err:
        print(f"GPU clocks not sampled: {err}", flush=True)
        return None
    return ClockSampler(nvml.read).start()
