"""Moving activations between the jagged layout [T, ...] and padded [B, L, ...]."""

from __future__ import annotations

import torch


def jagged_positions(
    seq_offsets: torch.Tensor, num_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every token: (its sequence index, its position inside the sequence), both int64 [T]."""
    offsets = seq_offsets.long()
    lengths = offsets[1:] - offsets[:-1]
    batch_index = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=num_tokens
    )
    position = torch.arange(num_tokens, device=offsets.device) - offsets[batch_index]
    return batch_index, position


def jagged_to_padded(
    values: torch.Tensor,
    batch_index: torch.Tensor,
    position: torch.Tensor,
    batch: int,
    max_len: int,
) -> torch.Tensor:
    """[T, ...] -> [B, max_len, ...], zero padded at the end of each row."""
    out = values.new_zeros((batch, max_len, *values.shape[1:]))
    out[batch_index, position] = values
    return out


def padded_to_jagged(
    padded: torch.Tensor, batch_index: torch.Tensor, position: torch.Tensor
) -> torch.Tensor:
    """[B, L, ...] -> [T, ...]."""
    return padded[batch_index, position]


def last_positions(seq_offsets: torch.Tensor) -> torch.Tensor:
    """Index of each sequence's last token (sequences must be non-empty)."""
    return seq_offsets[1:].long() - 1
