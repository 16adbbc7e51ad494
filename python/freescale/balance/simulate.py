"""Bubble simulator (DESIGN §8): replay a length distribution through the cost model for many
world sizes and predict the fraction of rank-time spent waiting for the slowest rank, with and
without balancing.

Per step, every rank's compute time is its predicted cost; the step takes as long as the
slowest rank, so the bubble fraction is 1 - mean(cost) / max(cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freescale.balance.cost_model import CostModel
from freescale.balance.partition import DEFAULT_REFINE_ROUNDS, partition
from freescale.balance.sampler import split_evenly


@dataclass
class SimulationRow:
    world_size: int
    per_rank_batch: int
    steps: int
    bubble_unbalanced: float  # mean over steps of 1 - mean/max
    bubble_balanced: float
    imbalance_unbalanced: float  # mean over steps of max/mean
    imbalance_balanced: float
    oversized_steps: int  # steps where one sample exceeds a rank's fair share

    @property
    def bubble_reduction(self) -> float:
        if self.bubble_unbalanced <= 0:
            return 0.0
        return 1.0 - self.bubble_balanced / self.bubble_unbalanced


def _bubble(loads: np.ndarray) -> tuple[float, float]:
    top = loads.max()
    return (1.0 - loads.mean() / top, top / loads.mean()) if top > 0 else (0.0, 1.0)


def simulate(
    lengths: np.ndarray,
    world_sizes: list[int],
    *,
    per_rank_batch: int = 32,
    steps: int = 20,
    cost_model: CostModel | None = None,
    refine_rounds: int = DEFAULT_REFINE_ROUNDS,
    seed: int = 0,
) -> list[SimulationRow]:
    """Draws global batches (world * per_rank_batch samples) from `lengths` with replacement."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("no lengths to simulate")
    model = cost_model or CostModel()
    rows = []
    for world in world_sizes:
        rng = np.random.default_rng([seed, world])
        acc = np.zeros(4)
        oversized = 0
        for _ in range(steps):
            costs = model(rng.choice(lengths, size=world * per_rank_batch))
            plain = np.array([costs[p].sum() for p in split_evenly(costs.size, world)])
            balanced = partition(costs, world, refine_rounds).loads
            acc += (*_bubble(plain), *_bubble(balanced))
            oversized += int(costs.max() > costs.sum() / world)
        b_plain, i_plain, b_bal, i_bal = acc / steps
        rows.append(
            SimulationRow(world, per_rank_batch, steps, b_plain, b_bal, i_plain, i_bal, oversized)
        )
    return rows


def format_table(rows: list[SimulationRow]) -> str:
    lines = [
        "| ranks | per-rank batch | bubble, unbalanced | bubble, balanced | reduction | "
        "max/mean unbalanced | max/mean balanced | steps with an oversized sample |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.world_size} | {r.per_rank_batch} | {r.bubble_unbalanced:.1%} | "
            f"{r.bubble_balanced:.2%} | {r.bubble_reduction:.1%} | {r.imbalance_unbalanced:.3f} | "
            f"{r.imbalance_balanced:.4f} | {r.oversized_steps}/{r.steps} |"
        )
    return "\n".join(lines)
