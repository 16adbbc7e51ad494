"""Per-step compute and gradient-reduce times of one rank, without host syncs per step.

On a GPU, three CUDA events per step (before forward, after backward, after the gradient
all-reduce) are read only when the trainer next syncs anyway (at a log interval), when they
have long completed. On a CPU the host clock is the compute clock.

compute = start -> end of backward: what the rank itself needs for its samples.
reduce  = end of backward -> end of the all-reduce: straggler wait plus the transfer itself.
The straggler wait of a rank is max(compute over ranks) - its compute (freescale.balance.report).
"""

from __future__ import annotations

import time

import numpy as np
import torch


class StepTimer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[tuple] = []
        self._current: list = []

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._current = [self._mark()]

    def compute_done(self) -> None:
        self._current.append(self._mark())

    def reduce_done(self) -> None:
        self._current.append(self._mark())
        if len(self._current) != 3:
            raise RuntimeError("StepTimer: start, compute_done, reduce_done out of order")
        self._pending.append(tuple(self._current))
        self._current = []

    def __len__(self) -> int:
        return len(self._pending)

    def collect(self) -> tuple[np.ndarray, np.ndarray]:
        """(compute seconds, reduce seconds) of the steps since the last collect. On a GPU this
        waits for the last step's events (the caller has usually synced already)."""
        compute, reduce = [], []
        for start, done, reduced in self._pending:
            if self.cuda:
                reduced.synchronize()
                compute.append(start.elapsed_time(done) / 1e3)
                reduce.append(done.elapsed_time(reduced) / 1e3)
            else:
                compute.append(done - start)
                reduce.append(reduced - done)
        self._pending = []
        return np.array(compute), np.array(reduce)
