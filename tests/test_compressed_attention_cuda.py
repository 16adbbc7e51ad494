"""Block-sparse compressed-attention CUDA kernels: output and q/k/v gradients against the float64
reference by FlashAttention's rule on PerSRec layouts (one group, segments, long tails, lengths
0 and 1, non-multiples of the 64-row tile) and arbitrary masks, the dense-tile mode, strided
views, determinism, streams, dispatch and bad input."""

from __future__ import annotations

import hstu_cases as cases
import numpy as np
import pytest
import torch
from test_compressed_attention import make_inputs

import freescale_ext
from freescale_ext.compressed import compressed_attention_dense, has_kernel
from freescale_ext.reference import compressed_attention_reference

pytestmark = pytest.mark.gpu

# (history, recent, tokens, segment) per sequence.
LAYOUTS = {
    "one group, tails": [(150, 37, 8, 10_000), (700, 64, 16, 10_000), (1, 1, 1, 10_000)],
    "segments of 64": [(300, 50, 4, 64), (64, 0, 16, 64), (0, 0, 0, 64)],
    "segments of 100, long": [(1000, 130, 8, 100), (5, 3, 2, 100), (0, 5, 3, 100)],
    "tokens only": [(0, 0, 5, 16), (0, 0, 70, 16)],
}
DIMS = [(25, 25), (32, 32), (50, 50), (64, 64), (128, 128), (64, 32), (32, 64)]
DTYPES = [torch.bfloat16, torch.float16]


def _cuda(inputs: dict, dtype: torch.dtype) -> dict:
    return {
        n: (t.to("cuda", dtype) if torch.is_floating_point(t) else t.cuda())
        if isinstance(t, torch.Tensor)
        else t
        for n, t in inputs.items()
    }


def _run(fn, inputs: dict, grad_out: torch.Tensor, **kwargs):
    leaves = {n: inputs[n].detach().requires_grad_() for n in ("q", "k", "v")}
    out = fn(**{**inputs, **leaves}, **kwargs)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return out.detach(), dict(zip(leaves, grads, strict=True))


def check(spec, dtype, dims=(32, 32), heads=2, alpha=1.0, layout=True, skip=True, seed=0):
    rng = np.random.default_rng(seed)
    f64 = make_inputs(rng, spec, heads=heads, dim_qk=dims[0], dim_v=dims[1], layout=layout)
    low = _cuda(f64, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    grad64 = torch.randn(f64["q"].shape[0], heads, dims[1], generator=gen, dtype=torch.float64)
    want_out, want = _run(compressed_attention_reference, f64, grad64, alpha=alpha)
    low_out, low_grads = _run(
        compressed_attention_reference, low, grad64.to("cuda", dtype), alpha=alpha
    )
    assert has_kernel(low["q"], low["k"], low["v"])
    cases.poison_cuda_allocator()
    out, grads = _run(
        freescale_ext.compressed_attention,
        low,
        grad64.to("cuda", dtype),
        alpha=alpha,
        skip_empty_tiles=skip,
    )
    assert out.dtype == dtype and out.is_cuda
    cases.assert_error_bound("out", out, low_out, want_out)
    for name in ("q", "k", "v"):
        cases.assert_error_bound(f"d{name}", grads[name], low_grads[name], want[name])
    return out, grads


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("skip", [True, False], ids=["block-sparse", "dense-tiles"])
def test_persrec_layouts_bf16(layout, skip):
    check(LAYOUTS[layout], torch.bfloat16, dims=(64, 64), alpha=0.5, skip=skip, seed=3)


@pytest.mark.parametrize("dims", DIMS, ids=[f"{a}x{b}" for a, b in DIMS])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_head_dims_and_dtypes(dims, dtype):
    check(LAYOUTS["segments of 64"] + LAYOUTS["one group, tails"][:1], dtype, dims=dims, seed=4)


@pytest.mark.parametrize("skip", [True, False], ids=["block-sparse", "dense-tiles"])
def test_arbitrary_masks_lengths_0_1_and_tile_edges(skip):
    """Random regions (not monotone) and tokens anywhere: the tile-skip test must stay exact."""
    check([0, 1, 63, 64, 65, 0, 200, 513], torch.bfloat16, layout=False, skip=skip, seed=5)


def test_dense_tiles_equal_block_sparse_to_rounding():
    out_s, grads_s = check(LAYOUTS["segments of 100, long"], torch.bfloat16, skip=True, seed=6)
    out_d, grads_d = check(LAYOUTS["segments of 100, long"], torch.bfloat16, skip=False, seed=6)
    torch.testing.assert_close(out_s, out_d, rtol=2e-2, atol=1e-3)
    for name in grads_s:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=2e-2, atol=1e-3)


def test_strided_views_of_a_fused_projection():
    rng = np.random.default_rng(7)
    base = _cuda(make_inputs(rng, LAYOUTS["one group, tails"], heads=2, dim_qk=64), torch.bfloat16)
    total = base["q"].shape[0]
    fused = torch.randn(total, 2 * 64 * 2 + 2 * 64 + 8, device="cuda", dtype=torch.bfloat16)
    q = fused[:, :128].view(total, 2, 64)
    k = fused[:, 128:256].view(total, 2, 64)
    v = fused[:, 256:384].view(total, 2, 64)
    assert q.stride(0) == fused.shape[1]
    args = {**base, "q": q, "k": k, "v": v}
    got = freescale_ext.compressed_attention(**args)
    packed = {**args, "q": q.contiguous(), "k": k.contiguous(), "v": v.contiguous()}
    torch.testing.assert_close(got, freescale_ext.compressed_attention(**packed), rtol=0, atol=0)


def test_deterministic_and_on_the_current_stream():
    rng = np.random.default_rng(8)
    inputs = _cuda(
        make_inputs(rng, LAYOUTS["segments of 100, long"], dim_qk=64, dim_v=64), torch.bfloat16
    )
    grad = torch.randn(inputs["q"].shape[0], 2, 64, device="cuda", dtype=torch.bfloat16)
    first = _run(freescale_ext.compressed_attention, inputs, grad)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        second = _run(freescale_ext.compressed_attention, inputs, grad)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    for name in first[1]:
        torch.testing.assert_close(first[1][name], second[1][name], rtol=0, atol=0)


def test_other_inputs_take_the_dense_path():
    """float32 and head dims above 128 have no tensor-core kernel: the wrapper computes them
    densely (and says so through has_kernel)."""
    rng = np.random.default_rng(9)
    inputs = make_inputs(rng, LAYOUTS["segments of 64"], dim_qk=16, dim_v=8)
    want = compressed_attention_reference(**inputs)
    f32 = _cuda(inputs, torch.float32)
    assert not has_kernel(f32["q"], f32["k"], f32["v"])
    got = freescale_ext.compressed_attention(**f32)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-5)
    wide = _cuda(make_inputs(rng, [(20, 5, 2, 8)], dim_qk=160, dim_v=8), torch.bfloat16)
    assert not has_kernel(wide["q"], wide["k"], wide["v"])
    torch.testing.assert_close(
        freescale_ext.compressed_attention(**wide).float(),
        compressed_attention_dense(**wide).float(),
        rtol=0,
        atol=0,
    )


def test_the_op_rejects_what_the_kernels_cannot_run():
    rng = np.random.default_rng(10)
    inputs = _cuda(make_inputs(rng, [(20, 5, 2, 8)], dim_qk=16, dim_v=8), torch.float32)
    args = [inputs[n] for n in ("q", "k", "v", "seq_offsets", "region", "is_token")]
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        torch.ops.freescale.compressed_attention(*args, inputs["max_seq_len"], 1.0)
    wide = _cuda(make_inputs(rng, [(20, 5, 2, 8)], dim_qk=160, dim_v=8), torch.bfloat16)
    args = [wide[n] for n in ("q", "k", "v", "seq_offsets", "region", "is_token")]
    with pytest.raises(RuntimeError, match="head dims up to 128"):
        torch.ops.freescale.compressed_attention(*args, wide["max_seq_len"], 1.0)
    on_cpu = {**_cuda(make_inputs(rng, [(20, 5, 2, 8)]), torch.bfloat16)}
    on_cpu["region"] = on_cpu["region"].cpu()
    with pytest.raises(RuntimeError, match="must be on q's device"):
        freescale_ext.compressed_attention(**on_cpu, validate=False)


def test_opcheck_bf16():
    rng = np.random.default_rng(11)
    inputs = _cuda(make_inputs(rng, LAYOUTS["segments of 64"], dim_qk=32, dim_v=32), torch.bfloat16)
    args = [inputs[n] for n in ("q", "k", "v", "seq_offsets", "region", "is_token")]
    for t in args[:3]:
        t.requires_grad_()
    scalars = (inputs["max_seq_len"], 0.5, True)
    torch.library.opcheck(torch.ops.freescale.compressed_attention.default, (*args, *scalars))
    grad = torch.randn_like(args[2])
    torch.library.opcheck(
        torch.ops.freescale.compressed_attention_backward.default,
        (grad, *(a.detach() for a in args), *scalars),
    )
