"""Per-user item sequences (CSR) and their construction from raw interaction logs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from freescale.data.csr import as_row_indices, concat_ranges, offsets_from_lengths


@dataclass
class SequenceData:
    """Per-user chronological item sequences in CSR form.

    Items are remapped to 1..num_items; 0 is padding. User u's items are
    item_ids[offsets[u]:offsets[u + 1]], oldest first. Construction validates the arrays, so a
    SequenceData that exists is consistent.
    """

    item_ids: np.ndarray  # int64 [total]
    offsets: np.ndarray  # int64 [num_users + 1], offsets[0] == 0
    num_items: int  # largest item id (ids are 1..num_items)
    timestamps: np.ndarray | None = None  # int64 [total], aligned with item_ids
    name: str = ""
    user_keys: np.ndarray | None = None  # original user id per row (any dtype)
    item_keys: np.ndarray | None = None  # original item id per new id; [0] is a placeholder

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_interactions(self) -> int:
        return len(self.item_ids)

    def items(self, u: int) -> np.ndarray:
        return self.item_ids[self.offsets[u] : self.offsets[u + 1]]

    def times(self, u: int) -> np.ndarray | None:
        if self.timestamps is None:
            return None
        return self.timestamps[self.offsets[u] : self.offsets[u + 1]]

    def select(self, users: np.ndarray) -> SequenceData:
        """The sequences of `users` (row indices, in the given order), in the same item space."""
        users = as_row_indices(users, self.num_users, "users")
        starts = self.offsets[users]
        return self._gather(users, starts, self.offsets[users + 1] - starts)

    def truncate_last(self, n: int) -> SequenceData:
        """Every sequence without its last n items; users left with none stay, with length 0."""
        if n < 0:
            raise ValueError(f"truncate_last needs n >= 0, got {n}")
        rows = np.arange(self.num_users)
        return self._gather(rows, self.offsets[:-1], np.maximum(self.lengths - n, 0))

    def _gather(self, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> SequenceData:
        index = concat_ranges(starts, lengths)
        return SequenceData(
            item_ids=self.item_ids[index],
            offsets=offsets_from_lengths(lengths),
            num_items=self.num_items,
            timestamps=None if self.timestamps is None else self.timestamps[index],
            name=self.name,
            user_keys=None if self.user_keys is None else self.user_keys[rows],
            item_keys=self.item_keys,
        )

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistency between the arrays."""
        _check_int64_vector(self.item_ids, "item_ids")
        _check_int64_vector(self.offsets, "offsets")
        if len(self.offsets) == 0 or self.offsets[0] != 0:
            raise ValueError("offsets must start with 0")
        if self.offsets[-1] != len(self.item_ids):
            raise ValueError(
                f"offsets[-1] = {self.offsets[-1]} but there are {len(self.item_ids)} item_ids"
            )
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")
        if self.num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {self.num_items}")
        if len(self.item_ids) and (self.item_ids.min() < 1 or self.item_ids.max() > self.num_items):
            raise ValueError(
                f"item_ids must lie in 1..num_items={self.num_items}, found "
                f"[{self.item_ids.min()}, {self.item_ids.max()}] (0 is reserved for padding)"
            )
        if self.timestamps is not None:
            _check_int64_vector(self.timestamps, "timestamps")
            if len(self.timestamps) != len(self.item_ids):
                raise ValueError(
                    f"{len(self.timestamps)} timestamps for {len(self.item_ids)} item_ids"
                )
        if self.user_keys is not None and len(self.user_keys) != self.num_users:
            raise ValueError(f"{len(self.user_keys)} user_keys for {self.num_users} users")
        if self.item_keys is not None and len(self.item_keys) != self.num_items + 1:
            raise ValueError(
                f"{len(self.item_keys)} item_keys for {self.num_items} items "
                "(expected num_items + 1: item_keys[0] is the padding placeholder)"
            )


def _check_int64_vector(array: np.ndarray, name: str) -> None:
    if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype != np.int64:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array)
        raise ValueError(f"{name} must be a 1-D int64 numpy array, got {got}")


def from_interactions(
    users: ArrayLike,
    items: ArrayLike,
    timestamps: ArrayLike | None = None,
    order: ArrayLike | None = None,
    name: str = "",
) -> SequenceData:
    """Group an interaction log (parallel arrays of raw keys) into per-user sequences.

    Each user's items are ordered by timestamp, then by `order`, then by position in the input
    (a stable sort, so the file order breaks ties). Users become rows in sorted order of their raw
    key; items get ids 1..num_items in sorted order of their raw key, so the mapping does not
    depend on the order of the log. Nothing is dropped (repeated items stay).
    """
    users = np.asarray(users)
    items = np.asarray(items)
    if users.ndim != 1 or users.shape != items.shape:
        raise ValueError(f"users {users.shape} and items {items.shape} must be equal-length 1-D")
    if len(users) == 0:
        raise ValueError(f"no interactions to build sequences from{f' ({name})' if name else ''}")
    user_keys, user_rows = np.unique(users, return_inverse=True)
    distinct_items, item_index = np.unique(items, return_inverse=True)

    secondary_keys = []  # least significant first: order, then timestamps
    for label, key in (("order", order), ("timestamps", timestamps)):
        if key is not None:
            key = np.asarray(key)
            if key.shape != users.shape:
                raise ValueError(f"{label} {key.shape} must match users {users.shape}")
            secondary_keys.append(key)
    if secondary_keys:
        # lexsort sorts by its last key first; the running index makes ties keep file order.
        perm = np.lexsort([np.arange(len(users)), *secondary_keys, user_rows])
    else:
        perm = np.argsort(user_rows, kind="stable")

    # item_keys[0] stands for the padding id 0; the dtype's zero value keeps the array homogeneous.
    item_keys = np.concatenate([np.zeros(1, dtype=distinct_items.dtype), distinct_items])
    return SequenceData(
        item_ids=(item_index[perm] + 1).astype(np.int64, copy=False),
        offsets=offsets_from_lengths(np.bincount(user_rows, minlength=len(user_keys))),
        num_items=len(distinct_items),
        timestamps=None if timestamps is None else np.asarray(timestamps, np.int64)[perm],
        name=name,
        user_keys=user_keys,
        item_keys=item_keys,
    )
