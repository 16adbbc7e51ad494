"""The all-to-all-v the embedding exchange runs on: NCCL/gloo through torch.distributed today;
the SM-free copy-engine runtime (DESIGN §6) plugs in behind the same two calls."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from freescale_ext.comm import CommRuntime, largest_receive

Matrix = np.ndarray | None  # a whole split matrix, [world, world], row s: what rank s sends


class Exchange(Protocol):
    rank: int
    world_size: int

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """[world, k]: every rank's 1-D `row` (int64, k the same on every rank), collective. On
        GPUs it stays stream-ordered (no host sync): a lookup's plan gathers its split counts and
        checks here and reads them with one copy to the host; a prefetch never reads them until
        the next step. The split matrix it yields is what all_to_all's `matrix` takes (every
        rank's send counts: row s is what rank s sends), sparing the exchange a gather."""

    def all_to_all(
        self, x: torch.Tensor, send: list[int], recv: list[int], matrix: Matrix = None
    ) -> torch.Tensor:
        """Rows x[sum(send[:p]) : sum(send[:p+1])] go to peer p; returns [sum(recv), ...] with
        peer p's rows at sum(recv[:p])."""

    def all_to_all_async(
        self,
        x: torch.Tensor,
        send: list[int],
        recv: list[int],
        matrix: Matrix = None,
        *,
        urgent: bool = False,
    ):
        """The same, started: (output buffer, handle with wait() or None); the buffer is valid
        after wait(). `urgent`: the step waits for it (its gradients), so where the exchange
        has priority classes (the copy-engine runtime) it goes ahead of bulk transfers (the next
        step's prefetch, the dense gradients issued after it); NCCL and gloo run a group's
        calls in issue order."""


class LocalExchange:
    """One rank: everything stays (the unsharded table)."""

    rank, world_size = 0, 1

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        return row[None]

    def all_to_all(
        self, x: torch.Tensor, send: list[int], recv: list[int], matrix: Matrix = None
    ) -> torch.Tensor:
        return x

    def all_to_all_async(
        self,
        x: torch.Tensor,
        send: list[int],
        recv: list[int],
        matrix: Matrix = None,
        *,
        urgent: bool = False,
    ):
        return x, None


class ProcessGroupExchange:
    """torch.distributed all_to_all_single on a process group (NCCL on GPUs, gloo on CPUs);
    bulk asynchronous calls (not urgent) on `bulk_group` where one is given."""

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        *,
        bulk_group: dist.ProcessGroup | None = None,
    ) -> None:
        self.group = group
        self.bulk_group = bulk_group if bulk_group is not None else group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if dist.get_world_size(self.bulk_group) != self.world_size:
            raise ValueError("bulk_group must have the group's ranks")

    @classmethod
    def over_own_groups(cls, timeout: timedelta | None = None) -> ProcessGroupExchange:
        """Collective (every rank, in the same order): the exchange on two new groups of the
        default group's ranks, one for blocking and urgent calls (on high-priority streams with
        NCCL) and one for bulk ones (a prefetch, a step's cold gradients). NCCL runs a group's
        calls in issue order: on groups of their own an urgent call waits neither behind a bulk
        one nor behind the dense gradients' all-reduce on the default group."""
        backend = dist.get_backend()
        options = None
        if backend == "nccl":  # (a mixed "cpu:gloo,cuda:nccl" backend keeps default streams)
            options = dist.ProcessGroupNCCL.Options()
            options.is_high_priority_stream = True
            if timeout is not None:
                options._timeout = timeout  # (torch warns when it differs from `timeout`)
        urgent = dist.new_group(timeout=timeout, backend=backend, pg_options=options)
        return cls(urgent, bulk_group=dist.new_group(timeout=timeout, backend=backend))

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        return _all_gather_rows(row, self.group, self.world_size)

    def all_to_all(
        self, x: torch.Tensor, send: list[int], recv: list[int], matrix: Matrix = None
    ) -> torch.Tensor:
        out, work = self.all_to_all_async(x, send, recv, urgent=True)  # the caller waits for it
        work.wait()
        return out

    def all_to_all_async(
        self,
        x: torch.Tensor,
        send: list[int],
        recv: list[int],
        matrix: Matrix = None,
        *,
        urgent: bool = False,  # bulk ones go to the bulk group; each group keeps issue order
    ):
        out = x.new_empty((sum(recv), *x.shape[1:]))
        work = dist.all_to_all_single(
            out,
            x.contiguous(),
            output_split_sizes=recv,
            input_split_sizes=send,
            group=self.group if urgent else self.bulk_group,
            async_op=True,
        )
        return out, work


class CopyEngineExchange:
    """The exchange over freescale_ext.comm.CommRuntime: copy engines and stream memory
    operations between the GPUs of one host (DESIGN §6), torch.distributed where they cannot
    serve the group (`description` says which path runs).

    The runtime needs every rank's splits, so an all-to-all first all-gathers them (a few
    integers) unless the caller passes the matrix (a lookup's plan gathers it once, with
    all_gather_rows, for its three exchanges). Its receive regions grow, by recreating the runtime
    on every rank at once, when a call would not fit: every rank sees the whole split matrix, so all take the same decision.
    Results are copied out of the receive region (the next call reuses it); this rank's rows
    for itself stay out of the runtime's call (own_chunk=False) and are copied from x beside.

    Priorities (DESIGN §7): blocking exchanges (a step's fetch) run in the runtime's class 0 on
    the caller's stream; urgent asynchronous ones (a step's gradients) in class 0 on a stream of
    their own, beside the dense gradients' all-reduce; other asynchronous ones (the next step's
    prefetch) in class 1, on another stream, so they overlap the step's compute and an urgent
    exchange issued meanwhile passes their remaining pieces.
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        *,
        initial_recv_bytes: int = 64 << 20,
        timeout_s: float = 600.0,  # torch.distributed's default for NCCL groups
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._make = lambda size: CommRuntime(group, recv_bytes=[size, size], timeout_s=timeout_s)
        self.runtime = self._make(initial_recv_bytes)
        self._stream = torch.cuda.Stream() if self.runtime.uses_copy_engines else None
        # Urgent asynchronous calls (a step's gradients, class 0) run on a stream of their own,
        # beside the dense gradients' all-reduce issued after them on the caller's stream.
        # High priority: its copy-outs are small kernels the step waits for.
        self._urgent_stream = (
            torch.cuda.Stream(priority=-1) if self.runtime.uses_copy_engines else None
        )
        # The last class-0 call's copy-out: class-0 calls may come from several streams (the
        # prefetch plans on a side stream); each waits for the one before, whose result the
        # next call's peers would otherwise overwrite while it is still being copied out.
        self._class0_done: torch.cuda.Event | None = None

    @property
    def description(self) -> str:
        return self.runtime.description

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        return _all_gather_rows(row, self.group, self.world_size)

    def all_to_all(
        self, x: torch.Tensor, send: list[int], recv: list[int], matrix: Matrix = None
    ) -> torch.Tensor:
        matrix = self._plan(x, send, recv, matrix)
        x = x.contiguous()
        if not self.runtime.uses_copy_engines:
            return self.runtime.all_to_all_v(x, matrix, priority=0)
        if self._class0_done is not None:
            torch.cuda.current_stream().wait_event(self._class0_done)
        out = self.runtime.all_to_all_v(x, matrix, priority=0, own_chunk=False).clone()
        self._copy_own_rows(out, x, matrix)
        self._class0_done = torch.cuda.Event()
        self._class0_done.record()
        return out

    def all_to_all_async(
        self,
        x: torch.Tensor,
        send: list[int],
        recv: list[int],
        matrix: Matrix = None,
        *,
        urgent: bool = False,
    ):
        matrix = self._plan(x, send, recv, matrix)
        priority = 0 if urgent else 1
        if not self.runtime.uses_copy_engines:
            return self.runtime.all_to_all_v(x.contiguous(), matrix, priority=priority), None
        x = x.contiguous()
        out = x.new_empty((sum(recv), *x.shape[1:]))  # on the caller's stream: it owns it
        stream = self._urgent_stream if urgent else self._stream
        stream.wait_stream(torch.cuda.current_stream())  # x is ready
        with torch.cuda.stream(stream):
            if urgent and self._class0_done is not None:
                stream.wait_event(self._class0_done)  # class-0 calls follow one another
            out.copy_(self.runtime.all_to_all_v(x, matrix, priority=priority, own_chunk=False))
            self._copy_own_rows(out, x, matrix)
            done = torch.cuda.Event()
            done.record()
            if urgent:
                self._class0_done = done
        x.record_stream(stream)  # the allocator must not reuse them before the copies ran
        out.record_stream(stream)
        return out, _StreamWork(done)

    def _copy_own_rows(self, out: torch.Tensor, x: torch.Tensor, matrix: np.ndarray) -> None:
        """This rank's rows for itself, which the runtime left in x (own_chunk=False: a local
        copy inside the call would wait behind the step's kernels; here it is one of them)."""
        r = self.rank
        n = int(matrix[r, r])
        if n:
            sent, received = int(matrix[r, :r].sum()), int(matrix[:r, r].sum())
            out[received : received + n].copy_(x[sent : sent + n])

    def _plan(
        self, x: torch.Tensor, send: list[int], recv: list[int], matrix: Matrix
    ) -> np.ndarray:
        """The whole split matrix (all ranks'; gathered unless the caller knows it), after
        growing the receive regions if needed."""
        self.runtime.check()  # a peer that went silent earlier: raise before waiting on it
        if matrix is None:
            matrix = self._gather(send, x.device)
        elif matrix.shape != (self.world_size, self.world_size):
            raise ValueError(f"matrix must be [{self.world_size}, {self.world_size}]")
        elif matrix[self.rank].tolist() != list(send):
            raise ValueError(f"send splits {send} disagree with the given matrix")
        if matrix[:, self.rank].tolist() != list(recv):
            raise ValueError(f"recv splits {recv} disagree with the peers' sends")
        needed = largest_receive(x, matrix)
        if self.runtime.uses_copy_engines and needed > self.runtime.recv_bytes:
            capacity = self.runtime.recv_bytes
            while capacity < needed:
                capacity *= 2
            torch.cuda.current_stream().wait_stream(self._stream)  # class 1 calls in flight
            torch.cuda.current_stream().wait_stream(self._urgent_stream)
            if self._class0_done is not None:  # a class-0 call on another stream
                torch.cuda.current_stream().wait_event(self._class0_done)
            self.runtime.close()
            self.runtime = self._make(capacity)
        return matrix

    def _gather(self, send: list[int], device: torch.device) -> np.ndarray:
        mine = torch.tensor(send, dtype=torch.int64, device=device)
        return self.all_gather_rows(mine).cpu().numpy()

    def close(self) -> None:
        if self._stream is not None:
            torch.cuda.current_stream().wait_stream(self._stream)
            torch.cuda.current_stream().wait_stream(self._urgent_stream)
        self.runtime.close()


def _all_gather_rows(row: torch.Tensor, group, world_size: int) -> torch.Tensor:
    parts = [torch.empty_like(row) for _ in range(world_size)]
    dist.all_gather(parts, row.contiguous(), group=group, async_op=True).wait()  # stream-ordered
    return torch.stack(parts)


class _StreamWork:
    """wait(): the caller's stream waits for an exchange issued on the exchange's stream."""

    def __init__(self, done: torch.cuda.Event) -> None:
        self.done = done

    def wait(self) -> None:
        torch.cuda.current_stream().wait_event(self.done)
