"""Time spent in each stage of the embedding exchange, as the training step sees it.

Each stage (fetch, prefetch, grads, update) runs inside an NVTX range `embeddings/<stage>` and
between two marks on the compute stream: CUDA events on a GPU (read only when `take()` is
called, at a log interval, so no host sync per step), the host clock on a CPU. What a stage
costs the step is its exposed communication: the prefetch's asynchronous row transfer is not
inside any stage, only its planning and launch are.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

from freescale.profiling import nvtx_range

STAGES = ("fetch", "prefetch", "grads", "update")


class StageTimer:
    def __init__(self) -> None:
        self._marks: list[tuple[str, object, object]] = []

    @contextlib.contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        cuda = device.type == "cuda"
        with nvtx_range(f"embeddings/{name}"):
            start = self._mark(cuda)
            try:
                yield
            finally:
                self._marks.append((name, start, self._mark(cuda)))

    @staticmethod
    def _mark(cuda: bool):
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def take(self) -> dict[str, float]:
        """Milliseconds per stage since the last take() (waits for the last CUDA mark)."""
        totals: dict[str, float] = defaultdict(float)
        if self._marks and isinstance(self._marks[-1][2], torch.cuda.Event):
            self._marks[-1][2].synchronize()
        for name, start, end in self._marks:
            if isinstance(end, torch.cuda.Event):
                totals[name] += start.elapsed_time(end)
            else:
                totals[name] += (end - start) * 1e3
        self._marks.clear()
        return {name: totals.get(name, 0.0) for name in STAGES}
