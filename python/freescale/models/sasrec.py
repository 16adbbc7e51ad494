"""SASRec baseline (Kang & McAuley 2018) as configured by the HSTU repo's sampled-softmax runs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from freescale.models.context import SequenceContext
from freescale.models.jagged import jagged_to_padded, padded_to_jagged


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
