"""Row-wise sharding of a table and the plan of one lookup: which unique ids go to which owner.

Rank p owns the contiguous rows [p * R, min((p + 1) * R, num_rows)), R = ceil(num_rows / world).
A lookup deduplicates its ids (sorted, so they are grouped by owner), tells every owner how many
it will ask for (an all-to-all of counts), then sends the ids themselves.
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
    # Every rank's `send` (row s: rank s), where the exchange learnt it (Exchange.counts_and_matrix)
    matrix: np.ndarray | None = None

    def matrix_back(self) -> np.ndarray | None:
        """The split matrix of the exchanges from the owners back (rows, not ids)."""
        return None if self.matrix is None else self.matrix.T


def plan_lookup(ids: torch.Tensor, sharding: RowWiseSharding, exchange: Exchange) -> LookupPlan:
    """Plans the lookup of `ids` (any shape, int64) on every rank; collective (every rank calls
    it in the same order). Raises on ids outside [0, num_rows)."""
    flat = ids.reshape(-1).long()
    if flat.numel():
        low, high = torch.stack(torch.aminmax(flat)).tolist()  # one host sync, not two
        if low < 0 or high >= sharding.num_rows:
            raise ValueError(
                f"embedding ids must be in [0, {sharding.num_rows}), got min {low}, max {high}"
            )
    unique, inverse = torch.unique(flat, sorted=True, return_inverse=True)
    send_counts = torch.bincount(sharding.owner(unique), minlength=exchange.world_size)
    recv, matrix = exchange.counts_and_matrix(send_counts)
    send = send_counts.tolist()
    asked = exchange.all_to_all(unique, send, recv, matrix=matrix)
    start, _ = sharding.shard_range(exchange.rank)
    return LookupPlan(unique, inverse, send, recv, asked - start, matrix)
