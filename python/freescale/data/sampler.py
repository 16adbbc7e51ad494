"""Epoch-based shuffled batch sampler with exact mid-epoch resume."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class EpochBatchSampler:
    """Shuffled batches of row indices, one permutation per epoch from (seed, epoch).

    Resumable mid-epoch: the permutation of an epoch depends only on (seed, epoch), so the
    sampler's whole state is (epoch, position), and restoring it replays exactly the batches that
    were still to come.
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        min_last_batch: int = 1,
    ) -> None:
        if num_rows < 0 or batch_size < 1:
            raise ValueError(
                f"need num_rows >= 0 and batch_size >= 1, got {num_rows}, {batch_size}"
            )
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        # A trailing partial batch is kept only with at least this many rows (a data-parallel
        # step needs one per rank); drop_last drops it always.
        self.min_last_batch = max(int(min_last_batch), 1)
        self._epoch = 0
        self._position = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Batches of the current epoch already yielded."""
        return self._position

    def __len__(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        if self.drop_last or rest < self.min_last_batch:
            return full
        return full + 1

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch."""
        self._epoch = epoch
        self._position = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        """The remaining batches of the current epoch; exhausting them moves to the next epoch."""
        order = self._order(self._epoch)
        while self._position < len(self):
            start = self._position * self.batch_size
            # Advance before yielding: a checkpoint taken while this batch is in use resumes
            # after it.
            self._position += 1
            yield order[start : start + self.batch_size]
        self.set_epoch(self._epoch + 1)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def state_dict(self) -> dict:
        return {
            "epoch": self._epoch,
            "position": self._position,
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "min_last_batch": self.min_last_batch,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict(); the sampler must be configured as the one that saved it."""
        mine = self.state_dict()
        state = {"min_last_batch": 1, **state}  # written before the option existed
        differing = [
            f"{key}: saved {state[key]!r}, here {mine[key]!r}"
            for key in ("num_rows", "batch_size", "seed", "shuffle", "drop_last", "min_last_batch")
            if state[key] != mine[key]
        ]
        if differing:
            raise ValueError(
                "cannot resume a sampler configured differently (the batches would differ): "
                + "; ".join(differing)
            )
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"position {state['position']} outside 0..{len(self)}")
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
