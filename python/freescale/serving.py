"""Serving PerSRec models from cached token keys and values (DESIGN §5).

`TokenCacheStore` keeps one user's cache slice per key in memory (save/load to disk) and
assembles batch caches for `PerSRec.extend`; `serve_benchmark` measures serving latency,
throughput and FLOPs with the cache against recomputing the whole history.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from freescale.cuda_graph import GraphedFunction
from freescale.data.csr import offsets_from_lengths
from freescale.data.persrec_layout import PerSRecLayout, build_sequence_layout
from freescale.models.persrec import PerSRec, TokenCache, plan_args
from freescale.models.persrec_plan import PinnedStaging, Plan


class TokenCacheStore:
    """Per-user token caches by user key; batches are assembled and split on demand."""

    def __init__(self) -> None:
        self._users: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user: int) -> bool:
        return int(user) in self._users

    def put(self, users: list[int], cache: TokenCache) -> None:
        """Stores row u of a batch cache under users[u]."""
        if len(users) != cache.num_users:
            raise ValueError(f"{len(users)} users for a cache of {cache.num_users}")
        for u, user in enumerate(users):
            lo, hi = int(cache.offsets[u]), int(cache.offsets[u + 1])
            self._users[int(user)] = {
                "keys": [k[lo:hi].clone() for k in cache.keys],
                "values": [v[lo:hi].clone() for v in cache.values],
                "next_position": int(cache.next_position[u]),
                "next_region": int(cache.next_region[u]),
            }

    def get(self, users: list[int], empty: TokenCache) -> TokenCache:
        """The batch cache of `users`; a user never seen starts from `empty` (no rows)."""
        slices = [self._users.get(int(u)) for u in users]
        layers = len(empty.keys)
        keys = [
            torch.cat([empty.keys[i]] + [s["keys"][i] for s in slices if s]) for i in range(layers)
        ]
        values = [
            torch.cat([empty.values[i]] + [s["values"][i] for s in slices if s])
            for i in range(layers)
        ]
        counts = np.array([s["keys"][0].shape[0] if s else 0 for s in slices], np.int64)
        return TokenCache(
            keys,
            values,
            offsets_from_lengths(counts),
            np.array([s["next_position"] if s else 0 for s in slices], np.int64),
            np.array([s["next_region"] if s else 0 for s in slices], np.int64),
        )

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for s in self._users.values()
            for t in (*s["keys"], *s["values"])
        )

    def save(self, path: Path) -> None:
        torch.save({str(u): s for u, s in self._users.items()}, path)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> TokenCacheStore:
        store = cls()
        for user, s in torch.load(path, weights_only=True).items():
            s["keys"] = [k.to(device) for k in s["keys"]]
            s["values"] = [v.to(device) for v in s["values"]]
            store._users[int(user)] = s
        return store


# -- FLOPs ----------------------------------------------------------------------------------------
def _masked_pairs(layout: PerSRecLayout) -> int:
    """Unmasked (i, j) pairs of the compressed mask over every user of the layout."""
    total = 0
    for u in range(len(layout.seq_offsets) - 1):
        lo, hi = layout.seq_offsets[u], layout.seq_offsets[u + 1]
        region, token = layout.region[lo:hi], layout.is_token[lo:hi]
        n = hi - lo
        causal = np.tri(n, dtype=bool)
        total += int((causal & (token[None, :] | (region[None, :] == region[:, None]))).sum())
    return total


def encoder_flops(model: PerSRec, rows: int, pairs: int) -> float:
    """Forward FLOPs of the encoder: per layer, 2 FLOPs per weight-matrix element per row (the
    HSTU uvqk and output projections; SASRec's attention projections and FFN) and
    2 * H * (d_qk + d_v) per attention pair (DESIGN §4's count)."""
    total = 0.0
    for layer in model.layers:
        weights = sum(p.numel() for p in layer.module.parameters() if p.dim() >= 2)
        per_pair = 2 * layer.num_heads * (layer.dim_qk + layer.dim_v)
        total += rows * 2 * weights + pairs * per_pair
    return total


class PerSRecServer:
    """Serves user vectors (each user's last row) from a PerSRec model: against cached token
    keys and values, or by recomputing the whole layout. Each call plans on the host, copies the
    plan once, and runs the pass eagerly or, with `cuda_graphs`, replays the pass's CUDA graph
    for the batch's signature (users, rows, cached rows): one launch instead of hundreds."""

    def __init__(self, model: PerSRec, *, cuda_graphs: bool = False) -> None:
        self.model = model.eval()
        self.cuda_graphs = cuda_graphs
        wrap = GraphedFunction if cuda_graphs else (lambda fn: fn)
        self._extend = wrap(model.extend_planned)
        self._encode = wrap(model.encode_planned)
        self._staging = PinnedStaging()

    @torch.no_grad()
    def serve(
        self, cache: TokenCache, item_ids: torch.Tensor, item_counts: np.ndarray
    ) -> torch.Tensor:
        """[U, D] vectors of `cache`'s users after their item_counts[u] recent items (at least
        one each; packed per user), served against the cache."""
        return self.run_serve(self.plan_serve(cache, item_counts, item_ids.device), cache, item_ids)

    def plan_serve(
        self, cache: TokenCache, item_counts: np.ndarray, device: torch.device
    ) -> Planned:
        """The host half of `serve`: the plan, uploaded."""
        if np.any(np.asarray(item_counts) < 1):
            raise ValueError("serve: every user needs at least one recent item")
        _, plan = self.model.plan_extend(cache, item_counts, compress=False)
        return Planned(plan, plan.device_buffer(device, self._staging))

    @torch.no_grad()
    def run_serve(self, planned: Planned, cache: TokenCache, item_ids: torch.Tensor):
        """The device half of `serve`."""
        out = self._extend(
            planned.buffer,
            item_ids,
            *cache.keys,
            *cache.values,
            **plan_args(planned.plan),
            last=True,
        )[0]
        return out.clone() if self.cuda_graphs else out

    @torch.no_grad()
    def recompute(self, item_ids: torch.Tensor, layout: PerSRecLayout) -> torch.Tensor:
        """[U, D] vectors of the layout's users by the full masked pass (no cache)."""
        return self.run_recompute(self.plan_recompute(layout, item_ids.device), item_ids)

    def plan_recompute(self, layout: PerSRecLayout, device: torch.device) -> Planned:
        plan = self.model.plan_encode(layout)
        return Planned(plan, plan.device_buffer(device, self._staging))

    @torch.no_grad()
    def run_recompute(self, planned: Planned, item_ids: torch.Tensor) -> torch.Tensor:
        out = self._encode(planned.buffer, item_ids, **plan_args(planned.plan), last=True)
        return out.clone() if self.cuda_graphs else out


@dataclass
class Planned:
    """A plan and its device buffer."""

    plan: Plan
    buffer: torch.Tensor


@dataclass
class ServeResult:
    mode: str
    latency_ms: float  # median over repeats, one batch of users, host planning included
    pass_ms: float  # the same for the device pass alone (planned and uploaded beforehand)
    users_per_s: float
    gflops: float  # per batch
    profile: str = ""  # torch.profiler table of a few calls, when asked for


def _time(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@torch.no_grad()
def serve_benchmark(
    model: PerSRec,
    *,
    users: int,
    history: int,
    recent: int,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    seed: int = 0,
    cuda_graphs: bool = False,
    profile: bool = False,
) -> list[ServeResult]:
    """Serving `recent` new items of `users` users with `history` older items each: recompute
    the whole layout vs. serve against a cache built once beforehand (not timed). Both timed
    calls include their host work (layout, plan, copy) and return each user's vector; with
    `cuda_graphs` (CUDA only) both replay graphs."""
    model.eval()
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(seed)
    num_items = model.base.num_items
    hist_counts = np.full(users, history, np.int64)
    recent_counts = np.full(users, recent, np.int64)
    hist_ids = torch.from_numpy(rng.integers(1, num_items + 1, users * history)).to(device)
    recent_ids = torch.from_numpy(rng.integers(1, num_items + 1, users * recent)).to(device)
    chunks = [(hist_counts, True), (recent_counts, False)]
    per_user = [hist_ids.view(users, history), recent_ids.view(users, recent)]
    all_ids = torch.cat(per_user, dim=1).reshape(-1)
    _, cache = model.extend(model.empty_cache(users, device), hist_ids, hist_counts, compress=True)
    server = PerSRecServer(model, cuda_graphs=cuda_graphs)

    def recompute():
        layout = build_sequence_layout(chunks, model.num_tokens, model.segment_len)
        return server.recompute(all_ids, layout)

    def cached():
        return server.serve(cache, recent_ids, recent_counts)

    full = build_sequence_layout(chunks, model.num_tokens, model.segment_len)
    planned_full = server.plan_recompute(full, device)
    planned_recent = server.plan_serve(cache, recent_counts, device)
    cached_rows = users * recent
    cached_pairs = users * (int(cache.offsets[1]) * recent + recent * (recent + 1) // 2)
    results = []
    for mode, fn, device_pass, flops in (
        (
            "recompute history",
            recompute,
            lambda: server.run_recompute(planned_full, all_ids),
            encoder_flops(model, len(full.region), _masked_pairs(full)),
        ),
        (
            "cached tokens",
            cached,
            lambda: server.run_serve(planned_recent, cache, recent_ids),
            encoder_flops(model, cached_rows, cached_pairs),
        ),
    ):
        seconds = _time(fn, repeats, sync)
        pass_seconds = _time(device_pass, repeats, sync)
        table = _profile(fn, device, sync) if profile else ""
        results.append(
            ServeResult(
                mode, seconds * 1e3, pass_seconds * 1e3, users / seconds, flops / 1e9, table
            )
        )
    return results


def _profile(fn, device: torch.device, sync, calls: int = 5) -> str:
    """The top operators of `calls` calls by self device time (CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)
