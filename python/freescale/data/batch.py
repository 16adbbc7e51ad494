"""Jagged (CSR) torch batches for next-item training and leave-one-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import numpy as np
import torch

from freescale.data.csr import as_row_indices, concat_ranges, offsets_from_lengths
from freescale.data.sequences import SequenceData
from freescale.data.split import LeaveOneOut

_Batch = TypeVar("_Batch", bound="_JaggedInputs")


class _JaggedInputs:
    """What every batch shares: jagged inputs (input_ids, seq_offsets) and a device move."""

    input_ids: torch.Tensor
    seq_offsets: torch.Tensor

    def to(self: _Batch, device: torch.device | str, non_blocking: bool = False) -> _Batch:
        moved = {
            f.name: value.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self: _Batch) -> _Batch:
        """Page-locked host copies, so that a non_blocking device copy is really asynchronous."""
        pinned = {
            f.name: value.pin_memory()
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **pinned)

    @property
    def batch_size(self) -> int:
        return self.seq_offsets.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()


@dataclass
class JaggedBatch(_JaggedInputs):
    """Next-item training batch: per sequence, inputs x_0..x_{n-2} and targets x_1..x_{n-1}."""

    input_ids: torch.Tensor  # int64 [T]
    target_ids: torch.Tensor  # int64 [T]
    seq_offsets: torch.Tensor  # int32 [B+1]
    timestamps: torch.Tensor | None  # int64 [T], the timestamps of the inputs
    max_len: int  # longest sequence in this batch
    # int64 [T]: each target's index in the dataset's item array, a name for the position that
    # does not depend on batching (it keys the hashed negatives, see freescale.models.negatives)
    target_keys: torch.Tensor


@dataclass
class EvalBatch(_JaggedInputs):
    """Leave-one-out batch: per user, the (truncated) history as input and the held-out item."""

    input_ids: torch.Tensor  # int64 [T]: the last max_len items of each history
    seq_offsets: torch.Tensor  # int32 [B+1]
    timestamps: torch.Tensor | None  # int64 [T]
    max_len: int  # longest input sequence in this batch
    targets: torch.Tensor  # int64 [B], the held-out item
    seen_ids: torch.Tensor  # int64 [S]: every history item (not truncated), CSR by seen_offsets
    seen_offsets: torch.Tensor  # int64 [B+1]


def make_train_batch(data: SequenceData, users: np.ndarray, max_len: int) -> JaggedBatch:
    """Batch of `users` (row indices) from the last max_len + 1 items of each sequence.

    A user with fewer than 2 items contributes an empty sequence, so that sequence b of the
    batch is always users[b].
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    users = as_row_indices(users, data.num_users, "users")
    ends = data.offsets[users + 1]
    window = np.minimum(ends - data.offsets[users], max_len + 1)
    num_inputs = np.maximum(window - 1, 0)
    inputs = concat_ranges(ends - window, num_inputs)
    return JaggedBatch(
        input_ids=torch.from_numpy(data.item_ids[inputs]),
        target_ids=torch.from_numpy(data.item_ids[inputs + 1]),
        seq_offsets=torch.from_numpy(offsets_from_lengths(num_inputs, np.int32)),
        timestamps=_gather_times(data, inputs),
        max_len=int(num_inputs.max(initial=0)),
        target_keys=torch.from_numpy((inputs + 1).astype(np.int64)),
    )


def make_eval_batch(split: LeaveOneOut, rows: np.ndarray, max_len: int) -> EvalBatch:
    """Batch of evaluated users `rows` (indices into split.eval_*)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    history = split.eval_history
    rows = as_row_indices(rows, history.num_users, "rows")
    starts = history.offsets[rows]
    lengths = history.offsets[rows + 1] - starts
    num_inputs = np.minimum(lengths, max_len)
    inputs = concat_ranges(starts + lengths - num_inputs, num_inputs)
    return EvalBatch(
        input_ids=torch.from_numpy(history.item_ids[inputs]),
        seq_offsets=torch.from_numpy(offsets_from_lengths(num_inputs, np.int32)),
        timestamps=_gather_times(history, inputs),
        max_len=int(num_inputs.max(initial=0)),
        targets=torch.from_numpy(split.eval_targets[rows]),
        seen_ids=torch.from_numpy(history.item_ids[concat_ranges(starts, lengths)]),
        seen_offsets=torch.from_numpy(offsets_from_lengths(lengths)),
    )


def _gather_times(data: SequenceData, index: np.ndarray) -> torch.Tensor | None:
    return None if data.timestamps is None else torch.from_numpy(data.timestamps[index])
