"""The item table as a row-wise sharded embedding (DESIGN §7), behind ItemEmbedding's interface.

Every lookup is collective (all ranks look up in the same order: the inputs, the positives, the
negatives), so the sampled softmax always gathers its negatives through lookups here and never
scores the whole catalog (`lookup_only`). `normalized()` with no ids gathers the whole table on
every rank: evaluation only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from freescale.embeddings import Exchange, ShardedEmbedding, SparseOptimizerConfig


class ShardedItemEmbedding(nn.Module):
    lookup_only = True

    def __init__(
        self,
        num_items: int,
        dim: int,
        exchange: Exchange,
        optimizer: SparseOptimizerConfig,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.dim = dim
        self.table = ShardedEmbedding(
            num_items + 1, dim, exchange, optimizer, init_std=0.02, seed=seed, device=device
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)

    def normalized(self, ids: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
        """L2-normalized embeddings of `ids`, or of the whole table (gathered) if None."""
        if ids is None:
            return F.normalize(self.table.full_table(), dim=-1, eps=eps)
        return F.normalize(self.table(ids), dim=-1, eps=eps)
