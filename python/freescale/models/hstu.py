"""HSTU encoders built on the jagged `hstu_attention` op (DESIGN §4).

Two layer variants:
- `HSTULayer`, the research layer behind the published ML-1M/ML-20M numbers: no-affine
  LayerNorms, SiLU on U, V, Q and K, a fused relative position (+ time) bias, alpha = 1.
- `STULayer`, the production variant: learned LayerNorms, SiLU on U only, alpha = 1/sqrt(d_qk).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import freescale_ext
from freescale.models.context import SequenceContext
from freescale_ext.reference import NUM_TS_BUCKETS


class _HSTUBase(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_qk: int,
        dim_v: int,
        max_seq_len: int,
        dropout: float,
        pos_bias: bool,
        time_bias: bool,
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.dim_qk, self.dim_v = dim, num_heads, dim_qk, dim_v
        self.max_seq_len = max_seq_len
        self.out = nn.Linear(num_heads * dim_v, dim)
        nn.init.xavier_uniform_(self.out.weight)
        self.dropout = nn.Dropout(dropout)
        self.pos_weight = self._bias_table(2 * max_seq_len - 1) if pos_bias else None
        self.ts_weight = self._bias_table(NUM_TS_BUCKETS + 1) if time_bias else None

    @staticmethod
    def _bias_table(size: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(size).normal_(mean=0.0, std=0.02))

    # A layer is project -> attention -> finish; cached serving (freescale.models.persrec)
    # runs the same three steps with the attention's keys and values extended by a cache.
    def project(self, x: torch.Tensor):
        """u [T, H*dv], v [T, H, dv], q, k [T, H, dqk] of the rows x."""
        raise NotImplementedError

    def finish(self, x: torch.Tensor, u: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The layer's output rows from its input rows, u and the attention output."""
        raise NotImplementedError

    @property
    def alpha(self) -> float:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, ctx: SequenceContext) -> torch.Tensor:
        u, v, q, k = self.project(x)
        return self.finish(x, u, self._attention(q, k, v, ctx, alpha=self.alpha))

    def _split(self, uvqk: torch.Tensor):
        h, dv, dqk = self.num_heads, self.dim_v, self.dim_qk
        u, v, q, k = torch.split(uvqk, [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        t = uvqk.shape[0]
        return u, v.view(t, h, dv), q.view(t, h, dqk), k.view(t, h, dqk)

    def _attention(self, q, k, v, ctx: SequenceContext, alpha: float) -> torch.Tensor:
        if ctx.region is not None:  # a token-compressed layout: its own mask, no relative bias
            out = freescale_ext.compressed_attention(
                q,
                k,
                v,
                ctx.seq_offsets,
                ctx.region,
                ctx.is_token,
                self.max_seq_len,
                alpha=alpha,
                validate=False,
            )
            return out.reshape(q.shape[0], self.num_heads * self.dim_v)
        use_time = self.ts_weight is not None and ctx.timestamps is not None
        out = freescale_ext.hstu_attention(
            q,
            k,
            v,
            ctx.seq_offsets,
            self.max_seq_len,
            alpha=alpha,
            pos_weight=self.pos_weight,
            ts_weight=self.ts_weight if use_time else None,
            timestamps=ctx.timestamps if use_time else None,
            validate=False,  # the batch was validated on the host when it was built
        )
        return out.reshape(q.shape[0], self.num_heads * self.dim_v)


class HSTULayer(_HSTUBase):
    """x + W_o(dropout(U * LN(attn(Q, K, V)))), [U, V, Q, K] = SiLU(LN(x) W_uvqk)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        width = 2 * self.num_heads * (self.dim_v + self.dim_qk)
        self.uvqk = nn.Parameter(torch.empty(self.dim, width).normal_(mean=0.0, std=0.02))

    @property
    def alpha(self) -> float:
        return 1.0

    def project(self, x: torch.Tensor):
        normed = F.layer_norm(x, (self.dim,), eps=1e-6)
        return self._split(F.silu(normed @ self.uvqk))

    def finish(self, x: torch.Tensor, u: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        y = u * F.layer_norm(attn, (attn.shape[-1],), eps=1e-6)
        return x + self.out(self.dropout(y))


class STULayer(_HSTUBase):
    """Production variant: learned norms, SiLU on U only, alpha = 1/sqrt(d_qk)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        width = 2 * self.num_heads * (self.dim_v + self.dim_qk)
        self.input_norm = nn.LayerNorm(self.dim, eps=1e-6)
        self.uvqk = nn.Linear(self.dim, width)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        nn.init.zeros_(self.uvqk.bias)
        self.attn_norm = nn.LayerNorm(self.num_heads * self.dim_v, eps=1e-6)

    @property
    def alpha(self) -> float:
        return 1.0 / math.sqrt(self.dim_qk)

    def project(self, x: torch.Tensor):
        return self._split(self.uvqk(self.input_norm(x)))

    def finish(self, x: torch.Tensor, u: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.dropout(F.silu(u) * self.attn_norm(attn)))


class HSTUEncoder(nn.Module):
    def __init__(
        self,
        dim: int,
        num_blocks: int,
        num_heads: int,
        dim_qk: int,
        dim_v: int,
        max_seq_len: int,
        dropout: float,
        variant: str = "research",
        pos_bias: bool = True,
        time_bias: bool = False,
    ) -> None:
        super().__init__()
        layer_cls = {"research": HSTULayer, "stu": STULayer}[variant]
        self.layers = nn.ModuleList(
            layer_cls(dim, num_heads, dim_qk, dim_v, max_seq_len, dropout, pos_bias, time_bias)
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, ctx: SequenceContext) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, ctx)
        return x
