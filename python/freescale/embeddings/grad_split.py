"""A prefetching step's gradients in two halves: the rows the next step asks for first.

While step i computes, prefetch_step plans step i + 1. Of the rows step i updates, only those
step i + 1 also asks for ("hot") must be updated before the next begin_step fetches them; the
other ("cold") rows are not read again until step i + 2's prefetch. So step i's gradient
exchange is cut in two: the hot half is urgent (end_step sends it, step() waits for it and
updates those rows), the cold half is bulk (step() issues it after the dense all-reduce, and its
update is deferred beside the next backward, like a stale step's). Training is unchanged: a
row's update does not depend on other rows' (row-wise Adagrad and lazy Adam both), and every
row is updated before anything reads it.

A row is hot or cold as a whole (it is asked for by step i + 1 or not), so its owner flags its
rows of step i's plan and sends the flags back with the plan's splits; each requester then
orders its gradients hot first and counts them per owner. Everything is planned on the
prefetch's side stream; its counts reach the host in pinned memory by end_step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from freescale.embeddings.exchange import Exchange
from freescale.embeddings.sharding import LookupPlan, SortedGroups, first_half, member, segment_sums


@dataclass
class GradSplit:
    hot_requested: torch.Tensor  # requester side [U] bool: plan.unique_ids that are hot
    hot_first: torch.Tensor  # owner side: positions in plan.local_rows, the hot rows first
    counts: torch.Tensor  # host: hot split matrix [world * world] | distinct hot | distinct
    counted: torch.cuda.Event | None  # on a GPU: `counts` has landed

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.hot_requested, self.hot_first

    def read(self, world: int) -> tuple[np.ndarray, int, int]:
        """(hot split matrix [world, world], distinct hot rows, distinct rows) of this owner."""
        if self.counted is not None:
            self.counted.synchronize()  # recorded during the backward: normally long passed
        counts = self.counts.tolist()
        matrix = np.array(counts[: world * world], dtype=np.int64).reshape(world, world)
        return matrix, counts[-2], counts[-1]


def plan_grad_split(
    exchange: Exchange,
    plan: LookupPlan,
    groups: SortedGroups,
    next_rows: torch.Tensor,
    pinned: bool,
) -> GradSplit:
    """Collective. plan: step i's; groups: its local_rows grouped; next_rows: the rows of this
    shard step i + 1 asks for, ascending (duplicates allowed)."""
    hot_local = member(plan.local_rows, next_rows)  # owner side, per requester
    flags, work = exchange.all_to_all_async(  # urgent: end_step reads what it yields
        hot_local.to(torch.int64), plan.recv, plan.send, matrix=plan.matrix_back(), urgent=True
    )
    if work is not None:
        work.wait()  # stream-ordered on a GPU
    hot_requested = flags > 0
    hot_per_owner = segment_sums(hot_requested, plan.matrix_device[exchange.rank])
    hot_matrix = exchange.all_gather_rows(hot_per_owner)
    starts = (groups.before[1:] - groups.before[:-1]) > 0  # a group's first element
    distinct_hot = (starts & hot_local[groups.order]).sum()
    counts = torch.cat([hot_matrix.reshape(-1), distinct_hot[None], groups.before[-1:]])
    hot_first = first_half(hot_local)  # before the event: end_step uses it once that passed
    counted = None
    if pinned:
        host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
        counts = host.copy_(counts, non_blocking=True)
        counted = torch.cuda.Event()
        counted.record()
    return GradSplit(hot_requested, hot_first, counts, counted)
