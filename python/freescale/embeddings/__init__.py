"""Model-parallel embedding tables (DESIGN §7): row-wise sharding over the ranks, lookups and
gradients moved by all-to-all, sparse row optimizers on the owners."""

from freescale.embeddings.exchange import (
    CopyEngineExchange,
    Exchange,
    LocalExchange,
    ProcessGroupExchange,
)
from freescale.embeddings.sharded import ShardedEmbedding, SparseOptimizerConfig
from freescale.embeddings.sharding import LookupPlan, RowWiseSharding, plan_lookup

__all__ = [
    "CopyEngineExchange",
    "Exchange",
    "LocalExchange",
    "LookupPlan",
    "ProcessGroupExchange",
    "RowWiseSharding",
    "ShardedEmbedding",
    "SparseOptimizerConfig",
    "plan_lookup",
]
