"""Leave-one-out evaluation splits (DESIGN §9)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freescale.data.sequences import SequenceData

PROTOCOLS = ("published", "strict")


@dataclass
class LeaveOneOut:
    train: SequenceData  # what the model trains on
    eval_history: SequenceData  # per evaluated user: the history the model sees
    eval_targets: np.ndarray  # int64 [num_eval_users], the held-out item
    eval_users: np.ndarray  # int64 row indices into the original data
    stage: str  # "test" or "valid"


def leave_one_out(
    data: SequenceData, protocol: str = "published", stage: str = "test", min_history: int = 1
) -> LeaveOneOut:
    """Hold out each user's last item(s).

    protocol "published" (the HSTU repository): train on every sequence minus its last item; test
    predicts the last item from everything before it. There is no validation stage.
    protocol "strict" (SASRec): train on every sequence minus its last two items; "valid" predicts
    item -2 from items[:-2], "test" predicts item -1 from items[:-1].
    Users whose history would be shorter than `min_history` are not evaluated (they still train,
    on whatever their train sequence holds, possibly nothing).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    if stage not in ("test", "valid"):
        raise ValueError(f"stage must be 'test' or 'valid', got {stage!r}")
    if protocol == "published" and stage == "valid":
        raise ValueError(
            "protocol 'published' has no validation stage (its train set ends right before the "
            "test item); use protocol='strict' for a validation split"
        )
    if min_history < 0:
        raise ValueError(f"min_history must be >= 0, got {min_history}")

    held_out = 2 if protocol == "strict" else 1
    # The target is this many items from the end; the history is everything before it.
    target_from_end = 2 if stage == "valid" else 1
    eval_users = np.flatnonzero(data.lengths >= target_from_end + min_history).astype(np.int64)
    return LeaveOneOut(
        train=data.truncate_last(held_out),
        eval_history=data.select(eval_users).truncate_last(target_from_end),
        eval_targets=data.item_ids[data.offsets[eval_users + 1] - target_from_end],
        eval_users=eval_users,
        stage=stage,
    )
