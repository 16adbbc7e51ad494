"""HSTU attention CUDA kernels: accuracy against the float64 oracle by FlashAttention's rule, every
output written, determinism, streams, edge batches and input checks on the device."""

from __future__ import annotations

import functools

import hstu_cases as cases
import pytest
import torch

import freescale_ext
from freescale_ext.reference import hstu_attention_reference

pytestmark = pytest.mark.gpu

# Edge lengths and a long tail in one batch: ~900 tokens.
LENGTHS = cases.EDGE_LENGTHS + cases.LONG_TAIL_LENGTHS
HEAD_DIMS = [(25, 25), (32, 32), (50, 50), (64, 64), (128, 128), (256, 256), (64, 32), (32, 64)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def exact_float32_matmul():
    """The float32 PyTorch reference must not use TF32, or its error would set a loose bound."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def check_against_reference(
    lengths,
    num_heads: int,
    dim_qk: int,
    dim_v: int,
    dtype: torch.dtype,
    features,
    *,
    seed: int = 0,
    max_seq_len: int | None = None,
    device: str = "cuda",
) -> None:
    """The op's output and every gradient held to FlashAttention's rule: at most twice the error
    of the PyTorch reference run in `dtype` on the same device, both against float64."""
    inputs = cases.make_hstu_inputs(
        lengths,
        num_heads,
        dim_qk,
        dim_v,
        dtype,
        device,
        max_seq_len=max_seq_len,
        features=features,
        seed=seed,
    )
    grad_out = cases.random_grad_out(inputs)
    f64_out, f64_grads = cases.forward_backward(
        hstu_attention_reference, cases.cast_inputs(inputs, torch.float64), grad_out.double()
    )
    lowp_out, lowp_grads = cases.forward_backward(
        hstu_attention_reference, cases.cast_inputs(inputs), grad_out
    )
    if device == "cuda":
        cases.poison_cuda_allocator()  # an element the kernels never write reads back as NaN
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)

    assert out.dtype == dtype and out.device == inputs["q"].device
    cases.assert_error_bound("out", out, lowp_out, f64_out)
    assert set(grads) == {n for n in cases.GRAD_NAMES if n in inputs}
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype, f"d{name} dtype {grad.dtype}"
        cases.assert_error_bound(f"d{name}", grad, lowp_grads[name], f64_grads[name])
        if name in cases.TABLE_NAMES:
            cases.assert_table_grad_accurate(f"d{name}", grad, f64_grads[name])


@pytest.mark.parametrize("features", cases.FEATURE_SETS.values(), ids=cases.FEATURE_SETS.keys())
def test_every_feature_set_bf16_d64(features):
    check_against_reference(LENGTHS, 3, 64, 64, torch.bfloat16, features, seed=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_with_everything_on(dtype):
    check_against_reference(LENGTHS, 2, 64, 64, dtype, cases.EVERYTHING, seed=2)


@pytest.mark.parametrize("dims", HEAD_DIMS, ids=[f"dqk{a}-dv{b}" for a, b in HEAD_DIMS])
def test_every_head_dim_with_everything_on(dims):
    dim_qk, dim_v = dims
    check_against_reference(LENGTHS, 2, dim_qk, dim_v, torch.bfloat16, cases.EVERYTHING, seed=3)


@pytest.mark.parametrize("dims", [(64, 64), (128, 128), (256, 256)], ids=str)
def test_long_sequences(dims):
    """Sequences of many tiles, and max_seq_len far above the longest one."""
    lengths = [2047, 5, 1100, 64]
    check_against_reference(
        lengths, 2, *dims, torch.bfloat16, cases.EVERYTHING, seed=4, max_seq_len=4096
    )


def test_matches_cpu_op_in_float32():
    inputs = cases.make_hstu_inputs(
        LENGTHS, 2, 50, 32, torch.float32, "cuda", features=cases.EVERYTHING, seed=5
    )
    grad_out = cases.random_grad_out(inputs)
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    cpu_out, cpu_grads = cases.forward_backward(
        freescale_ext.hstu_attention, cases.cast_inputs(inputs, device="cpu"), grad_out.cpu()
    )
    for name, got, want in [("out", out, cpu_out)] + [
        (f"d{n}", grads[n], cpu_grads[n]) for n in grads
    ]:
        scale = want.abs().max().item()
        error = (got.cpu() - want).abs().max().item()
        assert error <= 1e-5 * scale, f"{name}: CUDA vs CPU error {error:.3e} (max {scale:.3e})"


def test_deterministic():
    """Two runs give bitwise-identical outputs and dq/dk/dv (no atomics on them)."""
    inputs = cases.make_hstu_inputs(
        LENGTHS, 2, 64, 64, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=6
    )
    grad_out = cases.random_grad_out(inputs)
    first_out, first = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    second_out, second = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    assert torch.equal(first_out, second_out)
    for name in ("q", "k", "v"):
        assert torch.equal(first[name], second[name]), f"d{name} differs between runs"


def test_time_buckets_match_the_reference():
    gaps = cases.bucket_test_gaps()
    assert cases.op_ts_buckets(list(gaps), "cuda") == list(gaps.values())
    assert cases.op_ts_buckets([1, 2, 10**4, 10**9], "cuda", num_buckets=10) == [0, 2, 10, 10]


def test_runs_on_the_current_stream():
    """Inputs are produced on a side stream that is still busy (a sleep kernel first): an op that
    launched on another stream would read them before they exist (and see NaN poison)."""
    inputs = cases.make_hstu_inputs(
        LENGTHS, 2, 64, 64, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=7
    )
    grad_out = cases.random_grad_out(inputs)
    expected_out, expected = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cases.poison_cuda_allocator()
        torch.cuda._sleep(100_000_000)  # ~60 ms of busy stream
        late_inputs = {
            n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()
        }
        # No validation: it copies the offsets to the host, which would wait for the stream.
        out, grads = cases.forward_backward(
            functools.partial(freescale_ext.hstu_attention, validate=False),
            cases.cast_inputs(late_inputs),  # fresh leaves
            grad_out.clone(),
        )
    stream.synchronize()  # this stream only, not the device
    assert torch.equal(out, expected_out)
    for name, grad in grads.items():
        if name in ("q", "k", "v"):
            assert torch.equal(grad, expected[name]), f"d{name}"
        else:  # table gradients are summed with atomics: equal up to summation order
            torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lengths", [[0, 0, 0], []], ids=["T=0", "B=0"])
def test_empty_batch(lengths):
    inputs = cases.make_hstu_inputs(
        lengths, 2, 64, 32, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=8
    )
    grad_out = cases.random_grad_out(inputs)
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    assert out.shape == (0, 2, 32) and out.dtype == torch.bfloat16
    for name, grad in grads.items():
        assert grad.shape == inputs[name].shape, name
        assert not grad.any(), f"d{name} must be zero for an empty batch"


def test_strided_views_and_index_tensors_match_contiguous():
    """q/k/v as column slices of a fused projection (row stride > H*d), and offsets, num_targets
    and timestamps as strided views, give bitwise the result of contiguous inputs."""
    inputs = cases.make_hstu_inputs(
        LENGTHS, 2, 32, 48, torch.float16, "cuda", features=cases.EVERYTHING, seed=9
    )
    grad_out = cases.random_grad_out(inputs)
    expected_out, expected = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)

    total, heads, dim_qk = inputs["q"].shape
    dim_v = inputs["v"].shape[2]
    fused = torch.cat([inputs[n].detach().flatten(1) for n in ("q", "k", "v")], dim=1)
    q, k, v = fused.split([heads * dim_qk, heads * dim_qk, heads * dim_v], dim=1)
    strided = {
        **inputs,
        "q": q.view(total, heads, dim_qk).requires_grad_(),
        "k": k.view(total, heads, dim_qk).requires_grad_(),
        "v": v.view(total, heads, dim_v).requires_grad_(),
    }
    for name in ("seq_offsets", "num_targets", "timestamps"):
        spaced = torch.zeros(2 * inputs[name].numel(), dtype=inputs[name].dtype, device="cuda")
        spaced[::2] = inputs[name]
        strided[name] = spaced[::2]
        assert not strided[name].is_contiguous()
    assert not strided["q"].is_contiguous()
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, strided, grad_out)
    assert torch.equal(out, expected_out)
    for name in ("q", "k", "v"):
        assert torch.equal(grads[name], expected[name]), f"d{name}"


def test_validate_false_gives_the_same_result():
    inputs = cases.make_hstu_inputs(
        LENGTHS, 2, 64, 64, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=10
    )
    inputs = {n: t.detach() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    assert torch.equal(
        freescale_ext.hstu_attention(**inputs, validate=False),
        freescale_ext.hstu_attention(**inputs),
    )


def _cuda_inputs(dim: int = 16, dtype: torch.dtype = torch.bfloat16) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "q": torch.randn(8, 2, dim, generator=gen).to("cuda", dtype),
        "k": torch.randn(8, 2, dim, generator=gen).to("cuda", dtype),
        "v": torch.randn(8, 2, dim, generator=gen).to("cuda", dtype),
        "seq_offsets": torch.tensor([0, 3, 8], dtype=torch.int32, device="cuda"),
        "max_seq_len": 8,
    }


BAD_CUDA_INPUTS = {
    "offsets on the CPU": (
        lambda: {**_cuda_inputs(), "seq_offsets": torch.tensor([0, 3, 8], dtype=torch.int32)},
        r"seq_offsets is on cpu but q is on cuda",
    ),
    "k on the CPU": (
        lambda: {**_cuda_inputs(), "k": _cuda_inputs()["k"].cpu()},
        r"k is on cpu but q is on cuda",
    ),
    "bias table on the CPU": (
        lambda: {**_cuda_inputs(), "pos_weight": torch.zeros(15)},
        r"pos_weight is on cpu but q is on cuda",
    ),
    "float64 on CUDA": (
        lambda: _cuda_inputs(dtype=torch.float64),
        r"on CUDA supports float32, float16 and bfloat16, got Double",
    ),
    "head dim 300": (
        lambda: _cuda_inputs(dim=300),
        r"head dims up to 256 are supported, got d_qk=300, d_v=300",
    ),
}


@pytest.mark.parametrize("make, message", BAD_CUDA_INPUTS.values(), ids=BAD_CUDA_INPUTS.keys())
def test_bad_input_raises(make, message):
    with pytest.raises(RuntimeError, match=message):
        freescale_ext.hstu_attention(**make())
    torch.cuda.synchronize()  # the device is still usable: nothing was launched
