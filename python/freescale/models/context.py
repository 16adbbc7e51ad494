"""Per-batch facts about the jagged layout, computed once and shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from freescale.models.jagged import jagged_positions


@dataclass
class SequenceContext:
    seq_offsets: torch.Tensor  # int32 [B+1]
    batch_index: torch.Tensor  # int64 [T]
    position: torch.Tensor  # int64 [T]
    max_len: int  # longest sequence of the batch (host int: no device sync needed)
    timestamps: torch.Tensor | None = None  # int64 [T]
    # Token-compressed (PerSRec) layouts: attention uses the compressed mask (DESIGN §5)
    region: torch.Tensor | None = None  # int32 [T], segment id of every row
    is_token: torch.Tensor | None = None  # bool [T], True at compression tokens

    @property
    def batch_size(self) -> int:
        return self.seq_offsets.numel() - 1

    @classmethod
    def build(
        cls,
        seq_offsets: torch.Tensor,
        num_tokens: int,
        max_len: int,
        timestamps: torch.Tensor | None = None,
        region: torch.Tensor | None = None,
        is_token: torch.Tensor | None = None,
    ) -> SequenceContext:
        batch_index, position = jagged_positions(seq_offsets, num_tokens)
        return cls(seq_offsets, batch_index, position, max_len, timestamps, region, is_token)
