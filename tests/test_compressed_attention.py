"""Token-compressed (PerSRec) attention op on CPU: against the float64 reference on random
PerSRec layouts and arbitrary masks, hand-checked mask semantics, opcheck, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import freescale_ext
from freescale_ext.compressed import compressed_attention_dense
from freescale_ext.reference import compressed_attention_reference, compressed_valid_mask


def persrec_layout(rng, history: int, recent: int, tokens: int, segment: int):
    """region and is_token of one sequence [history with a token group after every `segment`
    items (and one after the rest) | recent items]."""
    region, is_token = [], []
    seg = 0
    for start in range(0, history, segment):
        n = min(segment, history - start)
        region += [seg] * (n + tokens)  # the group takes the id of the segment before it
        is_token += [False] * n + [True] * tokens
        seg += 1
    if history == 0:  # no history yet: the group still stands (compressing nothing)
        region += [0] * tokens
        is_token += [True] * tokens
        seg = 1
    region += [seg] * recent  # recent items: a region of their own
    is_token += [False] * recent
    return region, is_token


def make_inputs(rng, lengths_spec, heads=2, dim_qk=16, dim_v=8, dtype=torch.float64, layout=True):
    regions, tokens, lengths = [], [], []
    for spec in lengths_spec:
        if layout:
            region, is_token = persrec_layout(rng, *spec)
        else:  # an arbitrary mask: random regions and tokens
            n = spec
            region = rng.integers(0, 3, n).tolist()
            is_token = (rng.random(n) < 0.3).tolist()
        regions += region
        tokens += is_token
        lengths.append(len(region))
    total = sum(lengths)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    q = torch.randn(total, heads, dim_qk, generator=gen, dtype=torch.float64)
    k = torch.randn(total, heads, dim_qk, generator=gen, dtype=torch.float64)
    v = torch.randn(total, heads, dim_v, generator=gen, dtype=torch.float64)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    return dict(
        q=q.to(dtype),
        k=k.to(dtype),
        v=v.to(dtype),
        seq_offsets=offsets,
        region=torch.tensor(regions, dtype=torch.int32),
        is_token=torch.tensor(tokens, dtype=torch.bool),
        max_seq_len=max(lengths + [1]),
    )


LAYOUTS = {
    "one group after the history": [(37, 11, 4, 1000), (64, 64, 8, 1000), (1, 1, 1, 1000)],
    "a group every 16 items": [(70, 9, 4, 16), (33, 0, 2, 16), (0, 5, 3, 16)],
    "tokens only": [(0, 0, 5, 16)],
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_matches_float64_reference(name, alpha):
    rng = np.random.default_rng(1)
    inputs = make_inputs(rng, LAYOUTS[name])
    leaves = {n: inputs[n].requires_grad_() for n in ("q", "k", "v")}
    out = freescale_ext.compressed_attention(**inputs, alpha=alpha)
    ref = compressed_attention_reference(**inputs, alpha=alpha)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, list(leaves.values()), grad)
    want = torch.autograd.grad(ref, list(leaves.values()), grad)
    for name_, g, w in zip(leaves, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name_)


def test_arbitrary_masks_with_empty_and_single_sequences():
    rng = np.random.default_rng(2)
    inputs = make_inputs(rng, [0, 1, 33, 0, 70, 2], layout=False)
    torch.testing.assert_close(
        freescale_ext.compressed_attention(**inputs),
        compressed_attention_reference(**inputs),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_error_is_bounded_by_a_same_precision_torch_implementation(dtype):
    """FlashAttention's rule: |op - ref64| <= 2 |torch_same_precision - ref64| + eps."""
    rng = np.random.default_rng(3)
    inputs = make_inputs(rng, [(100, 20, 4, 32), (45, 7, 4, 1000)])
    exact = compressed_attention_reference(**inputs)
    low = {n: (t.to(dtype) if torch.is_floating_point(t) else t) for n, t in _tensors(inputs)}
    err_op = (freescale_ext.compressed_attention(**low).double() - exact).abs().max()
    err_torch = (compressed_attention_reference(**low).double() - exact).abs().max()
    assert err_op <= 2 * err_torch + 1e-5, (err_op, err_torch)


def test_mask_semantics_by_hand():
    # [h0 h1 | t t | r0 r1]: one history segment (region 0), its token group, two recent items.
    region = torch.tensor([0, 0, 0, 0, 1, 1])
    is_token = torch.tensor([False, False, True, True, False, False])
    mask = compressed_valid_mask(region, is_token).int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],  # history: causal within its segment
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # tokens: their segment and the earlier tokens
        [1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],  # recent items: the tokens and earlier recent items, never history
        [0, 0, 1, 1, 1, 1],
    ]
    # The op agrees: a recent row's output does not move when the raw history changes.
    rng = np.random.default_rng(4)
    inputs = make_inputs(rng, [(2, 2, 2, 1000)])
    base = freescale_ext.compressed_attention(**inputs)
    changed = dict(inputs, v=inputs["v"].clone())
    changed["v"][:2] += 10.0  # history values (the tokens' values stay)
    out = freescale_ext.compressed_attention(**changed)
    torch.testing.assert_close(out[4:], base[4:])
    assert not torch.allclose(out[:2], base[:2])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    rng = np.random.default_rng(5)
    inputs = make_inputs(rng, LAYOUTS["a group every 16 items"], dtype=dtype)
    args = tuple(inputs[n] for n in ("q", "k", "v", "seq_offsets", "region", "is_token"))
    args = (*args, inputs["max_seq_len"], 0.5)
    for t in args[:3]:
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.freescale.compressed_attention.default, args)
    grad = torch.randn(args[0].shape[0], args[0].shape[1], args[2].shape[2], dtype=dtype)
    torch.library.opcheck(
        torch.ops.freescale.compressed_attention_backward.default,
        (grad, *(a.detach() if isinstance(a, torch.Tensor) else a for a in args)),
    )


def _tensors(inputs):
    """(name, value) pairs with max_seq_len passed through as a 0-dim tensor-free value."""
    return [(n, t if isinstance(t, torch.Tensor) else torch.tensor(t)) for n, t in inputs.items()]


def _bad(inputs, **changes):
    return dict(inputs, **changes)


def test_bad_input_raises_clear_errors():
    rng = np.random.default_rng(6)
    good = make_inputs(rng, [(10, 3, 2, 1000)])
    n = good["q"].shape[0]
    cases = [
        (dict(region=good["region"].float()), "region must be an integer tensor"),
        (dict(is_token=good["is_token"].int()), "is_token must be bool"),
        (dict(region=good["region"][:-1]), r"region must be \[T\]"),
        (dict(is_token=good["is_token"][:-1]), r"is_token must be \[T\]"),
        (
            dict(seq_offsets=torch.tensor([0, n + 1], dtype=torch.int32), max_seq_len=n + 5),
            "end|total|offsets",
        ),
        (dict(seq_offsets=torch.tensor([0, 9, 5, n], dtype=torch.int32)), "decreas|offsets"),
        (dict(max_seq_len=n - 1), "max_seq_len"),
        (dict(k=good["k"][:, :1]), "k"),
    ]
    for changes, message in cases:
        with pytest.raises(RuntimeError, match=message):
            freescale_ext.compressed_attention(**_bad(good, **changes))
    with pytest.raises(RuntimeError, match="region must be int32"):  # the op itself, unwrapped
        torch.ops.freescale.compressed_attention(
            good["q"],
            good["k"],
            good["v"],
            good["seq_offsets"],
            good["region"].long(),
            good["is_token"],
            good["max_seq_len"],
            1.0,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_path_matches_the_op(dtype):
    """The PyTorch dense masked path (what CUDA inputs without a kernel take: float32, head
    dims above 128) equals the op, forward and backward."""
    rng = np.random.default_rng(8)
    inputs = make_inputs(rng, [(20, 5, 3, 8), (0, 4, 2, 8), (9, 0, 3, 1000)], dtype=dtype)
    leaves = [inputs[n].requires_grad_() for n in ("q", "k", "v")]
    out = freescale_ext.compressed_attention(**inputs, alpha=0.5)
    dense = compressed_attention_dense(**inputs, alpha=0.5)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dense, out, **tol)
    grad = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, leaves, grad),
        torch.autograd.grad(dense, leaves, grad),
        strict=True,
    ):
        torch.testing.assert_close(b, a, **tol)


# Shared memory a block may opt into (CUDA C++ Programming Guide, compute capabilities table).
SHARED_PER_BLOCK = {"sm_80": 163 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024}


@pytest.mark.skipif(not freescale_ext.cuda_compiled(), reason="CUDA kernels not compiled")
def test_kernels_shared_memory_per_gpu():
    """Every head dim fits an A100 and an H100; on 99 KB GPUs (sm_86/89/120) head dims up to 64
    do and 128 does not (the backward's dK/dV kernel), which the wrapper runs densely."""
    from freescale_ext import _C

    for dim in (1, 32, 64, 100, 128):
        assert _C.compressed_shared_memory_bytes(dim) <= SHARED_PER_BLOCK["sm_80"]
    assert _C.compressed_shared_memory_bytes(64) <= SHARED_PER_BLOCK["sm_89"]
    assert _C.compressed_shared_memory_bytes(65) > SHARED_PER_BLOCK["sm_89"]
    for bad in (0, 129):
        with pytest.raises(ValueError, match="head_dim must be"):
            _C.compressed_shared_memory_bytes(bad)


@pytest.mark.skipif(not freescale_ext.cuda_compiled(), reason="CUDA kernels not compiled")
@pytest.mark.parametrize(
    "gpu, dim, fits",
    [("sm_90", 128, True), ("sm_80", 128, True), ("sm_89", 128, False), ("sm_89", 64, True)],
)
def test_kernels_fit_reads_the_device(monkeypatch, gpu, dim, fits):
    import types

    import freescale_ext.compressed as compressed

    properties = types.SimpleNamespace(shared_memory_per_block_optin=SHARED_PER_BLOCK[gpu])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    compressed._block_shared_bytes.cache_clear()
    try:
        assert compressed.kernels_fit(torch.device("cuda", 0), dim) is fits
    finally:
        compressed._block_shared_bytes.cache_clear()
