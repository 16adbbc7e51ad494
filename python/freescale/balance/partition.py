"""Balanced partitions of a global batch across ranks (DESIGN §8), backed by native
capacity-LPT (csrc/balance/partitioner.cpp)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freescale_ext import _C

DEFAULT_REFINE_ROUNDS = 8


@dataclass
class PartitionResult:
    parts: list[np.ndarray]  # sample indices of each part, ascending
    loads: np.ndarray  # float64 [p] summed cost per part
    swaps: int  # improving swaps made by the refinement

    @property
    def imbalance(self) -> float:
        """max / mean part cost (1.0 is perfect)."""
        mean = self.loads.mean() if self.loads.size else 0.0
        return float(self.loads.max() / mean) if mean > 0 else 1.0


def lower_bound(costs: np.ndarray, num_parts: int) -> float:
    """No partition's largest part costs less than this: the mean part cost, and the largest
    sample plus the n // p - 1 cheapest others (its part holds at least n // p samples)."""
    costs = np.asarray(costs, dtype=np.float64)
    if costs.size == 0:
        return 0.0
    per_part = costs.size // num_parts
    companions = np.sort(costs)[: max(per_part - 1, 0)].sum() if per_part > 1 else 0.0
    return float(max(costs.sum() / num_parts, costs.max() + companions))


def partition(
    costs: np.ndarray, num_parts: int, refine_rounds: int = DEFAULT_REFINE_ROUNDS
) -> PartitionResult:
    """Split samples into `num_parts` parts of len(costs) // num_parts samples each (the first
    len(costs) % num_parts parts take one more), keeping the most expensive part as cheap as
    possible. Deterministic: every rank that passes the same costs gets the same partition."""
    costs = np.ascontiguousarray(costs, dtype=np.float64)
    if costs.ndim != 1:
        raise ValueError(f"costs must be 1-D, got shape {costs.shape}")
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    grouped, loads, counts, swaps = _C.capacity_lpt(costs, int(num_parts), int(refine_rounds))
    parts = np.split(grouped, np.cumsum(counts)[:-1])
    return PartitionResult(parts=parts, loads=loads, swaps=int(swaps))
