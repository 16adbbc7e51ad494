"""SASRec baseline (Kang & McAuley 2018) as configured by the HSTU repo's sampled-softmax runs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from freescale.models.context import SequenceContext
from freescale.models.jagged import jagged_to_padded, padded_to_jagged
from freescale_ext.compressed import PaddedLayout


class SASRecBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_hidden: int, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, h: torch.Tensor, blocked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """blocked: [L, L] or [B * heads, L, L] bool, True where row i may not see column j."""
        q = F.layer_norm(h, (self.dim,), eps=1e-8)
        attended, _ = self.attention(q, h, h, attn_mask=blocked, need_weights=False)
        z = F.layer_norm(q + attended, (self.dim,), eps=1e-8)
        return (self.ffn(z) + z) * valid

    # The same block split around its attention, on jagged rows [T, dim] (PerSRec's cached
    # serving runs the attention itself, against cached token keys and values).
    @property
    def num_heads(self) -> int:
        return self.attention.num_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.attention.num_heads

    def project(self, h: torch.Tensor):
        """(normalized rows, q, k, v), q/k/v as [T, heads, head_dim]; as nn.MultiheadAttention
        computes them (queries from the normalized rows, keys and values from the raw rows)."""
        qn = F.layer_norm(h, (self.dim,), eps=1e-8)
        w, b = self.attention.in_proj_weight, self.attention.in_proj_bias
        d, shape = self.dim, (h.shape[0], self.num_heads, self.head_dim)
        q = F.linear(qn, w[:d], b[:d]).view(shape)
        k = F.linear(h, w[d : 2 * d], b[d : 2 * d]).view(shape)
        v = F.linear(h, w[2 * d :], b[2 * d :]).view(shape)
        return qn, q, k, v

    def finish(self, qn: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The block's output from its attention [T, heads, head_dim] (inference: no dropout)."""
        attended = self.attention.out_proj(attn.reshape(attn.shape[0], self.dim))
        z = F.layer_norm(qn + attended, (self.dim,), eps=1e-8)
        return self.ffn(z) + z


def compressed_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    region: torch.Tensor,
    is_token: torch.Tensor,
    *,
    max_len: int | None = None,
) -> torch.Tensor:
    """Softmax attention [T, H, d] over jagged sequences under the PerSRec mask (DESIGN §5):
    row i sees j <= i with is_token_j or region_j == region_i. Padded per sequence to
    `max_len` (at least the longest sequence), read from the offsets when not given: one host
    sync."""
    layout = PaddedLayout(seq_offsets, region, is_token, q.shape[0], width=max_len)
    qp, kp, vp = (layout.pad(x).transpose(1, 2) for x in (q, k, v))  # [B, H, L, d]
    # Padding rows see nothing under the mask; their diagonal keeps their softmax finite.
    sees = layout.mask | torch.eye(layout.width, dtype=torch.bool, device=q.device)
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=sees[:, None])
    return layout.unpad(out.transpose(1, 2))


class SASRecEncoder(nn.Module):
    def __init__(
        self, dim: int, num_blocks: int, num_heads: int, ffn_hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SASRecBlock(dim, num_heads, ffn_hidden, dropout) for _ in range(num_blocks)
        )
        for name, param in self.named_parameters():
            if param.dim() >= 2:
                nn.init.xavier_normal_(param)
            elif name.endswith("in_proj_bias"):
                nn.init.zeros_(param)

    def forward(self, x: torch.Tensor, ctx: SequenceContext) -> torch.Tensor:
        b, n = ctx.batch_size, ctx.max_len
        h = jagged_to_padded(x, ctx.batch_index, ctx.position, b, n)
        valid = jagged_to_padded(torch.ones_like(x[:, :1]), ctx.batch_index, ctx.position, b, n)
        # Sequences are left-aligned, so a causal mask alone keeps padding out of real rows.
        blocked = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        if ctx.region is not None:  # PerSRec layout: the compressed mask of DESIGN §5
            region = jagged_to_padded(ctx.region.long() + 1, ctx.batch_index, ctx.position, b, n)
            token = jagged_to_padded(ctx.is_token, ctx.batch_index, ctx.position, b, n)
            sees = token[:, None, :] | (region[:, :, None] == region[:, None, :])
            # Padding (region 0 after the shift) sees padding: no row is fully masked (NaN).
            blocked = blocked[None] | ~sees
            heads = self.blocks[0].attention.num_heads
            blocked = blocked.repeat_interleave(heads, dim=0)
        h = h * valid
        for block in self.blocks:
            h = block(h, blocked, valid)
        return padded_to_jagged(h, ctx.batch_index, ctx.position)
