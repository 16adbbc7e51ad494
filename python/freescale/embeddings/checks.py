"""Checks of a training step's inputs that read GPU values without a host sync.

A check on a CUDA tensor (a lookup of ids begin_step did not fetch, begin_step ids that differ
from the prefetched ones) would stall the host until the GPU catches up, every step, and leave
the GPU idle while the host queues the next kernels. Here its flag stays on the device, is
copied to pinned memory at the end of the step and is read at the end of the next step, when
the GPU is long past it (waiting on that old event costs nothing). A failure therefore raises
one step late, naming the step it happened in. On the CPU every check raises at once.
"""

from __future__ import annotations

import torch


class DeferredChecks:
    def __init__(self) -> None:
        self._flags: list[tuple[torch.Tensor, str]] = []  # this step's (failed?, message)
        self._in_flight: tuple[torch.Tensor, torch.cuda.Event, list[str]] | None = None

    def add(self, failed: torch.Tensor, message: str) -> None:
        """failed: a bool scalar tensor; on a CPU it is read now."""
        if failed.device.type != "cuda":
            if bool(failed):
                raise ValueError(message)
            return
        self._flags.append((failed.reshape(()), message))

    def end_step(self, step: int) -> None:
        """Reads the previous step's flags (raising on a failure), then starts copying this
        step's to the host."""
        self.verify()
        if not self._flags:
            return
        flags = torch.stack([f for f, _ in self._flags])
        host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._in_flight = (host, done, [f"step {step}: {m}" for _, m in self._flags])
        self._flags = []

    def verify(self) -> None:
        """Raises on a failed check whose flags were copied (waits for that copy)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        host, done, messages = in_flight
        done.synchronize()
        failed = [m for m, bad in zip(messages, host.tolist(), strict=True) if bad]
        if failed:
            raise ValueError("; ".join(failed) + " (read a step later: GPU checks do not sync)")

    def flush(self, step: int) -> None:
        """Reads every flag now, this step's included (a host sync; end of training)."""
        if self._flags:
            self.end_step(step)
        self.verify()
