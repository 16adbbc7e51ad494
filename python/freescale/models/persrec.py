"""PerSRec: long histories compressed into learnable tokens (DESIGN §5), for HSTU, STU and
SASRec encoders.

A user's rows are laid out [segment | token group | segment | token group | ... | recent items]:
every `segment_len` history items (all of them with segment_len = 0) are followed by the K
shared learnable tokens, which take the segment's region id; recent items get a region of
their own. `compressed_attention` then lets history rows see their segment and the earlier
tokens, token rows their segment and all earlier tokens, and recent rows the tokens and the
earlier recent rows, never raw history. So a user's past is summarized, per layer, by the keys
and values of the token rows alone: `extend` appends rows to a user against those cached keys
and values only. Compressing a new segment (`compress=True`) grows the cache without touching
old segments; serving recent items (`compress=False`) reads it. Both equal the full masked pass
over the whole layout to rounding (one fixed normalizer N everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import freescale_ext
from freescale.data.csr import offsets_from_lengths
from freescale.data.persrec_batch import PerSRecShape
from freescale.data.persrec_layout import PerSRecLayout, build_layout, build_sequence_layout
from freescale.models.context import SequenceContext
from freescale.models.recommender import ModelConfig, SequentialRecommender
from freescale.models.sasrec import compressed_softmax_attention


@dataclass
class TokenCache:
    """Per layer, the keys and values of every cached user's token rows (jagged by offsets),
    and where each user's layout continues."""

    keys: list[torch.Tensor]  # per layer [C, H, d_qk]
    values: list[torch.Tensor]  # per layer [C, H, d_v]
    offsets: np.ndarray  # int64 [U+1] token rows per user
    next_position: np.ndarray  # int64 [U]
    next_region: np.ndarray  # int64 [U]

    @property
    def num_users(self) -> int:
        return self.offsets.size - 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def save(self, path) -> None:
        torch.save(
            {
                "keys": [k.cpu() for k in self.keys],
                "values": [v.cpu() for v in self.values],
                "offsets": torch.from_numpy(self.offsets),
                "next_position": torch.from_numpy(self.next_position),
                "next_region": torch.from_numpy(self.next_region),
            },
            path,
        )

    @classmethod
    def load(cls, path, device: torch.device | str = "cpu") -> TokenCache:
        raw = torch.load(path, weights_only=True)
        return cls(
            [k.to(device) for k in raw["keys"]],
            [v.to(device) for v in raw["values"]],
            raw["offsets"].numpy(),
            raw["next_position"].numpy(),
            raw["next_region"].numpy(),
        )


__all__ = [
    "PerSRec",
    "PerSRecLayout",
    "TokenCache",
    "build_layout",
    "build_recommender",
    "build_sequence_layout",
    "persrec_shape",
]


def persrec_shape(config: ModelConfig) -> PerSRecShape:
    """max_len items per user: the last persrec_recent stay, the older ones are compressed."""
    recent = min(config.persrec_recent, config.max_len)
    return PerSRecShape(
        config.max_len - recent, recent, config.persrec_tokens, config.persrec_segment
    )


def build_recommender(
    num_items: int, config: ModelConfig, items: nn.Module | None = None
) -> nn.Module:
    """The model `config` describes: a SequentialRecommender, or PerSRec around one; `items`
    replaces its item table (a sharded one)."""
    if config.persrec_tokens <= 0:
        return SequentialRecommender(num_items, config, items)
    if config.time_bias:
        raise ValueError("PerSRec layouts have no relative time bias (compressed_attention)")
    # The encoder sees rows, tokens included: its positions and normalizer N cover them all.
    rows = replace(config, max_len=persrec_shape(config).max_rows(), pos_bias=False)
    model = PerSRec(
        SequentialRecommender(num_items, rows, items),
        config.persrec_tokens,
        config.persrec_segment,
    )
    model.config = config
    return model


class PerSRec(nn.Module):
    """A SequentialRecommender with K shared learnable compression tokens (training, the full
    pass and cached serving: HSTU, STU, SASRec)."""

    def __init__(self, base: SequentialRecommender, num_tokens: int, segment_len: int = 0):
        super().__init__()
        if base.config.kind not in ("hstu", "stu", "sasrec"):
            raise ValueError(f"PerSRec wraps HSTU, STU or SASRec models, got {base.config.kind!r}")
        if num_tokens < 1 or segment_len < 0:
            raise ValueError(f"need num_tokens >= 1, segment_len >= 0: {num_tokens}, {segment_len}")
        if base.config.kind != "sasrec" and (base.config.pos_bias or base.config.time_bias):
            raise ValueError(
                "compressed layouts have no relative bias: build the HSTU model with "
                "pos_bias=False and time_bias=False (build_recommender does)"
            )
        self.base = base
        self.config = base.config  # build_recommender sets the item-window config instead
        self.num_tokens = num_tokens
        self.segment_len = segment_len
        self.tokens = nn.Parameter(torch.empty(num_tokens, base.config.dim))
        nn.init.trunc_normal_(self.tokens, std=0.02, a=-0.04, b=0.04)

    @property
    def layers(self) -> list:
        """The encoder's layers split around their attention, for cached serving."""
        if self.base.config.kind == "sasrec":
            return [_SASRecServing(block) for block in self.base.encoder.blocks]
        return [_HstuServing(layer) for layer in self.base.encoder.layers]

    @property
    def items(self):
        return self.base.items

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _rows(self, item_ids: torch.Tensor, layout: PerSRecLayout) -> torch.Tensor:
        device = item_ids.device
        item_index = torch.from_numpy(layout.item_index).to(device)
        token_index = torch.from_numpy(layout.token_index).to(device)
        items = self.base.items(item_ids[item_index.clamp(min=0)])
        tokens = self.tokens[token_index.clamp(min=0)].to(items.dtype)
        rows = torch.where((token_index >= 0)[:, None], tokens, items)
        position = torch.from_numpy(layout.position).to(device)
        if int(layout.position.max(initial=0)) >= self.base.config.max_len:
            raise ValueError(
                f"layout reaches position {int(layout.position.max())}, the model has "
                f"max_len={self.base.config.max_len} rows (history, tokens and recent items of "
                "a user, over all extend() calls, must fit)"
            )
        return self.base.inputs(rows, position)

    def encode(self, item_ids: torch.Tensor, layout: PerSRecLayout) -> torch.Tensor:
        """The full masked pass: [T, D] L2-normalized outputs of every row of the layout."""
        device = item_ids.device
        offsets = torch.from_numpy(layout.seq_offsets.astype(np.int32)).to(device)
        ctx = SequenceContext.build(
            offsets,
            len(layout.region),
            layout.max_len,
            region=torch.from_numpy(layout.region).to(device),
            is_token=torch.from_numpy(layout.is_token).to(device),
        )
        x = self.base.encoder(self._rows(item_ids, layout), ctx)
        return F.normalize(x.float(), dim=-1, eps=1e-6)

    def empty_cache(self, num_users: int, device: torch.device | str = "cpu") -> TokenCache:
        layer = self.layers[0]
        h, dqk, dv = layer.num_heads, layer.dim_qk, layer.dim_v
        return TokenCache(
            [torch.zeros(0, h, dqk, device=device) for _ in self.layers],
            [torch.zeros(0, h, dv, device=device) for _ in self.layers],
            np.zeros(num_users + 1, np.int64),
            np.zeros(num_users, np.int64),
            np.zeros(num_users, np.int64),
        )

    def extend(
        self,
        cache: TokenCache,
        item_ids: torch.Tensor,
        item_counts: np.ndarray,
        *,
        compress: bool,
    ) -> tuple[torch.Tensor, TokenCache]:
        """Appends item_counts[u] items (packed per user) to every cached user.

        compress=True: history segments with their token groups; the returned cache adds the
        new token rows (old segments are not recomputed). compress=False: recent items, served
        against the cache, which is returned unchanged. Returns the new rows' L2-normalized
        outputs ([T_new, D], layout order) and the cache.

        Each compress call starts new segments, so calls that add whole segments (multiples of
        segment_len) reproduce the layout training used; with segment_len = 0 every call adds
        one token group. A user's rows over all calls must fit the model's max_len.
        """
        if len(item_counts) != cache.num_users:
            raise ValueError(f"{len(item_counts)} item counts for {cache.num_users} cached users")
        layout = build_layout(
            item_counts,
            self.num_tokens,
            self.segment_len,
            compress=compress,
            start_position=cache.next_position,
            start_region=cache.next_region,
        )
        device = item_ids.device
        joint = _JointLayout(cache.offsets, layout.seq_offsets, device)
        region = torch.cat(
            [torch.full((joint.cached,), -1, dtype=torch.int32), torch.from_numpy(layout.region)]
        )[joint.order_index].to(device)
        is_token = torch.cat(
            [torch.ones(joint.cached, dtype=torch.bool), torch.from_numpy(layout.is_token)]
        )[joint.order_index].to(device)
        new_token_rows = torch.from_numpy(np.flatnonzero(layout.is_token)).to(device)

        x = self._rows(item_ids, layout)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            state, q, k, v = layer.project(x)
            q_all = joint.merge(q.new_zeros((joint.cached, *q.shape[1:])), q)
            k_all = joint.merge(cache.keys[i].to(k.dtype), k)
            v_all = joint.merge(cache.values[i].to(v.dtype), v)
            attn = layer.attend(q_all, k_all, v_all, joint.offsets, region, is_token)
            new_keys.append(k[new_token_rows])
            new_values.append(v[new_token_rows])
            x = layer.finish(x, state, attn[joint.new_rows])
        out = F.normalize(x.float(), dim=-1, eps=1e-6)
        if not compress:
            return out, cache
        token_counts = np.bincount(
            np.repeat(np.arange(len(item_counts)), np.diff(layout.seq_offsets)),
            weights=layout.is_token,
            minlength=len(item_counts),
        ).astype(np.int64)
        grown = _JointLayout(cache.offsets, offsets_from_lengths(token_counts), device)
        return out, TokenCache(
            [grown.merge(old, new) for old, new in zip(cache.keys, new_keys, strict=True)],
            [grown.merge(old, new) for old, new in zip(cache.values, new_values, strict=True)],
            grown.offsets.cpu().numpy().astype(np.int64),
            layout.next_position,
            layout.next_region,
        )


class _HstuServing:
    """An HSTU/STU layer split around its attention: the compressed SiLU attention op."""

    def __init__(self, layer) -> None:
        self.layer = self.module = layer
        self.num_heads, self.dim_qk, self.dim_v = layer.num_heads, layer.dim_qk, layer.dim_v

    def project(self, x: torch.Tensor):
        u, v, q, k = self.layer.project(x)
        return u, q, k, v

    def attend(self, q, k, v, seq_offsets, region, is_token) -> torch.Tensor:
        layer = self.layer
        return freescale_ext.compressed_attention(
            q,
            k,
            v,
            seq_offsets,
            region,
            is_token,
            layer.max_seq_len,
            alpha=layer.alpha,
            validate=False,
        )

    def finish(self, x: torch.Tensor, u: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return self.layer.finish(x, u, attn.reshape(x.shape[0], -1))


class _SASRecServing:
    """A SASRec block split around its attention: softmax under the compressed mask."""

    def __init__(self, block) -> None:
        self.block = self.module = block
        self.num_heads = block.num_heads
        self.dim_qk = self.dim_v = block.head_dim

    def project(self, x: torch.Tensor):
        return self.block.project(x)

    def attend(self, q, k, v, seq_offsets, region, is_token) -> torch.Tensor:
        return compressed_softmax_attention(q, k, v, seq_offsets, region, is_token)

    def finish(self, x: torch.Tensor, qn: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return self.block.finish(qn, attn)


class _JointLayout:
    """Per user [cached rows | new rows], from the two jagged layouts' offsets."""

    def __init__(self, cached_offsets: np.ndarray, new_offsets: np.ndarray, device) -> None:
        cached_lens, new_lens = np.diff(cached_offsets), np.diff(new_offsets)
        self.cached = int(cached_offsets[-1])
        joint = offsets_from_lengths(cached_lens + new_lens)
        user_c = np.repeat(np.arange(cached_lens.size), cached_lens)
        user_n = np.repeat(np.arange(new_lens.size), new_lens)
        cached_rows = joint[user_c] + (np.arange(self.cached) - cached_offsets[user_c])
        new_rows = (
            joint[user_n] + cached_lens[user_n] + (np.arange(len(user_n)) - new_offsets[user_n])
        )
        # order_index[joint row] = row of cat([cached, new])
        order = np.empty(joint[-1], np.int64)
        order[cached_rows] = np.arange(self.cached)
        order[new_rows] = self.cached + np.arange(len(new_rows))
        self.order_index = torch.from_numpy(order)
        self.new_rows = torch.from_numpy(new_rows).to(device)
        self.offsets = torch.from_numpy(joint.astype(np.int32)).to(device)
        self._order = self.order_index.to(device)

    def merge(self, cached: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.cat([cached, new])[self._order]
