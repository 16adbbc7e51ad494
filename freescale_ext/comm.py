"""SM-free communication between the GPUs of a host (DESIGN §6).

- Planning (C++, `csrc/comm/transfer_plan.*`, tested on CPUs): `pull_copies` / `push_copies`
  list the copies one rank issues for an all-to-all-v (splits[s, d] bytes from rank s to rank d;
  torch's all_to_all_single buffer layout): peers from rank + 1 on, the own chunk last, chunks cut
  into aligned pieces. The runtime issues exactly `push_copies`' list.
- `CommRuntime` (CUDA builds): an all-to-all-v by copy engines and stream memory operations, no
  kernels (`csrc/comm/peer_runtime.*`), among the ranks of a process group on one host; NCCL
  (torch.distributed) where GPUs cannot reach each other directly. `description` says which path
  runs. NVSHMEM-style `put`, `get`, `signal`, `wait` and `barrier` work on the same arena (the
  symmetric heap). A peer that never signals becomes an error after `timeout_s` (`check()`), not
  a hang.
- Priority classes: `recv_bytes=[urgent, bulk, ...]` gives each class (0 highest) its own
  receive region, signals and streams; the copies of classes > 0 are cut into `piece_bytes`
  pieces, so an urgent call issued during a bulk one is not stuck behind all of its bytes.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from freescale_ext._loader import _C

all_to_all_offsets = _C.comm.all_to_all_offsets
pull_copies = _C.comm.pull_copies
push_copies = _C.comm.push_copies


class CommRuntime:
    """One rank's side of the copy-engine all-to-all-v; collective to create and to close.

    Results are views of this rank's receive region of the call's priority class
    (`recv_bytes[priority]`): valid until the next call of that class (clone what must outlive
    it). Calls are ordered on torch's current stream; the calls of one class must come in the
    same order on every rank.

    recv_bytes: the receive region, or one per priority class (0 is the highest).
    piece_bytes: classes > 0 move in pieces of this size (0: whole chunks).
    issue: "streams" (peer rank+1 on the caller's stream, each other peer on a side stream) or
    "batch" (one cudaMemcpyBatchAsync per call; with own_chunk=False the fastest way measured
    on 4 GPUs, docs/benchmarks.md).
    signal: how ready/done signals reach peers: "fenced-write" (cuStreamWriteValue32 with its
    memory barrier) or "copy" (a 4-byte copy-engine copy of the value, staged in pinned memory).
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        *,
        recv_bytes: int | Sequence[int],
        timeout_s: float = 600.0,
        piece_bytes: int = 4 << 20,
        issue: str = "streams",
        signal: str = "fenced-write",
    ) -> None:
        self.group = group
        sizes = [recv_bytes] if isinstance(recv_bytes, int) else [int(b) for b in recv_bytes]
        if not 1 <= len(sizes) <= 4 or min(sizes) < 0:
            raise ValueError(f"recv_bytes: 1 to 4 sizes >= 0 (one per class), got {recv_bytes}")
        if issue not in ("streams", "batch") or piece_bytes < 0:
            raise ValueError(f"issue must be 'streams' or 'batch' and piece_bytes >= 0: {issue}")
        if signal not in ("fenced-write", "copy"):
            raise ValueError(f"signal must be 'fenced-write' or 'copy', got {signal!r}")
        self.class_bytes = sizes
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.device = torch.cuda.current_device() if torch.cuda.is_available() else None
        settings: list = [None] * self.world
        dist.all_gather_object(settings, (sizes, piece_bytes, issue, signal), group=group)
        if any(s != settings[0] for s in settings):
            raise ValueError(f"CommRuntime needs the same settings on every rank, got {settings}")
        reason = self._peer_to_peer_problem()
        self._native = None
        if reason is None:
            self._native = _C.comm.PeerRuntime(
                self.rank, self.world, self.device, sizes, timeout_s, piece_bytes, issue, signal
            )
            handles: list = [None] * self.world
            dist.all_gather_object(handles, self._native.ipc_handle(), group=group)
            self._native.open(handles)
            self.description = (
                f"copy engines: {self.world} GPUs of one host, P2P between every pair, "
                f"receive regions {sizes} B (priority classes), classes > 0 in "
                f"{piece_bytes} B pieces, {issue} issue, {signal} signals, watchdog {timeout_s} s"
            )
        else:
            self.description = f"torch.distributed fallback ({reason})"

    def _peer_to_peer_problem(self) -> str | None:
        """Why the copy engines cannot serve this group (None: they can); agreed by all."""
        uuid = (
            str(torch.cuda.get_device_properties(self.device).uuid)
            if self.device is not None
            else None
        )
        mine = (socket.gethostname(), uuid)
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, mine, group=self.group)
        problems = []
        backend = dist.get_backend(self.group)
        if not hasattr(_C.comm, "PeerRuntime"):
            problems.append("freescale_ext was built without CUDA")
        elif backend != "nccl":
            problems.append(f"the process group's backend is {backend}, not nccl")
        elif any(u is None for _, u in everyone):
            problems.append("a rank has no CUDA device")
        elif len({host for host, _ in everyone}) > 1:
            problems.append("ranks on several hosts")
        elif len({u for _, u in everyone}) < self.world:
            problems.append("two ranks share a GPU")
        else:
            local = {
                str(torch.cuda.get_device_properties(i).uuid): i
                for i in range(torch.cuda.device_count())
            }
            peers = [u for _, u in everyone if u != uuid]
            if any(u not in local for u in peers):
                problems.append("a peer's GPU is not visible to this process")
            elif not all(torch.cuda.can_device_access_peer(self.device, local[u]) for u in peers):
                problems.append(f"cuda:{self.device} has no P2P access to a peer")
        verdicts: list = [None] * self.world
        dist.all_gather_object(verdicts, problems, group=self.group)
        found = sorted({p for v in verdicts for p in v})
        return "; ".join(found) if found else None

    @property
    def uses_copy_engines(self) -> bool:
        return self._native is not None

    @property
    def recv_bytes(self) -> int:
        """The class-0 receive region (the symmetric heap of the one-sided operations)."""
        return self.class_bytes[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_bytes)

    def _check_priority(self, priority: int) -> None:
        if not 0 <= priority < self.num_classes:
            raise ValueError(f"priority {priority} out of [0, {self.num_classes})")

    def all_to_all_v(
        self,
        x: torch.Tensor,
        split_rows: np.ndarray,
        priority: int = 0,
        own_chunk: bool = True,
    ) -> torch.Tensor:
        """Rows of `x` ([sum(split_rows[rank]), ...], contiguous) to every rank: split_rows[s, d]
        rows from rank s to rank d, the whole [world, world] matrix, the same on every rank.
        Returns [sum(split_rows[:, rank]), ...] in torch's all_to_all_single order.

        own_chunk=False leaves this rank's rows for itself in x ("in place"): their slot in the
        result is stale, and the call holds no local copy, which the driver may run on SMs and
        so behind concurrent kernels (measured: it is what stalls the call under a GEMM)."""
        if self._native is not None:
            # The native call checks everything (priority, shapes, capacity, the watchdog's
            # error) and shapes the view: its host time is what a small transfer waits for.
            return self._native.all_to_all_v(x.contiguous(), split_rows, priority, own_chunk)
        self._check_priority(priority)
        split_rows = np.asarray(split_rows, dtype=np.int64)
        if split_rows.shape != (self.world, self.world):
            raise ValueError(f"split_rows must be [{self.world}, {self.world}]")
        if x.shape[0] != int(split_rows[self.rank].sum()):
            raise ValueError(
                f"x has {x.shape[0]} rows, split_rows[{self.rank}] sends "
                f"{int(split_rows[self.rank].sum())}"
            )
        out = x.new_empty((int(split_rows[:, self.rank].sum()), *x.shape[1:]))
        dist.all_to_all_single(
            out,
            x.contiguous(),
            output_split_sizes=split_rows[:, self.rank].tolist(),
            input_split_sizes=split_rows[self.rank].tolist(),
            group=self.group,
        )
        return out

    def all_gather(self, x: torch.Tensor, priority: int = 0) -> torch.Tensor:
        """[world, *x.shape]: every rank's `x` (the same shape everywhere), in rank order."""
        if self._native is not None:
            # The native call checks the priority, the watchdog's error and the capacity.
            raw = self._native.all_gather(x.contiguous(), priority)
            return raw.view(x.dtype).view(self.world, *x.shape)
        self._check_priority(priority)
        flat = x.contiguous().reshape(-1)
        out = flat.new_empty((self.world * flat.numel(),))
        dist.all_gather_into_tensor(out, flat, group=self.group)
        return out.view(self.world, *x.shape)

    # -- NVSHMEM-style one-sided operations on the symmetric heap (copy-engine path only) -----
    # The heap is every rank's class-0 receive region: an offset names the same place on every
    # rank.
    # All are ordered on torch's current stream; a put is visible to its peer once a later
    # signal() to that peer is (the signal fences the stream's earlier writes).

    def put(self, peer: int, offset: int, src: torch.Tensor) -> None:
        """Copies `src` (contiguous, this rank's GPU) into `peer`'s heap at byte `offset`."""
        self._one_sided().put(peer, offset, src)

    def get(self, peer: int, offset: int, dst: torch.Tensor) -> None:
        """Copies dst.nbytes bytes of `peer`'s heap at byte `offset` into `dst`."""
        self._one_sided().get(peer, offset, dst)

    def signal(self, peer: int, slot: int, value: int) -> None:
        """Sets `peer`'s user slot (0-511) to `value` after this stream's earlier work."""
        self._one_sided().signal(peer, slot, value)

    def wait(self, slot: int, value: int) -> None:
        """Holds this stream until this rank's user slot is >= `value`."""
        self._one_sided().wait(slot, value)

    def barrier(self) -> None:
        """Holds this stream until every rank's stream reached its matching barrier."""
        self._one_sided().barrier()

    def heap(self) -> torch.Tensor:
        """This rank's heap as uint8 (what peers put here)."""
        return self._one_sided().heap()

    def _one_sided(self):
        if self._native is None:
            raise RuntimeError(
                f"one-sided operations need the copy-engine path; {self.description}"
            )
        self.check()
        return self._native

    def check(self) -> None:
        """Raises the watchdog's error (a peer that never signalled), if any."""
        if self._native is not None and (error := self._native.error()):
            raise RuntimeError(error)

    def close(self) -> None:
        """Frees the arena and unmaps the peers once every rank is done (collective: a peer may
        still write into this rank's arena until it has finished its calls)."""
        if self._native is not None:
            torch.cuda.current_stream().synchronize()
            dist.barrier(group=self.group)
            self._native.close()
            self._native = None


def row_bytes(x: torch.Tensor) -> int:
    """Bytes of one row (x[i]) of a contiguous tensor."""
    return x.element_size() * math.prod(x.shape[1:])


def largest_receive(x: torch.Tensor, split_rows: np.ndarray) -> int:
    """Bytes the busiest rank receives in an all-to-all-v of `x`'s rows by split_rows[s, d]."""
    return int(np.asarray(split_rows).sum(axis=0).max()) * row_bytes(x)


__all__ = [
    "CommRuntime",
    "all_to_all_offsets",
    "largest_receive",
    "pull_copies",
    "push_copies",
    "row_bytes",
]
