"""HSTU attention on the CPU: the op against the float64 oracle, mask and bucket semantics written
out by hand, op registration (opcheck, fake tensors, torch.compile) and input checking."""

from __future__ import annotations

import hstu_cases as cases
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import freescale_ext
from freescale_ext.reference import hstu_attention_reference, hstu_valid_mask, ts_bucket

NUM_HEADS, DIM_QK, DIM_V = 2, 12, 8  # d_v != d_qk, so a swapped dim would show


def assert_close_f64(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float64 agreement up to summation order: 1e-10 relative to the largest value."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= 1e-10 * scale, f"{name}: max error {error:.3e} (largest value {scale:.3e})"


# --- the op against the float64 reference ------------------------------------------------------

LENGTH_PRESETS = {"edge": cases.EDGE_LENGTHS, "long_tail": cases.LONG_TAIL_LENGTHS}


@pytest.mark.parametrize("lengths", LENGTH_PRESETS.values(), ids=LENGTH_PRESETS.keys())
@pytest.mark.parametrize("features", cases.FEATURE_SETS.values(), ids=cases.FEATURE_SETS.keys())
def test_cpu_op_matches_float64_reference(features, lengths):
    inputs = cases.make_hstu_inputs(
        lengths, NUM_HEADS, DIM_QK, DIM_V, torch.float64, features=features, seed=len(features)
    )
    inputs = cases.cast_inputs(inputs, torch.float64)  # float64 bias tables too
    grad_out = cases.random_grad_out(inputs)
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    ref_out, ref_grads = cases.forward_backward(hstu_attention_reference, inputs, grad_out)

    assert_close_f64("out", out, ref_out)
    assert set(grads) == set(ref_grads) == {n for n in cases.GRAD_NAMES if n in inputs}
    for name, grad in grads.items():
        assert_close_f64(f"d{name}", grad, ref_grads[name])
        assert grad.abs().max() > 0, f"d{name} is all zero: the test would not see a bug"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("features", ["none", "everything"])
def test_cpu_low_precision_within_error_bound(dtype, features):
    inputs = cases.make_hstu_inputs(
        cases.LONG_TAIL_LENGTHS,
        NUM_HEADS,
        DIM_QK,
        DIM_V,
        dtype,
        features=cases.FEATURE_SETS[features],
        seed=3,
    )
    grad_out = cases.random_grad_out(inputs)
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    lowp_out, lowp_grads = cases.forward_backward(
        hstu_attention_reference, cases.cast_inputs(inputs), grad_out
    )
    f64_out, f64_grads = cases.forward_backward(
        hstu_attention_reference, cases.cast_inputs(inputs, torch.float64), grad_out.double()
    )
    assert out.dtype == dtype
    cases.assert_error_bound("out", out, lowp_out, f64_out)
    for name, grad in grads.items():
        cases.assert_error_bound(f"d{name}", grad, lowp_grads[name], f64_grads[name])
        if name in cases.TABLE_NAMES:
            cases.assert_table_grad_accurate(f"d{name}", grad, f64_grads[name])


# --- mask semantics, written out by hand from DESIGN §4 -----------------------------------------
# Length 6. History is causal with the diagonal; the last num_targets tokens see the history and
# themselves only; contextual prefix rows see every non-target column and every row sees the
# prefix; a window of w lets a row look at most w positions back, where the contextual prefix
# counts as one position and all targets sit at the position of the first target.

MASK_CASES = {
    "causal": (
        {},
        ["1.....", "11....", "111...", "1111..", "11111.", "111111"],
    ),
    "num_targets=2": (
        {"num_targets": 2},
        ["1.....", "11....", "111...", "1111..", "11111.", "1111.1"],
    ),
    "num_targets=6": (  # every token is a target: no history, each sees itself
        {"num_targets": 6},
        ["1.....", ".1....", "..1...", "...1..", "....1.", ".....1"],
    ),
    "contextual_len=2": (
        {"contextual_len": 2},
        ["111111", "111111", "111...", "1111..", "11111.", "111111"],
    ),
    "max_attn_len=2": (
        {"max_attn_len": 2},
        ["1.....", "11....", "111...", ".111..", "..111.", "...111"],
    ),
    "contextual_len=2,num_targets=2": (
        {"contextual_len": 2, "num_targets": 2},
        ["1111..", "1111..", "111...", "1111..", "11111.", "1111.1"],
    ),
    "num_targets=2,max_attn_len=2": (  # targets sit at position 4: they see 2, 3 and themselves
        {"num_targets": 2, "max_attn_len": 2},
        ["1.....", "11....", "111...", ".111..", "..111.", "..11.1"],
    ),
    "contextual_len=2,max_attn_len=2": (  # the prefix is one position: row 3 is 2 away from it
        {"contextual_len": 2, "max_attn_len": 2},
        ["111111", "111111", "111...", "1111..", "..111.", "...111"],
    ),
    "contextual_len=2,num_targets=2,max_attn_len=2": (
        {"contextual_len": 2, "num_targets": 2, "max_attn_len": 2},
        ["1111..", "1111..", "111...", "1111..", "..111.", "..11.1"],
    ),
}


def literal_mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in rows])


@pytest.mark.parametrize("options, rows", MASK_CASES.values(), ids=MASK_CASES.keys())
def test_reference_mask_matches_hand_written(options, rows):
    assert torch.equal(hstu_valid_mask(6, **options), literal_mask(rows))


@pytest.mark.parametrize("options, rows", MASK_CASES.values(), ids=MASK_CASES.keys())
def test_op_mask_matches_hand_written(options, rows):
    """The op attends exactly where the mask says, forward and backward.

    The sequence under test comes second in a batch (so offsets matter) and has v = identity:
    then out[i, j] = SiLU(s_ij)/N * M_ij, nonzero exactly where M is. With dO = 1 on row i only,
    dK[j] and dV[j] are nonzero exactly where M_ij is.
    """
    expected = literal_mask(rows)
    n, first = 6, 4
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(first + n, 1, 3, generator=gen, dtype=torch.float64)
    k = torch.randn(first + n, 1, 3, generator=gen, dtype=torch.float64).requires_grad_()
    v = torch.zeros(first + n, 1, n, dtype=torch.float64)
    v[first:, 0] = torch.eye(n, dtype=torch.float64)
    v.requires_grad_()
    options = dict(options)
    if "num_targets" in options:
        options["num_targets"] = torch.tensor([1, options["num_targets"]])
    offsets = torch.tensor([0, first, first + n])
    out = freescale_ext.hstu_attention(q, k, v, offsets, 8, **options)
    assert torch.equal(out[first:, 0] != 0, expected)

    for row in range(n):
        grad_out = torch.zeros_like(out)
        grad_out[first + row] = 1.0
        dk, dv = torch.autograd.grad(out, (k, v), grad_out, retain_graph=True)
        assert torch.equal(dk[first:, 0].abs().sum(-1) != 0, expected[row]), f"dK, row {row}"
        assert torch.equal(dv[first:, 0].abs().sum(-1) != 0, expected[row]), f"dV, row {row}"


# --- time buckets --------------------------------------------------------------------------------


def test_ts_bucket_hand_values():
    deltas = torch.tensor(list(cases.HAND_BUCKETS), dtype=torch.int64)
    assert ts_bucket(deltas).tolist() == list(cases.HAND_BUCKETS.values())


def test_ts_bucket_boundaries_and_sign():
    gaps = cases.boundary_gaps()
    assert len(gaps) > 150  # both sides of most boundaries below 1e12
    deltas = torch.tensor(list(gaps), dtype=torch.int64)
    assert ts_bucket(deltas).tolist() == list(gaps.values())
    assert torch.equal(ts_bucket(-deltas), ts_bucket(deltas))


def test_ts_bucket_clamps_at_num_buckets():
    deltas = torch.tensor([1, 2, 10**4, 10**6, 10**9])
    assert ts_bucket(deltas, num_buckets=10).tolist() == [0, 2, 10, 10, 10]


def test_op_uses_the_same_buckets():
    gaps = cases.bucket_test_gaps()
    assert cases.op_ts_buckets(list(gaps), "cpu") == list(gaps.values())
    # A shorter table clamps at its own last bucket.
    assert cases.op_ts_buckets([1, 2, 10**4, 10**9], "cpu", num_buckets=10) == [0, 2, 10, 10]


# --- op registration: opcheck, fake tensors, torch.compile --------------------------------------

OPCHECK_FEATURES = {
    "none": frozenset(),
    "targets_and_bias": frozenset({cases.TARGETS, cases.POS_BIAS, cases.TS_BIAS}),
    "everything": cases.EVERYTHING,
}


def small_inputs(dtype: torch.dtype, features=frozenset(), requires_grad: bool = True) -> dict:
    inputs = cases.make_hstu_inputs([0, 3, 7, 1], 2, 4, 3, dtype, features=features, seed=5)
    if not requires_grad:
        inputs = {n: t.detach() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    return inputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("features", OPCHECK_FEATURES.values(), ids=OPCHECK_FEATURES.keys())
def test_opcheck_forward(dtype, features):
    inputs = small_inputs(dtype, features)
    torch.library.opcheck(torch.ops.freescale.hstu_attention.default, cases.op_args(inputs))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("features", OPCHECK_FEATURES.values(), ids=OPCHECK_FEATURES.keys())
def test_opcheck_backward(dtype, features):
    # The backward op has no autograd formula of its own: it is called with plain tensors.
    inputs = small_inputs(dtype, features, requires_grad=False)
    args = (cases.random_grad_out(inputs), *cases.op_args(inputs))
    torch.library.opcheck(torch.ops.freescale.hstu_attention_backward.default, args)


def test_opcheck_backward_strided_inputs():
    """The fake backward must report the strides the kernels return (fresh, contiguous)."""
    inputs = small_inputs(torch.float64, cases.EVERYTHING, requires_grad=False)
    inputs["q"] = inputs["q"].transpose(0, 1).contiguous().transpose(0, 1)  # dense, permuted
    args = (cases.random_grad_out(inputs), *cases.op_args(inputs))
    torch.library.opcheck(torch.ops.freescale.hstu_attention_backward.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fake_tensor_shapes(dtype):
    inputs = small_inputs(dtype, cases.EVERYTHING, requires_grad=False)
    total, heads = inputs["q"].shape[:2]
    mode = FakeTensorMode()
    fake = {n: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    with mode:
        out = torch.ops.freescale.hstu_attention(*cases.op_args(fake))
        grads = torch.ops.freescale.hstu_attention_backward(
            torch.empty(total, heads, 3, dtype=dtype), *cases.op_args(fake)
        )
    assert out.shape == (total, heads, 3) and out.dtype == dtype
    for grad, name in zip(grads, cases.GRAD_NAMES, strict=True):
        assert grad.shape == inputs[name].shape and grad.dtype == inputs[name].dtype, name


def test_meta_tensors():
    q = torch.empty(10, 2, 4, device="meta")
    v = torch.empty(10, 2, 5, device="meta")
    offsets = torch.empty(3, dtype=torch.int32, device="meta")
    out = torch.ops.freescale.hstu_attention(q, q, v, offsets, 8)
    assert out.shape == (10, 2, 5) and out.device.type == "meta"


def test_torch_compile_fullgraph_matches_eager():
    inputs = small_inputs(torch.float32, cases.EVERYTHING)

    def attention_block(q, k, v, pos_weight, ts_weight):
        args = {**inputs, "q": q, "k": k, "v": v, "pos_weight": pos_weight, "ts_weight": ts_weight}
        return torch.ops.freescale.hstu_attention(*cases.op_args(args)).square().sum()

    leaves = [inputs[n] for n in cases.GRAD_NAMES]
    eager = attention_block(*leaves)
    eager_grads = torch.autograd.grad(eager, leaves)
    torch.compiler.reset()
    compiled = torch.compile(attention_block, backend="aot_eager", fullgraph=True)(*leaves)
    compiled_grads = torch.autograd.grad(compiled, leaves)
    torch.compiler.reset()
    torch.testing.assert_close(compiled, eager)
    for name, got, want in zip(cases.GRAD_NAMES, compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"d{name}: {m}")


# --- wrapper conveniences ----------------------------------------------------------------------


def test_validate_false_and_int64_offsets_give_the_same_result():
    inputs = small_inputs(torch.float64, cases.EVERYTHING, requires_grad=False)
    expected = freescale_ext.hstu_attention(**inputs)
    unvalidated = freescale_ext.hstu_attention(**inputs, validate=False)
    int64_index = {
        **inputs,
        "seq_offsets": inputs["seq_offsets"].long(),
        "num_targets": inputs["num_targets"].long(),
    }
    assert torch.equal(unvalidated, expected)
    assert torch.equal(freescale_ext.hstu_attention(**int64_index), expected)


def test_views_of_a_fused_projection_match_contiguous_inputs():
    """q, k, v are usually column slices of one [T, H*(2 d_qk + d_v)] projection."""
    inputs = small_inputs(torch.float64, cases.EVERYTHING, requires_grad=False)
    total, heads, dim_qk = inputs["q"].shape
    dim_v = inputs["v"].shape[2]
    fused = torch.cat([inputs[n].flatten(1) for n in ("q", "k", "v")], dim=1).requires_grad_()
    q, k, v = fused.split([heads * dim_qk, heads * dim_qk, heads * dim_v], dim=1)
    q, k, v = q.view(total, heads, dim_qk), k.view(total, heads, dim_qk), v.view(total, heads, -1)
    assert not q.is_contiguous() and q.stride(0) == fused.stride(0)

    grad_out = cases.random_grad_out(inputs)
    strided = freescale_ext.hstu_attention(**{**inputs, "q": q, "k": k, "v": v})
    (d_fused,) = torch.autograd.grad(strided, fused, grad_out)
    contiguous_inputs = cases.cast_inputs({**inputs, "q": q, "k": k, "v": v})
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, contiguous_inputs, grad_out)
    assert_close_f64("out", strided.detach(), out)
    expected = torch.cat([grads[n].flatten(1) for n in ("q", "k", "v")], dim=1)
    assert_close_f64("d(fused projection)", d_fused, expected)


# --- bad input ---------------------------------------------------------------------------------


def _bad(**changes):
    """Changes to the valid inputs of `test_bad_input_raises`, as functions of them."""
    return changes


BAD_INPUTS = {
    "non-monotone offsets": (
        _bad(seq_offsets=lambda i: torch.tensor([0, 6, 3, 8])),
        r"non-decreasing: seq_offsets\[1\]=6 > seq_offsets\[2\]=3",
    ),
    "offsets not starting at 0": (
        _bad(seq_offsets=lambda i: torch.tensor([1, 3, 8])),
        r"seq_offsets\[0\] must be 0, got 1",
    ),
    "offsets overrun T": (
        _bad(seq_offsets=lambda i: torch.tensor([0, 3, 9])),
        r"seq_offsets\[-1\]=9 must equal the number of tokens T=8 \(the offsets overrun",
    ),
    "offsets end before T": (
        _bad(seq_offsets=lambda i: torch.tensor([0, 3, 7])),
        r"seq_offsets\[-1\]=7 must equal the number of tokens T=8",
    ),
    "length over max_seq_len": (
        _bad(max_seq_len=lambda i: 4),
        r"sequence 1 has length 5 > max_seq_len=4",
    ),
    "num_targets over length": (
        _bad(num_targets=lambda i: torch.tensor([4, 1])),
        r"num_targets\[0\]=4 must be in \[0, length=3\]",
    ),
    "negative num_targets": (
        _bad(num_targets=lambda i: torch.tensor([0, -1])),
        r"num_targets\[1\]=-1 must be in \[0, length=5\]",
    ),
    "num_targets of wrong length": (
        _bad(num_targets=lambda i: torch.tensor([0, 1, 1])),
        r"num_targets must have 2 entries, got 3",
    ),
    "integer q": (
        _bad(q=lambda i: i["q"].int()),
        r"q must be float32, float16, bfloat16 or float64, got Int",
    ),
    "q and k dtypes differ": (
        _bad(k=lambda i: i["k"].double()),
        r"q, k, v must share a dtype; got Float, Double, Float",
    ),
    "k shape differs from q": (
        _bad(k=lambda i: i["k"][:, :, :3]),
        r"k must have q's shape \[8, 2, 4\], got \[8, 2, 3\]",
    ),
    "v with another T": (
        _bad(v=lambda i: i["v"][:7]),
        r"v must be \[T, H, d_v\] with T=8 and H=2, got \[7, 2, 3\]",
    ),
    "v with another H": (
        _bad(v=lambda i: i["v"][:, :1]),
        r"v must be \[T, H, d_v\] with T=8 and H=2, got \[8, 1, 3\]",
    ),
    "2-D q": (
        _bad(q=lambda i: i["q"].flatten(1)),
        r"q, k, v must be \[T, H, d\]; got q \[8, 8\]",
    ),
    "float offsets": (
        _bad(seq_offsets=lambda i: i["seq_offsets"].float()),
        r"seq_offsets must be an integer tensor, got torch.float32",
    ),
    "float num_targets": (
        _bad(num_targets=lambda i: torch.tensor([1.0, 2.0])),
        r"num_targets must be an integer tensor, got torch.float32",
    ),
    "pos_weight of wrong size": (
        _bad(pos_weight=lambda i: torch.zeros(2 * i["max_seq_len"])),
        r"pos_weight must have 2\*max_seq_len-1 = 15 entries, got 16",
    ),
    "ts_weight without timestamps": (
        _bad(ts_weight=lambda i: torch.zeros(129)),
        r"ts_weight needs timestamps",
    ),
    "timestamps without ts_weight": (
        _bad(timestamps=lambda i: torch.arange(8)),
        r"timestamps given without ts_weight",
    ),
    "timestamps of wrong length": (
        _bad(ts_weight=lambda i: torch.zeros(129), timestamps=lambda i: torch.arange(7)),
        r"timestamps must have shape \[T\]=\[8\], got \[7\]",
    ),
    "float64 bias table with float32 q": (
        _bad(pos_weight=lambda i: torch.zeros(15, dtype=torch.float64)),
        r"pos_weight must be float32 or q's dtype \(Float\), got Double",
    ),
    "integer ts table": (
        _bad(ts_weight=lambda i: torch.zeros(129, dtype=torch.int32), timestamps=lambda i: i["ts"]),
        r"ts_weight must be float32 or q's dtype \(Float\), got Int",
    ),
    "head dim 0": (
        _bad(q=lambda i: i["q"][:, :, :0], k=lambda i: i["k"][:, :, :0]),
        r"head dims must be positive",
    ),
}


@pytest.mark.parametrize("changes, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises(changes, message):
    gen = torch.Generator().manual_seed(0)
    valid = {
        "q": torch.randn(8, 2, 4, generator=gen),
        "k": torch.randn(8, 2, 4, generator=gen),
        "v": torch.randn(8, 2, 3, generator=gen),
        "seq_offsets": torch.tensor([0, 3, 8]),  # lengths 3 and 5
        "max_seq_len": 8,
        "ts": torch.arange(8) * 1000,
    }
    inputs = {**valid, **{name: change(valid) for name, change in changes.items()}}
    inputs.pop("ts")
    with pytest.raises(RuntimeError, match=message):
        freescale_ext.hstu_attention(**inputs)


def test_op_rejects_float_offsets_without_the_wrapper():
    q = torch.randn(8, 2, 4)
    with pytest.raises(RuntimeError, match=r"seq_offsets must be int32, got Float"):
        torch.ops.freescale.hstu_attention(q, q, q, torch.tensor([0.0, 3.0, 8.0]), 8)


def test_backward_rejects_grad_out_of_wrong_shape():
    inputs = small_inputs(torch.float32, requires_grad=False)
    grad_out = cases.random_grad_out(inputs)[:, :, :2]
    with pytest.raises(RuntimeError, match=r"grad_out must be \[11, 2, 3\], got \[11, 2, 2\]"):
        torch.ops.freescale.hstu_attention_backward(grad_out, *cases.op_args(inputs))
