"""Batch balancing across ranks (DESIGN §8): cost model, native capacity-LPT partitioner,
balanced distributed sampler, bubble simulator."""

from freescale.balance.cost_model import CostModel, OnlineCostFit
from freescale.balance.partition import PartitionResult, lower_bound, partition
from freescale.balance.sampler import (
    BalancedBatchSampler,
    BalancedStep,
    BalanceStats,
    split_evenly,
    split_microbatches,
)
from freescale.balance.simulate import SimulationRow, format_table, simulate

__all__ = [
    "BalanceStats",
    "BalancedBatchSampler",
    "BalancedStep",
    "CostModel",
    "OnlineCostFit",
    "PartitionResult",
    "SimulationRow",
    "format_table",
    "lower_bound",
    "partition",
    "simulate",
    "split_evenly",
    "split_microbatches",
]
