"""The all-to-all-v the embedding exchange runs on: NCCL/gloo through torch.distributed today;
the SM-free copy-engine runtime (DESIGN §6) plugs in behind the same two calls."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist


class Exchange(Protocol):
    rank: int
    world_size: int

    def counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        """[world] int64 counts this rank sends to each peer -> counts it receives from each."""

    def all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        """Rows x[sum(send[:p]) : sum(send[:p+1])] go to peer p; returns [sum(recv), ...] with
        peer p's rows at sum(recv[:p])."""

    def all_to_all_async(self, x: torch.Tensor, send: list[int], recv: list[int]):
        """The same, started: (output buffer, handle with wait() or None); the buffer is valid
        after wait()."""


class LocalExchange:
    """One rank: everything stays (the unsharded table)."""

    rank, world_size = 0, 1

    def counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        return send_counts.clone()

    def all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        return x

    def all_to_all_async(self, x: torch.Tensor, send: list[int], recv: list[int]):
        return x, None


class ProcessGroupExchange:
    """torch.distributed all_to_all_single on a process group (NCCL on GPUs, gloo on CPUs)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        recv = torch.empty_like(send_counts)
        dist.all_to_all_single(recv, send_counts, group=self.group)
        return recv

    def all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        out, work = self.all_to_all_async(x, send, recv)
        work.wait()
        return out

    def all_to_all_async(self, x: torch.Tensor, send: list[int], recv: list[int]):
        out = x.new_empty((sum(recv), *x.shape[1:]))
        work = dist.all_to_all_single(
            out,
            x.contiguous(),
            output_split_sizes=recv,
            input_split_sizes=send,
            group=self.group,
            async_op=True,
        )
        return out, work
