"""Checks of a training step's inputs that read GPU values without a host sync, and raise on
every rank at once.

A check on a CUDA tensor (a lookup of ids begin_step did not fetch, begin_step ids that differ
from the prefetched ones) would stall the host until the GPU catches up, every step, and leave
the GPU idle while the host queues the next kernels. Here each kind of check keeps one flag on
the device; at the end of a step the flags of every rank are gathered (stream-ordered, no host
sync), copied to pinned memory and read at the end of the next step, when the GPU is long past
them (waiting on that old event costs nothing). A failure therefore raises one step late, on
every rank (one rank raising alone would leave the others waiting in the next collective),
naming the step and the ranks. On the CPU the verdict is read in the same step; a single CPU
process raises at the check itself.
"""

from __future__ import annotations

import numpy as np
import torch

# The kinds of check, in the order of the gathered row.
KINDS = {
    "unfetched": "lookup of ids that begin_step did not fetch",
    "prefetch": "begin_step ids differ from the ids prefetch_step fetched",
}


class DeferredChecks:
    def __init__(self, exchange) -> None:
        self.exchange = exchange  # all_gather_rows, rank, world_size
        self._failed: dict[str, torch.Tensor] = {}  # this step's flags per kind (device bool)
        # The last gathered verdict: [world, kinds] on the host, the event it waits for (None:
        # already there) and its step.
        self._in_flight: tuple[torch.Tensor, torch.cuda.Event | None, int] | None = None

    def add(self, kind: str, failed: torch.Tensor) -> None:
        """failed: a bool tensor (any shape: any element set fails) of this rank."""
        failed = failed.reshape(-1).any()
        if failed.device.type != "cuda" and self.exchange.world_size == 1:
            if bool(failed):
                raise ValueError(KINDS[kind])
            return
        previous = self._failed.get(kind)
        self._failed[kind] = failed if previous is None else previous | failed

    def end_step(self, step: int, device: torch.device) -> None:
        """Collective (every rank, every step): raises on every rank if a check failed in the
        previous step (on the CPU: in this one), then gathers this step's flags."""
        self.verify()
        row = torch.zeros(len(KINDS), dtype=torch.int64, device=device)
        for i, kind in enumerate(KINDS):
            if kind in self._failed:
                row[i] = self._failed[kind].to(device)
        self._failed = {}
        verdict = self.exchange.all_gather_rows(row)
        if verdict.device.type != "cuda":
            self._in_flight = (verdict, None, step)
            self.verify()
            return
        host = torch.empty(verdict.shape, dtype=verdict.dtype, pin_memory=True)
        host.copy_(verdict, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._in_flight = (host, done, step)

    def verify(self) -> None:
        """Raises if the last gathered verdict has a failure (waits for its copy)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        verdict, done, step = in_flight
        if done is not None:
            done.synchronize()
        failed = verdict.numpy()
        messages = [
            f"step {step}: {message} (rank(s) {np.flatnonzero(failed[:, i]).tolist()})"
            for i, message in enumerate(KINDS.values())
            if failed[:, i].any()
        ]
        if messages:
            late = " (GPU checks are read a step later, without a host sync)" if done else ""
            raise ValueError("; ".join(messages) + late)

    def flush(self, step: int, device: torch.device) -> None:
        """Collective: reads every flag now, this step's included (a host sync; end of
        training, before evaluation)."""
        self.end_step(step, device)
        self.verify()
