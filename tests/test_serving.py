"""PerSRecServer: planned passes (one host copy) and their CUDA-graph replay serve the same user
vectors as `extend` and `encode`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freescale.cuda_graph import GraphedFunction
from freescale.models import ModelConfig
from freescale.models.persrec import build_recommender, build_sequence_layout
from freescale.models.persrec_plan import Plan, extend_plan, joint_order, unpack
from freescale.serving import PerSRecServer

NUM_ITEMS = 500


def make_model(kind: str, segment: int, dtype=torch.float64, device="cpu"):
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind,
        dim=32,
        num_blocks=2,
        num_heads=2,
        dim_qk=16,
        dim_v=16,
        max_len=160,
        dropout=0.0,
        persrec_tokens=4,
        persrec_segment=segment,
        persrec_recent=20,
    )
    return build_recommender(NUM_ITEMS, config).to(device, dtype).eval()


def user_batch(rng, users: int, device="cpu"):
    history = rng.integers(0, 120, users)
    recent = rng.integers(1, 20, users)
    hist_ids = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, int(history.sum()))).to(device)
    recent_ids = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, int(recent.sum()))).to(device)
    return history, recent, hist_ids, recent_ids


def interleave(hist_ids, history, recent_ids, recent) -> torch.Tensor:
    h = torch.split(hist_ids, history.tolist())
    r = torch.split(recent_ids, recent.tolist())
    return torch.cat([x for pair in zip(h, r, strict=True) for x in pair])


def test_plan_packs_and_unpacks_named_arrays():
    plan = Plan.pack({"a": np.arange(3), "b": np.array([True, False]), "c": np.zeros(0)}, 7)
    assert plan.sizes == (3, 2, 0) and plan.max_len == 7 and plan.packed.dtype == np.int64
    views = unpack(plan.device_buffer("cpu"), plan.names, plan.sizes)
    assert views["a"].tolist() == [0, 1, 2] and views["b"].tolist() == [1, 0]
    assert views["c"].numel() == 0


def test_joint_order_puts_cached_rows_first_per_user():
    joint, order, new_rows = joint_order(np.array([0, 2, 2, 3]), np.array([0, 1, 3, 3]))
    # users: [c0 c1 | n0], [| n1 n2], [c2 |]
    assert joint.tolist() == [0, 3, 5, 6]
    assert order.tolist() == [0, 1, 3, 4, 5, 2]
    assert new_rows.tolist() == [2, 3, 4]


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
@pytest.mark.parametrize("segment", [0, 32])
def test_server_vectors_equal_the_full_pass(kind, segment):
    rng = np.random.default_rng(3)
    model = make_model(kind, segment)
    history, recent, hist_ids, recent_ids = user_batch(rng, 5)
    history[1] = 0  # a user with no history: served from its recent items alone
    hist_ids = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, int(history.sum())))
    server = PerSRecServer(model)
    with torch.no_grad():
        _, cache = model.extend(model.empty_cache(5), hist_ids, history, compress=True)
        served = server.serve(cache, recent_ids, recent)
        layout = build_sequence_layout([(history, True), (recent, False)], 4, segment)
        all_ids = interleave(hist_ids, history, recent_ids, recent)
        recomputed = server.recompute(all_ids, layout)
        full = model.encode(all_ids, layout)
    last = torch.from_numpy(layout.seq_offsets[1:] - 1)
    torch.testing.assert_close(recomputed, full[last], rtol=0, atol=0)
    torch.testing.assert_close(served, full[last], rtol=1e-10, atol=1e-12)


def test_server_rejects_users_without_recent_items():
    model = make_model("hstu", 0)
    server = PerSRecServer(model)
    cache = model.empty_cache(2)
    with pytest.raises(ValueError, match="at least one recent item"):
        server.serve(cache, torch.tensor([3]), np.array([1, 0]))


def test_extend_plan_signature_depends_on_shapes_only():
    a = extend_plan(np.array([0, 4, 8]), _layout(np.array([3, 2])))
    b = extend_plan(np.array([0, 4, 8]), _layout(np.array([2, 3])))
    assert a.signature == b.signature and not np.array_equal(a.packed, b.packed)


def _layout(counts):
    from freescale.data.persrec_layout import build_layout

    return build_layout(counts, 4, 0, compress=False, start_position=np.array([10, 20]))


def test_graphed_function_needs_cuda_tensors():
    with pytest.raises(ValueError, match="GPU"):
        GraphedFunction(lambda x: x + 1)(torch.ones(2))


# -- GPU: CUDA-graph replay -------------------------------------------------------------------
@pytest.mark.gpu
def test_graphed_function_replays_with_new_inputs_and_recaptures_new_shapes():
    graphed = GraphedFunction(lambda x, y, *, scale: (x * scale + y).sum(dim=0))
    x, y = torch.randn(5, 3, device="cuda"), torch.randn(5, 3, device="cuda")
    torch.testing.assert_close(graphed(x, y, scale=2.0), (x * 2 + y).sum(0))
    x2 = torch.randn(5, 3, device="cuda")
    torch.testing.assert_close(graphed(x2, y, scale=2.0), (x2 * 2 + y).sum(0))
    assert len(graphed) == 1
    x3 = torch.randn(7, 3, device="cuda")
    torch.testing.assert_close(graphed(x3, x3, scale=2.0), (x3 * 3).sum(0))
    torch.testing.assert_close(graphed(x, y, scale=0.5), (x * 0.5 + y).sum(0))
    assert len(graphed) == 3


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
@pytest.mark.parametrize("segment", [0, 32])
def test_cuda_graph_server_equals_the_eager_server(kind, segment):
    """bf16 (the compressed-attention kernels for HSTU); two batches of one signature with
    different contents replay one graph, and both equal the eager passes."""
    rng = np.random.default_rng(5)
    model = make_model(kind, segment, torch.bfloat16, "cuda")
    eager, graphed = PerSRecServer(model), PerSRecServer(model, cuda_graphs=True)
    history, recent, hist_ids, recent_ids = user_batch(rng, 6, "cuda")
    with torch.no_grad():
        _, cache = model.extend(model.empty_cache(6, "cuda"), hist_ids, history, compress=True)
        layout = build_sequence_layout([(history, True), (recent, False)], 4, segment)
        all_ids = interleave(hist_ids, history, recent_ids, recent)
        for trial in range(2):
            ids = recent_ids if trial == 0 else recent_ids.flip(0)
            full_ids = all_ids if trial == 0 else all_ids.flip(0)
            want, got = eager.serve(cache, ids, recent), graphed.serve(cache, ids, recent)
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
            want = eager.recompute(full_ids, layout)
            got = graphed.recompute(full_ids, layout)
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert len(graphed._extend) == 1 and len(graphed._encode) == 1
