"""Balanced distributed batches (DESIGN §8).

Every rank draws the same global batch of row indices (same seed, same order), costs each
sample with the cost model, and keeps its own part of a capacity-LPT partition: exactly
global_batch / world samples per rank (+1 for the remainder), computed one step ahead in a
background thread. The global batch is the same as without balancing, so with the loss
normalized by the global token count the update is the same up to summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from freescale.balance.cost_model import CostModel
from freescale.balance.partition import DEFAULT_REFINE_ROUNDS, lower_bound, partition
from freescale.data.sampler import EpochBatchSampler


@dataclass
class BalanceStats:
    predicted: np.ndarray  # predicted cost of each rank's part
    imbalance: float  # max / mean predicted cost
    bound: float  # lower bound on max / mean: freescale.balance.lower_bound / fair share
    oversized: bool  # one sample costs more than a rank's fair share: balance cannot reach 1.0


@dataclass
class BalancedStep:
    rows: np.ndarray  # this rank's rows
    global_rows: np.ndarray  # the whole step's rows, identical on every rank
    parts: list[np.ndarray]  # every rank's rows (for logging and tests)
    stats: BalanceStats
    cost_model: CostModel | None = None  # the model this step was planned with
    prepared: Any = None  # what the sampler's `prepare` hook built for this step, if any


def split_evenly(n: int, world: int) -> list[np.ndarray]:
    """The unbalanced baseline: contiguous slices of n // world (+1) positions."""
    sizes = np.full(world, n // world)
    sizes[: n % world] += 1
    return np.split(np.arange(n), np.cumsum(sizes)[:-1])


class BalancedBatchSampler:
    def __init__(
        self,
        lengths: np.ndarray,
        global_batch_size: int,
        world_size: int,
        rank: int,
        *,
        seed: int = 0,
        cost_model: CostModel | None = None,
        balance: bool = True,
        refine_rounds: int = DEFAULT_REFINE_ROUNDS,
        drop_last: bool = True,
        prefetch: bool = True,
        prepare: Callable[[BalancedStep], Any] | None = None,
    ) -> None:
        """`prepare(step)`, if given, runs right after planning (on the background thread with
        `prefetch`) and its result rides along as step.prepared: the trainer builds the step's
        host batches there, off the critical path."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        if global_batch_size < world_size:
            raise ValueError(f"global batch {global_batch_size} < world size {world_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.world_size, self.rank = world_size, rank
        self.cost_model = cost_model or CostModel()
        self.balance = balance
        self.refine_rounds = refine_rounds
        self._batches = EpochBatchSampler(
            len(self.lengths),
            global_batch_size,
            seed=seed,
            shuffle=True,
            drop_last=drop_last,
            min_last_batch=world_size,  # every rank needs a sample
        )
        self.prepare = prepare
        self._pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
        self._state = self._batches.state_dict()  # as of the last step handed out
        self._lookahead = None  # the running iteration's next step (peek_next)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    @property
    def position(self) -> int:
        """Steps of the current epoch already handed out."""
        return self._state["position"]

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._batches.load_state_dict(state)
        self._state = self._batches.state_dict()

    def set_cost_model(self, model: CostModel) -> None:
        """Cost with `model` from the step after the next (the next one is already planned).
        Every rank must switch at the same step (fit the model from all-gathered step times),
        so that partitions stay identical across ranks."""
        self.cost_model = model

    def plan(self, global_rows: np.ndarray, cost_model: CostModel | None = None) -> BalancedStep:
        """Partition one global batch (pure: the same rows and model give the same plan on
        every rank)."""
        cost_model = cost_model or self.cost_model
        costs = cost_model(self.lengths[global_rows])
        if self.world_size == 1:
            positions = [np.arange(len(global_rows))]
        elif self.balance:
            positions = partition(costs, self.world_size, self.refine_rounds).parts
        else:
            positions = split_evenly(len(global_rows), self.world_size)
        # Longest first inside each part: the attention kernels launch a sequence's tiles in
        # batch order, so the longest sequence's long causal rows start first instead of
        # trailing behind the short ones (the math is the same; only the schedule changes).
        parts = [global_rows[p[np.argsort(-costs[p], kind="stable")]] for p in positions]
        predicted = np.array([costs[p].sum() for p in positions])
        mean = predicted.mean()
        fair_share = costs.sum() / self.world_size
        bound = lower_bound(costs, self.world_size) / fair_share if fair_share > 0 else 1.0
        stats = BalanceStats(
            predicted=predicted,
            imbalance=float(predicted.max() / mean) if mean > 0 else 1.0,
            bound=float(bound),
            oversized=bool(costs.size and costs.max() > fair_share),
        )
        step = BalancedStep(parts[self.rank], global_rows, parts, stats, cost_model)
        if self.prepare is not None:
            step.prepared = self.prepare(step)
        return step

    def __iter__(self) -> Iterator[BalancedStep]:
        """The remaining steps of the current epoch. Step k+1 is planned in the background while
        the caller works on step k; state_dict() always describes the steps handed out."""
        # Planning runs a batch ahead: rewind the inner sampler to the steps handed out, so a
        # loop that broke off and iterates again resumes right after its last step.
        self._batches.load_state_dict(self._state)
        batches = iter(self._batches)
        pending = self._plan_next(batches)
        try:
            while pending is not None:
                planned, state = pending
                pending = self._lookahead = self._plan_next(batches)
                self._state = state
                yield planned.result() if isinstance(planned, Future) else planned
            self._state = self._batches.state_dict()  # the epoch rolled over
        finally:  # also when the loop broke off: peek_next must not offer a step not handed out
            self._lookahead = None

    def peek_next(self) -> BalancedStep | None:
        """The step the running iteration hands out next, if it is in this epoch (waits for
        its planning); the iteration still yields it as usual."""
        if self._lookahead is None:
            return None
        planned, _ = self._lookahead
        return planned.result() if isinstance(planned, Future) else planned

    def _plan_next(self, batches: Iterator[np.ndarray]):
        rows = next(batches, None)
        if rows is None:
            return None
        state = self._batches.state_dict()
        model = self.cost_model  # snapshot now: the worker must not see a later switch
        if self._pool is None:
            return self.plan(rows, model), state
        return self._pool.submit(self.plan, rows, model), state

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def split_microbatches(
    rows: np.ndarray, costs: np.ndarray, num_micro: int, refine_rounds: int = DEFAULT_REFINE_ROUNDS
) -> list[np.ndarray]:
    """Balance one rank's samples over `num_micro` gradient-accumulation micro-batches, each
    longest first (as the steps' parts)."""
    parts = partition(costs, num_micro, refine_rounds).parts
    return [rows[p[np.argsort(-costs[p], kind="stable")]] for p in parts]
