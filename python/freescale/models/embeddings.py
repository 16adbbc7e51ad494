"""Item embeddings and the input preprocessing shared by HSTU and SASRec."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ItemEmbedding(nn.Module):
    """Item table [num_items + 1, D]; row 0 is padding."""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(num_items + 1, dim))
        nn.init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def normalized(self, ids: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
        """L2-normalized embeddings of `ids` (all items, padding row included, if None)."""
        if ids is None:
            return F.normalize(self.weight, dim=-1, eps=eps)
        if ids.numel() >= self.weight.shape[0]:
            # More lookups than rows (sampled negatives): normalize the table once, then gather.
            return F.embedding(ids, F.normalize(self.weight, dim=-1, eps=eps))
        return F.normalize(F.embedding(ids, self.weight), dim=-1, eps=eps)


class InputPreprocessor(nn.Module):
    """x = emb(item) * sqrt(D) + pos_emb(position), then dropout (the published recipe)."""

    def __init__(self, max_len: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.position = nn.Parameter(torch.empty(max_len, dim))
        std = math.sqrt(1.0 / dim)
        nn.init.trunc_normal_(self.position, std=std, a=-2 * std, b=2 * std)
        self.dropout = nn.Dropout(dropout)

    def forward(self, item_embeddings: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        # F.embedding, not self.position[position]: its backward is deterministic on CPU,
        # where advanced-indexing backward (index_put_ with accumulate) is not.
        return self.dropout(item_embeddings * self.scale + F.embedding(position, self.position))
