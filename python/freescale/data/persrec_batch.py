"""Training and evaluation batches in the PerSRec layout (DESIGN §5).

A user's window of items is split into an older history (compressed into token groups) and the
last `recent` items. Training targets are item -> next-item pairs only: every item row predicts
the next item of the user's sequence, whether that item sits behind a token group or not, and
token rows predict nothing (the reference implementation trained the last history item to
predict a token and never trained the pair into the first recent item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from freescale.data.batch import _JaggedInputs, make_eval_batch
from freescale.data.csr import as_row_indices, concat_ranges
from freescale.data.persrec_layout import PerSRecLayout, build_sequence_layout
from freescale.data.sequences import SequenceData
from freescale.data.split import LeaveOneOut


@dataclass(frozen=True)
class PerSRecShape:
    history: int  # most history items per user (the oldest are dropped beyond)
    recent: int  # the last `recent` items stay uncompressed
    num_tokens: int  # K tokens per group
    segment_len: int  # a group every this many history items (0: one group after the history)

    @property
    def window(self) -> int:
        return self.history + self.recent

    def max_rows(self) -> int:
        """Rows of the longest layout: the normalizer N and position table must cover it."""
        groups = 0 if self.history == 0 else 1
        if self.segment_len > 0:
            groups = -(-self.history // self.segment_len)
        return self.window + groups * self.num_tokens

    def layout(self, counts: np.ndarray) -> PerSRecLayout:
        counts = np.asarray(counts, dtype=np.int64)
        recent = np.minimum(counts, self.recent)
        return build_sequence_layout(
            [(counts - recent, True), (recent, False)], self.num_tokens, self.segment_len
        )


@dataclass
class PerSRecBatch(_JaggedInputs):
    input_ids: torch.Tensor  # int64 [I] the items, packed per user in order
    seq_offsets: torch.Tensor  # int32 [B+1] rows per user
    layout: PerSRecLayout  # host arrays, one entry per row
    target_ids: torch.Tensor  # int64 [R] per row: the next item, 0 at tokens and last items
    target_keys: torch.Tensor  # int64 [R] each target's index in the dataset (hashed negatives)


def make_persrec_train_batch(
    data: SequenceData, users: np.ndarray, shape: PerSRecShape
) -> PerSRecBatch:
    """The last window + 1 items of each user: inputs all but the last, each predicting the
    next. A user with fewer than 2 items contributes no rows."""
    users = as_row_indices(users, data.num_users, "users")
    ends = data.offsets[users + 1]
    window = np.minimum(ends - data.offsets[users], shape.window + 1)
    num_inputs = np.maximum(window - 1, 0)
    inputs = concat_ranges(ends - window, num_inputs)  # dataset indices of the input items
    layout = shape.layout(num_inputs)
    item_rows = layout.item_index >= 0
    # The next item is the dataset's next entry; the window's last input predicts the last item.
    keys = np.where(item_rows, inputs[np.maximum(layout.item_index, 0)] + 1, 0)
    return PerSRecBatch(
        input_ids=torch.from_numpy(data.item_ids[inputs]),
        seq_offsets=torch.from_numpy(layout.seq_offsets.astype(np.int32)),
        layout=layout,
        target_ids=torch.from_numpy(np.where(item_rows, data.item_ids[keys], 0)),
        target_keys=torch.from_numpy(keys.astype(np.int64)),
    )


@dataclass
class PerSRecEvalBatch(_JaggedInputs):
    input_ids: torch.Tensor  # int64 [I] each user's last `window` history items
    seq_offsets: torch.Tensor  # int32 [B+1] rows per user
    layout: PerSRecLayout
    last_rows: torch.Tensor  # int64 [B] each user's last row: the query
    targets: torch.Tensor  # int64 [B]
    seen_ids: torch.Tensor  # int64 [S] every history item, CSR by seen_offsets
    seen_offsets: torch.Tensor  # int64 [B+1]


def make_persrec_eval_batch(
    split: LeaveOneOut, rows: np.ndarray, shape: PerSRecShape
) -> PerSRecEvalBatch:
    plain = make_eval_batch(split, rows, shape.window)  # targets, seen items, the window
    lengths = np.diff(plain.seq_offsets.numpy()).astype(np.int64)
    layout = shape.layout(lengths)
    return PerSRecEvalBatch(
        input_ids=plain.input_ids,
        seq_offsets=torch.from_numpy(layout.seq_offsets.astype(np.int32)),
        layout=layout,
        last_rows=torch.from_numpy(layout.seq_offsets[1:] - 1),
        targets=plain.targets,
        seen_ids=plain.seen_ids,
        seen_offsets=plain.seen_offsets,
    )


__all__ = [
    "PerSRecBatch",
    "PerSRecEvalBatch",
    "PerSRecShape",
    "make_persrec_eval_batch",
    "make_persrec_train_batch",
]
