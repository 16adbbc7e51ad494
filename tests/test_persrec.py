"""PerSRec layouts and cached serving: compress / extend / serve equal the full masked pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freescale.models import ModelConfig, SequentialRecommender
from freescale.models.persrec import PerSRec, TokenCache, build_layout, build_sequence_layout
from freescale.models.persrec_plan import rows_arrays

NUM_ITEMS = 60


def make_model(kind="hstu", num_tokens=3, segment_len=4, seed=0) -> PerSRec:
    torch.manual_seed(seed)
    config = ModelConfig(
        kind=kind,
        dim=16,
        num_blocks=2,
        num_heads=2,
        dim_qk=8,
        dim_v=8,
        max_len=96,
        dropout=0.0,
        pos_bias=False,
    )
    model = PerSRec(SequentialRecommender(NUM_ITEMS, config), num_tokens, segment_len)
    model.double().eval()
    return model


def packed_items(rng, counts) -> torch.Tensor:
    return torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, int(np.sum(counts))))


def test_layout_by_hand():
    lay = build_layout(np.array([5, 0, 3]), num_tokens=2, segment_len=2, compress=True)
    assert lay.seq_offsets.tolist() == [0, 11, 11, 18]
    # user 0: [i0 i1 t t | i2 i3 t t | i4 t t], groups take their segment's region
    assert lay.item_index[:11].tolist() == [0, 1, -1, -1, 2, 3, -1, -1, 4, -1, -1]
    assert lay.token_index[:11].tolist() == [-1, -1, 0, 1, -1, -1, 0, 1, -1, 0, 1]
    assert lay.region[:11].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert lay.next_position.tolist() == [11, 0, 7] and lay.next_region.tolist() == [3, 0, 2]
    recent = build_layout(
        np.array([2, 1, 0]),
        2,
        2,
        compress=False,
        start_position=lay.next_position,
        start_region=lay.next_region,
    )
    assert recent.region.tolist() == [3, 3, 0] and recent.position.tolist() == [11, 12, 0]
    assert not recent.is_token.any()
    full = build_sequence_layout([(np.array([5, 0, 3]), True), (np.array([2, 1, 0]), False)], 2, 2)
    assert full.seq_offsets.tolist() == [0, 13, 14, 21]
    assert full.item_index[11:14].tolist() == [5, 6, 7]  # user 0's recent items, user 1's one


@pytest.mark.parametrize("kind", ["hstu", "stu", "sasrec"])
@pytest.mark.parametrize("segment_len", [0, 4])
def test_cached_serving_equals_the_full_pass(kind, segment_len):
    rng = np.random.default_rng(1)
    model = make_model(kind, segment_len=segment_len)
    history = np.array([10, 0, 7, 1])
    recent = np.array([3, 2, 4, 1])
    hist_ids, recent_ids = packed_items(rng, history), packed_items(rng, recent)
    with torch.no_grad():
        cache = model.empty_cache(len(history), "cpu")
        _, cache = model.extend(cache, hist_ids, history, compress=True)
        served, same = model.extend(cache, recent_ids, recent, compress=False)
        assert same is cache

        full = build_sequence_layout([(history, True), (recent, False)], 3, segment_len)
        all_ids = _interleave(hist_ids, history, recent_ids, recent)
        out = model.encode(all_ids, full)
    recent_rows = _rows_of_chunk(full, history, recent, model, segment_len)
    torch.testing.assert_close(served, out[recent_rows], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_incremental_compression_reuses_the_cache(kind):
    """Compressing history in two calls (old segments untouched) and serving equals the full
    pass over [segments and groups of both | recent] and equals compressing it in one call."""
    rng = np.random.default_rng(2)
    model = make_model(kind, segment_len=4)
    first, second, recent = np.array([8, 4, 0]), np.array([4, 5, 6]), np.array([2, 3, 1])
    ids = [packed_items(rng, c) for c in (first, second, recent)]
    with torch.no_grad():
        cache = model.empty_cache(3)
        _, cache = model.extend(cache, ids[0], first, compress=True)
        old_keys, old_offsets = [k.clone() for k in cache.keys], cache.offsets.copy()
        _, cache = model.extend(cache, ids[1], second, compress=True)
        served, _ = model.extend(cache, ids[2], recent, compress=False)

        layout = build_sequence_layout([(first, True), (second, True), (recent, False)], 3, 4)
        chunks = (first, second, recent)
        pairs = [x for pair in zip(ids, chunks, strict=True) for x in pair]
        out = model.encode(_interleave(*pairs), layout)
    # Each user's old token rows lead its rows in the grown cache, bit for bit.
    for old, new in zip(old_keys, cache.keys, strict=True):
        for u in range(3):
            n = old_offsets[u + 1] - old_offsets[u]
            start = cache.offsets[u]
            torch.testing.assert_close(
                new[start : start + n], old[old_offsets[u] : old_offsets[u + 1]], rtol=0, atol=0
            )
    assert (np.diff(cache.offsets) == np.diff(old_offsets) + 3 * np.ceil(second / 4)).all()
    recent_rows = np.flatnonzero(_chunk_of_rows(layout, [first, second, recent]) == 2)
    torch.testing.assert_close(served, out[torch.from_numpy(recent_rows)], rtol=1e-10, atol=1e-12)


def test_served_rows_read_history_only_through_the_tokens():
    """Serving against the cache (token keys and values only) equals the full pass, in which
    recent rows could otherwise have reached the raw history."""
    rng = np.random.default_rng(3)
    model = make_model(segment_len=0)
    history = np.array([6])
    ids = packed_items(rng, history)
    with torch.no_grad():
        cache = model.empty_cache(1)
        _, cache = model.extend(cache, ids, history, compress=True)
        recent_ids = packed_items(rng, np.array([3]))
        a, _ = model.extend(cache, recent_ids, np.array([3]), compress=False)
        layout = build_sequence_layout([(history, True), (np.array([3]), False)], 3, 0)
        all_ids = torch.cat([ids, recent_ids])
        changed = all_ids.clone()
        changed[:6] = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, 6))
        out_a = model.encode(all_ids, layout)
        out_b = model.encode(changed, layout)
    recent_rows = slice(6 + 3, 6 + 3 + 3)
    torch.testing.assert_close(out_a[recent_rows], a, rtol=1e-10, atol=1e-12)
    # ... and the history still reaches them, through the tokens (weakly: two 1/N hops).
    assert (out_a[recent_rows] - out_b[recent_rows]).abs().max() > 1e-9


def test_cache_save_load_and_size(tmp_path):
    rng = np.random.default_rng(4)
    model = make_model(segment_len=4)
    history = np.array([9, 3])
    with torch.no_grad():
        _, cache = model.extend(
            model.empty_cache(2), packed_items(rng, history), history, compress=True
        )
    groups = [3, 1]  # ceil(9 / 4), ceil(3 / 4)
    assert cache.offsets.tolist() == [0, 9, 12]  # 3 tokens per group
    per_row = 2 * 2 * (8 + 8) * 8  # layers x heads x (d_qk + d_v) x 8 bytes (float64)
    assert cache.nbytes() == sum(groups) * 3 * per_row
    cache.save(tmp_path / "cache.pt")
    loaded = TokenCache.load(tmp_path / "cache.pt")
    for a, b in zip(cache.keys + cache.values, loaded.keys + loaded.values, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.next_position.tolist() == cache.next_position.tolist()
    assert loaded.next_region.tolist() == cache.next_region.tolist() == groups


def test_rejects_models_and_layouts_it_cannot_serve():
    with pytest.raises(ValueError, match="persrec_recent"):
        ModelConfig(kind="hstu", max_len=32, persrec_tokens=4, persrec_recent=0)
    with pytest.raises(ValueError, match="relative bias"):
        PerSRec(SequentialRecommender(NUM_ITEMS, ModelConfig(kind="hstu", max_len=32)), 2)
    model = make_model()
    with pytest.raises(ValueError, match="cached users"):
        model.extend(model.empty_cache(2), torch.tensor([1]), np.array([1]), compress=False)
    long = np.array([200])
    with pytest.raises(ValueError, match="max_len"):
        model.extend(
            model.empty_cache(1), packed_items(np.random.default_rng(0), long), long, compress=True
        )


# -- helpers ------------------------------------------------------------------------------------
def _interleave(*pairs) -> torch.Tensor:
    """Items packed per user, chunk after chunk, from (ids, counts) pairs packed per chunk."""
    ids, counts = pairs[0::2], [np.asarray(c) for c in pairs[1::2]]
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in counts]
    out = []
    for u in range(len(counts[0])):
        for c in range(len(ids)):
            out.append(ids[c][starts[c][u] : starts[c][u + 1]])
    return torch.cat(out)


def _chunk_of_rows(layout, chunks) -> np.ndarray:
    """Which chunk every row of a build_sequence_layout layout belongs to (items: by their
    packed index; tokens: the chunk of the item before them)."""
    counts = np.stack(chunks)
    user_start = np.concatenate([[0], np.cumsum(counts.sum(0))])
    bounds = user_start[:-1] + np.cumsum(counts, axis=0)  # [C, U] end of each chunk's items
    result = np.empty(len(layout.item_index), np.int64)
    last = 0
    user = np.repeat(np.arange(counts.shape[1]), np.diff(layout.seq_offsets))
    for row, (item, u) in enumerate(zip(layout.item_index, user, strict=True)):
        if item >= 0:
            last = int(np.searchsorted(bounds[:, u], item, side="right"))
        result[row] = last
    return result


def _rows_of_chunk(layout, history, recent, model, segment_len) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(_chunk_of_rows(layout, [history, recent]) == 1))


# -- training and evaluation batches ------------------------------------------------------------
def _sequences(*rows):
    from freescale.data.sequences import SequenceData

    lengths = [len(r) for r in rows]
    return SequenceData(
        item_ids=np.concatenate([np.asarray(r, np.int64) for r in rows]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        num_items=max(max(r) for r in rows if r),
    )


def test_train_batch_trains_item_to_next_item_pairs_only():
    from freescale.data.persrec_batch import PerSRecShape, make_persrec_train_batch

    data = _sequences([1, 2, 3, 4, 5, 6, 7], [8, 9])
    shape = PerSRecShape(history=4, recent=2, num_tokens=2, segment_len=0)
    batch = make_persrec_train_batch(data, np.array([0, 1]), shape)
    lay = batch.layout
    # user 0: window [1..7], inputs 1..6: history [1 2 3 4 | t t] then recent [5 6]
    assert batch.input_ids.tolist()[:6] == [1, 2, 3, 4, 5, 6]
    assert lay.token_index[:8].tolist() == [-1, -1, -1, -1, 0, 1, -1, -1]
    # each item row predicts the next item (4 -> 5 across the token group), tokens predict none
    assert batch.target_ids[:8].tolist() == [2, 3, 4, 5, 0, 0, 6, 7]
    # user 1: one input (8 -> 9), all recent, no history: no tokens
    assert batch.target_ids[8:].tolist() == [9] and not lay.is_token[8:].any()
    keys = batch.target_keys[:8].tolist()
    assert [
        data.item_ids[k] for k, t in zip(keys, batch.target_ids[:8].tolist(), strict=True) if t
    ] == [2, 3, 4, 5, 6, 7]


def test_persrec_trains_and_evaluates_from_the_cli(tmp_path):
    from freescale.cli import main as cli_main
    from freescale.runlog import read_log

    data = "synthetic:num_users=400,num_items=200,num_topics=5,mean_len=40,max_len=90,seed=2"
    args = [
        "train",
        "--preset",
        "quickstart",
        "--data",
        data,
        "--max-len",
        "60",
        "--persrec-tokens",
        "4",
        "--persrec-segment",
        "16",
        "--persrec-recent",
        "20",
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--progress",
        "off",
        "--log-every",
        "3",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    assert cli_main(args) == 0
    losses = [
        r["loss"] for r in read_log(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"
    ]
    assert losses[-1] < losses[0]
    assert cli_main(["eval", "--run-dir", str(tmp_path / "run"), "--device", "cpu"]) == 0


# -- serving ------------------------------------------------------------------------------------
def test_cache_store_round_trip_serves_like_the_batch_cache(tmp_path):
    from freescale.serving import TokenCacheStore

    rng = np.random.default_rng(7)
    model = make_model(segment_len=4)
    history, recent = np.array([9, 5, 0]), np.array([2, 3, 1])
    hist_ids, recent_ids = packed_items(rng, history), packed_items(rng, recent)
    with torch.no_grad():
        _, cache = model.extend(model.empty_cache(3), hist_ids, history, compress=True)
        want, _ = model.extend(cache, recent_ids, recent, compress=False)
        store = TokenCacheStore()
        store.put([101, 102, 103], cache)
        store.save(tmp_path / "store.pt")
        loaded = TokenCacheStore.load(tmp_path / "store.pt")
        assert len(loaded) == 3 and 102 in loaded and loaded.nbytes() == cache.nbytes()
        # Another batch order, and a user never seen (no cache rows: served from scratch).
        batch = loaded.get([103, 101, 102, 999], model.empty_cache(0))
        ids = torch.cat([recent_ids[5:6], recent_ids[0:2], recent_ids[2:5], recent_ids[:1]])
        got, _ = model.extend(batch, ids, np.array([1, 2, 3, 1]), compress=False)
        fresh, _ = model.extend(model.empty_cache(1), recent_ids[:1], np.array([1]), compress=False)
    torch.testing.assert_close(got[:6], torch.cat([want[5:6], want[0:2], want[2:5]]))
    torch.testing.assert_close(got[6:], fresh)


def test_serve_benchmark_counts_and_times_both_paths():
    from freescale.serving import serve_benchmark

    model = make_model(segment_len=0)
    model.float()
    results = serve_benchmark(model, users=2, history=40, recent=5, repeats=1)
    recompute, cached = results
    assert recompute.mode == "recompute history" and cached.mode == "cached tokens"
    assert cached.gflops < recompute.gflops / 5
    assert recompute.latency_ms > 0 and cached.latency_ms > 0
    assert recompute.pass_ms > 0 and cached.pass_ms > 0


def test_sasrec_full_pass_uses_the_compressed_mask():
    """Without compression the layout is one causal region, and PerSRec-SASRec equals SASRec;
    with a token group, recent rows stop seeing the raw history."""
    torch.manual_seed(0)
    config = ModelConfig(
        kind="sasrec", dim=16, num_blocks=2, num_heads=2, ffn_hidden=16, max_len=40, dropout=0.0
    )
    base = SequentialRecommender(NUM_ITEMS, config).double().eval()
    model = PerSRec(base, num_tokens=2).double().eval()
    rng = np.random.default_rng(5)
    counts = np.array([7, 3])
    ids = packed_items(rng, counts)
    plain_layout = build_sequence_layout([(counts, False)], 2, 0)
    with torch.no_grad():
        got = model.encode(ids, plain_layout)
        want = base.encode(ids, torch.tensor([0, 7, 10], dtype=torch.int32), 7)
    torch.testing.assert_close(got, want)

    # With token groups: the batched masks (two users, padding) equal per-user explicit masks.
    from freescale_ext.reference import compressed_valid_mask

    history, recent = np.array([9, 2]), np.array([3, 4])
    layout = build_sequence_layout([(history, True), (recent, False)], 2, 4)
    ids = packed_items(rng, history + recent)
    model.segment_len = 4
    with torch.no_grad():
        batched = model.encode(ids, layout)
        index = {k: torch.from_numpy(a) for k, a in rows_arrays(layout).items()}
        x = model._rows(ids, index)
        for u in range(2):
            lo, hi = layout.seq_offsets[u], layout.seq_offsets[u + 1]
            mask = compressed_valid_mask(
                torch.from_numpy(layout.region[lo:hi]), torch.from_numpy(layout.is_token[lo:hi])
            )
            h = x[lo:hi][None]
            for block in base.encoder.blocks:
                h = block(h, ~mask, torch.ones(1, hi - lo, 1, dtype=h.dtype))
            one = torch.nn.functional.normalize(h[0].float(), dim=-1, eps=1e-6)
            torch.testing.assert_close(batched[lo:hi], one)
