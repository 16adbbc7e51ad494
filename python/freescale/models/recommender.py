"""A sequential recommender: item embeddings -> encoder (HSTU, STU or SASRec) -> L2-normalized
user embeddings scored against L2-normalized item embeddings (DESIGN §9)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from freescale.models.context import SequenceContext
from freescale.models.embeddings import InputPreprocessor, ItemEmbedding
from freescale.models.hstu import HSTUEncoder
from freescale.models.sasrec import SASRecEncoder

MODEL_KINDS = ("hstu", "stu", "sasrec")


@dataclass
class ModelConfig:
    kind: str = "hstu"  # hstu (research layer) | stu (production layer) | sasrec
    dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dim_qk: int = 64  # HSTU head dims
    dim_v: int = 64
    ffn_hidden: int = 64  # SASRec feed-forward width
    dropout: float = 0.2
    max_len: int = 200  # longest input sequence; also HSTU's attention normalizer N
    pos_bias: bool = True  # HSTU relative position bias
    time_bias: bool = False  # HSTU relative time bias (needs timestamps)
    # PerSRec (DESIGN §5): > 0 compresses the history before the last `persrec_recent` items
    # into groups of this many learnable tokens
    persrec_tokens: int = 0
    persrec_segment: int = 0  # a token group every this many history items (0: one group)
    persrec_recent: int = 50  # items kept uncompressed

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.persrec_tokens < 0 or self.persrec_segment < 0:
            raise ValueError("persrec_tokens and persrec_segment must be >= 0")
        if self.persrec_tokens > 0 and not 1 <= self.persrec_recent <= self.max_len:
            # The query is the last recent item: a token row as last row has no training target.
            raise ValueError(
                f"persrec_recent must be in 1..max_len={self.max_len}, got {self.persrec_recent}"
            )


class SequentialRecommender(nn.Module):
    def __init__(self, num_items: int, config: ModelConfig, items: nn.Module | None = None) -> None:
        """`items`: the item table (default: a new ItemEmbedding); a sharded one is passed in
        so that no rank ever allocates the whole table."""
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.items = items if items is not None else ItemEmbedding(num_items, config.dim)
        self.inputs = InputPreprocessor(config.max_len, config.dim, config.dropout)
        if config.kind == "sasrec":
            self.encoder: nn.Module = SASRecEncoder(
                config.dim, config.num_blocks, config.num_heads, config.ffn_hidden, config.dropout
            )
        else:
            self.encoder = HSTUEncoder(
                config.dim,
                config.num_blocks,
                config.num_heads,
                config.dim_qk,
                config.dim_v,
                max_seq_len=config.max_len,
                dropout=config.dropout,
                variant="research" if config.kind == "hstu" else "stu",
                pos_bias=config.pos_bias,
                time_bias=config.time_bias,
            )

    def encode(
        self,
        input_ids: torch.Tensor,
        seq_offsets: torch.Tensor,
        max_len: int,
        timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[T] item ids of jagged sequences -> [T, D] L2-normalized user embeddings; row t is
        the user state after consuming tokens up to t (the query for the next item)."""
        if max_len > self.config.max_len:
            raise ValueError(f"batch has a sequence of {max_len} > max_len={self.config.max_len}")
        ctx = SequenceContext.build(seq_offsets, input_ids.numel(), max_len, timestamps)
        x = self.inputs(self.items(input_ids), ctx.position)
        return F.normalize(self.encoder(x, ctx).float(), dim=-1, eps=1e-6)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
