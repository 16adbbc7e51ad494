"""Row-wise sharding of a table and the plan of one lookup: which unique ids go to which owner.

Rank p owns the contiguous rows [p * R, min((p + 1) * R, num_rows)), R = ceil(num_rows / world).
A lookup deduplicates its ids (sorted, so they are grouped by owner), gathers every rank's count
per owner (the split matrix), then sends the ids themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from freescale.embeddings.exchange import Exchange


@dataclass(frozen=True)
class RowWiseSharding:
    num_rows: int
    world_size: int

    def __post_init__(self) -> None:
        if self.num_rows < 1 or self.world_size < 1:
            raise ValueError(f"need num_rows, world_size >= 1: {self.num_rows}, {self.world_size}")

    @property
    def rows_per_rank(self) -> int:
        return -(-self.num_rows // self.world_size)

    def owner(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.div(ids, self.rows_per_rank, rounding_mode="floor")

    def shard_range(self, rank: int) -> tuple[int, int]:
        """[start, stop) of the global rows `rank` owns (empty for trailing ranks of tiny tables)."""
        start = min(rank * self.rows_per_rank, self.num_rows)
        return start, min(start + self.rows_per_rank, self.num_rows)


@dataclass
class LookupPlan:
    """One rank's side of one lookup."""

    unique_ids: torch.Tensor  # [U] int64, ascending (so grouped by owner)
    inverse: torch.Tensor  # [N] index into unique_ids of every requested id
    send: list[int]  # unique ids sent to (and rows received from) each owner
    recv: list[int]  # ids received from (and rows sent back to) each rank
    local_rows: torch.Tensor  # [sum(recv)] int64 rows of this rank's shard that were asked for
    # Every rank's `send` (row s: rank s), as all_to_all's `matrix` takes it
    matrix: np.ndarray | None = None
    # The same on the lookup's device, for device-side splits that need no host copy
    matrix_device: torch.Tensor | None = None

    def matrix_back(self) -> np.ndarray | None:
        """The split matrix of the exchanges from the owners back (rows, not ids)."""
        return None if self.matrix is None else self.matrix.T


@dataclass
class SortedGroups:
    """Equal values of a 1-D int64 tensor grouped by sorting, without a host sync (torch.unique
    reads its output size on the host): group g is the g-th smallest distinct value."""

    values: torch.Tensor  # [n] ascending
    order: torch.Tensor  # [n] values = x[order]
    group: torch.Tensor  # [n] group of values[i]
    before: torch.Tensor  # [n + 1] how many groups start among values[:k]

    @staticmethod
    def of(x: torch.Tensor) -> SortedGroups:
        # Stable: equal rows keep their requesters' order, so a row's gradients are summed in
        # the same order as coalesce_rows sums them (bit for bit with the plain path).
        values, order = torch.sort(x, stable=True)
        first = torch.ones_like(values, dtype=torch.bool)
        first[1:] = values[1:] != values[:-1]
        before = torch.nn.functional.pad(torch.cumsum(first, 0), (1, 0))
        return SortedGroups(values, order, before[1:] - 1, before)

    def distinct(self, count: int) -> torch.Tensor:
        """[count] the distinct values ascending (count: how many there are, known on the host)."""
        return self.values.new_empty(count).scatter_(0, self.group, self.values)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.values, self.order, self.group, self.before

    def inverse(self) -> torch.Tensor:
        """[n] the group of x[i], in x's order."""
        return torch.empty_like(self.group).scatter_(0, self.order, self.group)


def segment_sums(flags: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[len(sizes)] int64: how many flags are set in each consecutive segment of the given
    sizes (int64, on flags' device: no host copy, which would sync)."""
    ends = torch.nn.functional.pad(torch.cumsum(sizes, 0), (1, 0))
    before = torch.nn.functional.pad(torch.cumsum(flags, 0), (1, 0))
    return before[ends[1:]] - before[ends[:-1]]


def member(x: torch.Tensor, ascending: torch.Tensor) -> torch.Tensor:
    """x's elements that occur in `ascending` (sorted, duplicates allowed), without the host sync
    of torch.isin."""
    if ascending.numel() == 0:
        return torch.zeros_like(x, dtype=torch.bool)
    at = torch.searchsorted(ascending, x).clamp_(max=ascending.numel() - 1)
    return ascending[at] == x


def first_half(flags: torch.Tensor) -> torch.Tensor:
    """Positions of `flags` with the set ones first, each part in its order (a stable sort,
    no host sync)."""
    return torch.argsort((~flags).to(torch.int8), stable=True)


def plan_lookup(ids: torch.Tensor, sharding: RowWiseSharding, exchange: Exchange) -> LookupPlan:
    """Plans the lookup of `ids` (any shape, int64) on every rank; collective (every rank calls
    it in the same order). Raises on every rank where any rank has ids outside [0, num_rows).

    One host sync: each rank's per-owner counts of unique ids, how many of its ids are out of
    range and their extremes are gathered on the device (all_gather_rows) and read in one copy."""
    flat = ids.reshape(-1).long()
    world, num_rows = exchange.world_size, sharding.num_rows
    groups = SortedGroups.of(flat)
    bounds = (torch.arange(world + 1, device=flat.device) * sharding.rows_per_rank).clamp_(
        max=num_rows
    )
    at = torch.searchsorted(groups.values, bounds)  # first sorted id >= each shard's start
    per_owner = groups.before[at[1:]] - groups.before[at[:-1]]
    outside = at[:1] + (flat.numel() - at[-1:])  # ids below 0, ids from num_rows on
    extremes = (
        torch.stack((groups.values[0], groups.values[-1])) if flat.numel() else flat.new_zeros(2)
    )
    gathered = exchange.all_gather_rows(torch.cat([per_owner, outside, extremes]))
    status = gathered.cpu().numpy()
    _raise_on_outside_ids(status[:, world:], exchange.rank, num_rows)
    matrix = np.ascontiguousarray(status[:, :world])
    send, recv = matrix[exchange.rank].tolist(), matrix[:, exchange.rank].tolist()
    unique = groups.distinct(sum(send))
    asked = exchange.all_to_all(unique, send, recv, matrix=matrix)
    start, _ = sharding.shard_range(exchange.rank)
    inverse = groups.inverse()
    return LookupPlan(unique, inverse, send, recv, asked - start, matrix, gathered[:, :world])


def _raise_on_outside_ids(status: np.ndarray, rank: int, num_rows: int) -> None:
    """status [world, 3]: (ids outside the table, min id, max id) of every rank; every rank
    raises if any has ids outside, so none is left waiting in the next collective."""
    bad = np.flatnonzero(status[:, 0])
    if bad.size == 0:
        return
    if rank in bad:
        low, high = status[rank, 1:].tolist()
        raise ValueError(f"embedding ids must be in [0, {num_rows}), got min {low}, max {high}")
    raise ValueError(f"embedding ids of rank(s) {bad.tolist()} are outside [0, {num_rows})")
