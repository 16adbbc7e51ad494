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
from freescale.models.persrec_plan import Plan, encode_plan, extend_plan, joint_order, unpack
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

    def _rows(self, item_ids: torch.Tensor, index: dict) -> torch.Tensor:
        """Input rows: the items' embeddings, or the shared tokens at token rows."""
        token_index = index["token_index"]
        items = self.base.items(item_ids[index["item_index"].clamp(min=0)])
        tokens = self.tokens[token_index.clamp(min=0)].to(items.dtype)
        rows = torch.where((token_index >= 0)[:, None], tokens, items)
        return self.base.inputs(rows, index["position"])

    def check_positions(self, layout: PerSRecLayout) -> None:
        """Raises if the layout's rows reach past the model's positions (host arrays only)."""
        if int(layout.position.max(initial=0)) >= self.base.config.max_len:
            raise ValueError(
                f"layout reaches position {int(layout.position.max())}, the model has "
                f"max_len={self.base.config.max_len} rows (history, tokens and recent items of "
                "a user, over all extend() calls, must fit)"
            )

    def encode(self, item_ids: torch.Tensor, layout: PerSRecLayout) -> torch.Tensor:
        """The full masked pass: [T, D] L2-normalized outputs of every row of the layout."""
        plan = self.plan_encode(layout)
        buffer = plan.device_buffer(item_ids.device)
        return self.encode_planned(buffer, item_ids, **plan_args(plan))

    def plan_encode(self, layout: PerSRecLayout) -> Plan:
        """The host half of `encode`: the pass's plan."""
        self.check_positions(layout)
        return encode_plan(layout)

    def encode_planned(
        self, buffer: torch.Tensor, item_ids: torch.Tensor, *, names, sizes, max_len, last=False
    ) -> torch.Tensor:
        """`encode` over a plan's device buffer (no host reads: capturable); `last` keeps
        each user's last row only."""
        index = unpack(buffer, names, sizes)
        offsets = index["seq_offsets"].int()
        ctx = SequenceContext.build(
            offsets,
            sizes[names.index("region")],
            max_len,
            region=index["region"].int(),
            is_token=index["is_token"].bool(),
        )
        x = self.base.encoder(self._rows(item_ids, index), ctx)
        if last:
            x = x[index["seq_offsets"][1:] - 1]
        return F.normalize(x.float(), dim=-1, eps=1e-6)

    def empty_cache(self, num_users: int, device: torch.device | str = "cpu") -> TokenCache:
        """A cache of `num_users` users without rows, in the model's dtype (so that the cache
        grows in it and serving reads it without conversions)."""
        layer = self.layers[0]
        h, dqk, dv = layer.num_heads, layer.dim_qk, layer.dim_v
        dtype = self.tokens.dtype
        return TokenCache(
            [torch.zeros(0, h, dqk, device=device, dtype=dtype) for _ in self.layers],
            [torch.zeros(0, h, dv, device=device, dtype=dtype) for _ in self.layers],
            np.zeros(num_users + 1, np.int64),
            np.zeros(num_users, np.int64),
            np.zeros(num_users, np.int64),
        )

    def plan_extend(
        self, cache: TokenCache, item_counts: np.ndarray, *, compress: bool
    ) -> tuple[PerSRecLayout, Plan]:
        """The host half of `extend`: the new rows' layout and the pass's plan."""
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
        self.check_positions(layout)
        return layout, extend_plan(cache.offsets, layout)

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
        layout, plan = self.plan_extend(cache, item_counts, compress=compress)
        buffer = plan.device_buffer(item_ids.device)
        out, *kv = self.extend_planned(
            buffer, item_ids, *cache.keys, *cache.values, **plan_args(plan)
        )
        if not compress:
            return out, cache
        layers = len(self.layers)
        new_keys, new_values = kv[:layers], kv[layers:]
        token_counts = np.bincount(
            np.repeat(np.arange(len(item_counts)), np.diff(layout.seq_offsets)),
            weights=layout.is_token,
            minlength=len(item_counts),
        ).astype(np.int64)
        grown, order, _ = joint_order(cache.offsets, offsets_from_lengths(token_counts))
        order = torch.from_numpy(order).to(item_ids.device)
        return out, TokenCache(
            [torch.cat([old, new])[order] for old, new in zip(cache.keys, new_keys, strict=True)],
            [
                torch.cat([old, new])[order]
                for old, new in zip(cache.values, new_values, strict=True)
            ],
            grown.astype(np.int64),
            layout.next_position,
            layout.next_region,
        )

    def extend_planned(
        self,
        buffer: torch.Tensor,
        item_ids: torch.Tensor,
        *cache_kv,
        names,
        sizes,
        max_len,
        last: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """`extend` over a plan's device buffer (no host reads: capturable). cache_kv: every
        layer's cached keys, then every layer's cached values. Returns the new rows' outputs
        (with `last`, each user's last new row only), then per layer the new token rows' keys,
        then their values."""
        index = unpack(buffer, names, sizes)
        layers = self.layers
        cached_keys, cached_values = cache_kv[: len(layers)], cache_kv[len(layers) :]
        order, offsets = index["order"], index["joint_offsets"].int()
        region, is_token = index["region"].int(), index["is_token"].bool()
        new_rows, token_rows = index["new_rows"], index["token_rows"]
        x = self._rows(item_ids, index)
        new_keys, new_values = [], []
        for layer, cached_k, cached_v in zip(layers, cached_keys, cached_values, strict=True):
            state, q, k, v = layer.project(x)
            q_all = torch.cat([q.new_zeros((cached_k.shape[0], *q.shape[1:])), q])[order]
            k_all = torch.cat([cached_k.to(k.dtype), k])[order]
            v_all = torch.cat([cached_v.to(v.dtype), v])[order]
            attn = layer.attend(q_all, k_all, v_all, offsets, region, is_token, max_len)
            new_keys.append(k[token_rows])
            new_values.append(v[token_rows])
            x = layer.finish(x, state, attn[new_rows])
        if last:
            x = x[index["last_rows"]]
        return (F.normalize(x.float(), dim=-1, eps=1e-6), *new_keys, *new_values)


def plan_args(plan: Plan) -> dict:
    """The static arguments of a planned pass."""
    return {"names": plan.names, "sizes": plan.sizes, "max_len": plan.max_len}


class _HstuServing:
    """An HSTU/STU layer split around its attention: the compressed SiLU attention op."""

    def __init__(self, layer) -> None:
        self.layer = self.module = layer
        self.num_heads, self.dim_qk, self.dim_v = layer.num_heads, layer.dim_qk, layer.dim_v

    def project(self, x: torch.Tensor):
        u, v, q, k = self.layer.project(x)
        return u, q, k, v

    def attend(self, q, k, v, seq_offsets, region, is_token, max_len) -> torch.Tensor:
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

    def attend(self, q, k, v, seq_offsets, region, is_token, max_len) -> torch.Tensor:
        return compressed_softmax_attention(q, k, v, seq_offsets, region, is_token, max_len=max_len)

    def finish(self, x: torch.Tensor, qn: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return self.block.finish(qn, attn)
