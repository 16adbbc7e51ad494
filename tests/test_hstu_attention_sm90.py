"""The sm_90a HSTU kernels (csrc/attention/hopper), pinned with FREESCALE_HSTU_FORWARD=sm90 and
FREESCALE_HSTU_BACKWARD=sm90: outputs and gradients held to the float64 oracle by
FlashAttention's rule on every feature set, dtype and head dim they take, on jagged batches whose
lengths straddle their tiles; other head dims and misaligned views run on zero-padded copies;
inputs they cannot take raise under the pin and fall back to the simple kernels otherwise."""

from __future__ import annotations

import math
import re

import hstu_cases as cases
import pytest
import torch
from test_hstu_attention_cuda import check_against_reference

import freescale_ext
from freescale_ext.reference import hstu_attention_reference

pytestmark = pytest.mark.gpu

# Around the tile sizes (64 rows per consumer warpgroup; 64 or 128 rows and columns per block
# and step), plus empty and one-token sequences: ~2.9K tokens.
TILE_LENGTHS = [0, 1, 2, 63, 64, 65, 127, 128, 129, 0, 255, 257, 300, 513, 1000]
SM90_DIMS = [64, 128, 256]
BIAS = frozenset({cases.POS_BIAS, cases.TS_BIAS})
MASK_FEATURE_SETS = {n: f for n, f in cases.FEATURE_SETS.items() if not f & BIAS}
MASK_FEATURE_SETS["all_masks"] = cases.EVERYTHING - BIAS


def _sm90_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.fixture
def pin(monkeypatch):
    """pin(forward, backward): the kernels the op runs for the rest of the test."""
    if not _sm90_gpu():
        pytest.skip("the sm_90a kernels need an H100/H200")

    def pin_to(forward: str, backward: str = "simple") -> None:
        monkeypatch.setenv("FREESCALE_HSTU_FORWARD", forward)
        monkeypatch.setenv("FREESCALE_HSTU_BACKWARD", backward)

    return pin_to


def pin_for(pin, dim: int) -> None:
    """sm_90a forward and backward (both take every head dim of SM90_DIMS)."""
    assert dim in SM90_DIMS
    pin("sm90", "sm90")


@pytest.mark.parametrize("dim", SM90_DIMS)
@pytest.mark.parametrize("features", cases.FEATURE_SETS.values(), ids=cases.FEATURE_SETS.keys())
def test_every_feature_set_and_head_dim_bf16(pin, features, dim):
    pin_for(pin, dim)
    check_against_reference(TILE_LENGTHS, 2, dim, dim, torch.bfloat16, features, seed=dim)


@pytest.mark.parametrize("dim", SM90_DIMS)
@pytest.mark.parametrize("features", MASK_FEATURE_SETS.values(), ids=MASK_FEATURE_SETS.keys())
def test_float16_every_mask(pin, features, dim):
    pin_for(pin, dim)
    check_against_reference(TILE_LENGTHS, 2, dim, dim, torch.float16, features, seed=7)


def test_float16_with_everything_on(pin):
    pin_for(pin, 128)
    check_against_reference(TILE_LENGTHS, 2, 128, 128, torch.float16, cases.EVERYTHING, seed=8)


@pytest.mark.parametrize("features", ["none", "everything"])
def test_long_sequences_many_tiles(pin, features):
    """Full 4096-token rows (32 column tiles per row tile, several wraps of the stage rings) and
    a max_seq_len normalizer far above the longest sequence."""
    pin_for(pin, 128)
    check_against_reference(
        [4096, 2047, 5, 1100],
        2,
        128,
        128,
        torch.bfloat16,
        cases.FEATURE_SETS[features],
        seed=11,
        max_seq_len=6000,
    )


def _fused_views(inputs: dict, lead: int) -> dict:
    """q, k, v as column slices of one fused projection, starting `lead` elements in."""
    total, heads, dim = inputs["q"].shape
    parts = [inputs[n].detach().flatten(1) for n in ("q", "k", "v")]
    pad = torch.zeros(total, lead, dtype=parts[0].dtype, device=parts[0].device)
    fused = torch.cat([pad, *parts], dim=1)
    q, k, v = fused[:, lead:].split(heads * dim, dim=1)
    return {
        **inputs,
        "q": q.view(total, heads, dim).requires_grad_(),
        "k": k.view(total, heads, dim).requires_grad_(),
        "v": v.view(total, heads, dim).requires_grad_(),
    }


def _forward(inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return torch.ops.freescale.hstu_attention(*cases.op_args(inputs))


def _backward(inputs: dict, grad_out: torch.Tensor):
    dq, dk, dv, _, _ = torch.ops.freescale.hstu_attention_backward(grad_out, *cases.op_args(inputs))
    return dq, dk, dv


def _all_masks_inputs(dim: int, seed: int) -> dict:
    """bf16 inputs over TILE_LENGTHS, 2 heads, d_qk = d_v = dim, every mask feature."""
    features = MASK_FEATURE_SETS["all_masks"]
    return cases.make_hstu_inputs(
        TILE_LENGTHS, 2, dim, dim, torch.bfloat16, "cuda", features=features, seed=seed
    )


def test_strided_views_match_contiguous(pin):
    """Rows strided by a fused projection (row stride 3 H d) go through TMA unchanged."""
    pin("sm90", "sm90")
    inputs = _all_masks_inputs(64, seed=12)
    strided = _fused_views(inputs, lead=0)
    assert not strided["q"].is_contiguous()
    assert torch.equal(_forward(strided), _forward(inputs))
    grad_out = cases.random_grad_out(inputs)
    _, dk, dv = _backward(strided, grad_out)
    _, dk_ref, dv_ref = _backward(inputs, grad_out)
    assert torch.equal(dk, dk_ref) and torch.equal(dv, dv_ref)


def test_deterministic_except_dq(pin):
    """Forward, dK and dV are bitwise reproducible; dQ sums fp32 partials over key blocks in any
    order (bulk reductions or atomics), so only to rounding."""
    pin("sm90", "sm90")
    inputs = _all_masks_inputs(128, seed=13)
    assert torch.equal(_forward(inputs), _forward(inputs))
    grad_out = cases.random_grad_out(inputs)
    first, second = _backward(inputs, grad_out), _backward(inputs, grad_out)
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])
    scale = first[0].float().abs().max().item()
    assert (first[0].float() - second[0].float()).abs().max().item() <= 2**-7 * scale


def _assert_matches_the_simple_kernels(pin, inputs: dict) -> None:
    """Output and dQ, dK, dV of both kernel families within 2^-6 of the largest value."""
    grad_out = cases.random_grad_out(inputs)
    pin("simple", "simple")
    simple = [_forward(inputs), *_backward(inputs, grad_out)]
    pin("sm90", "sm90")
    fast = [_forward(inputs), *_backward(inputs, grad_out)]
    for name, a, b in zip(("out", "dq", "dk", "dv"), fast, simple, strict=True):
        scale = b.float().abs().max().item()
        error = (a.float() - b.float()).abs().max().item()
        assert error <= 2**-6 * scale, f"{name}: {error:.3e} vs max {scale:.3e}"


def test_matches_the_simple_kernels(pin):
    """Both kernel families on the same inputs agree to 16-bit rounding of P and dX (the sm_90a
    kernels round them before their second products; the simple ones keep fp32)."""
    inputs = _all_masks_inputs(128, seed=14)
    _assert_matches_the_simple_kernels(pin, inputs)


def _many_items_inputs(dim: int, seed: int, features=cases.EVERYTHING) -> dict:
    """~200 sequences of 0..600 tokens with every feature: with 2 heads about 1,200 work items of
    128 rows (and as many key blocks), far more than an H100's 132 SMs, so every block of the
    persistent forward walks several (sequence, head) pairs, its K, V ring and Q buffers
    crossing item boundaries, and the tile list sorts many lengths."""
    lengths = torch.randint(0, 601, (200,), generator=torch.Generator().manual_seed(seed))
    return cases.make_hstu_inputs(
        lengths.tolist(), 2, dim, dim, torch.bfloat16, "cuda", features=features, seed=seed
    )


@pytest.mark.parametrize("dim", SM90_DIMS)
def test_many_work_items_match_the_simple_kernels(pin, monkeypatch, dim):
    """Every work item of a large jagged batch, bias included: the sm_90a kernels agree with
    the simple ones to 16-bit rounding, and the forward's three loops agree bit for bit."""
    inputs = _many_items_inputs(dim, seed=23)
    _assert_matches_the_simple_kernels(pin, inputs)
    plain_inputs = _many_items_inputs(dim, seed=24, features=MASK_FEATURE_SETS["all_masks"])
    monkeypatch.setenv("FREESCALE_HSTU_SM90_LOOP", "plain")
    plain = _forward(plain_inputs)
    for loop in ("overlap", "pingpong"):
        monkeypatch.setenv("FREESCALE_HSTU_SM90_LOOP", loop)
        assert torch.equal(_forward(plain_inputs), plain), loop


def _backward_kernels_bulk(inputs: dict, grad_out: torch.Tensor) -> list[bool]:
    """Runs the backward under the profiler: for each sm_90a backward kernel launched, whether
    it was a bulk-dQ instantiation (its last template argument; names demangled or not)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _backward(inputs, grad_out)
        torch.cuda.synchronize()
    flags = []
    for event in prof.events():
        name = event.name
        if "hstu_backward_sm90_kernel" not in name:
            continue
        if "<" in name:  # demangled: ...kernel<__nv_bfloat16, 128, true, true>(...)
            arguments = name.split("hstu_backward_sm90_kernel<", 1)[1].split(">", 1)[0]
            flags.append(arguments.split(",")[-1].strip() == "true")
        else:  # mangled: ...ILi128ELb1ELb1EEEv...
            flags.append("Lb1EEEv" in name)
    return flags


@pytest.mark.parametrize("features", ["everything", "all_masks"])
@pytest.mark.parametrize(
    "dims", [(128, 128), (100, 100), (256, 256), (200, 200), (64, 64), (50, 50)], ids=str
)
def test_bulk_dq_matches_the_atomics(pin, monkeypatch, dims, features):
    """FREESCALE_HSTU_SM90_DQ=bulk (the default) runs the bulk kernels at d = 64 and 128 (padded
    d = 50 and 100 too) with and without the bias, and at d = 256 (padded d = 200) without it,
    where the bias kernels keep the atomics: dK and dV bit for bit the atomics' (nothing else
    changes), dQ to fp32 summation order, and within the error bound."""
    pin("sm90", "sm90")
    chosen = cases.EVERYTHING if features == "everything" else MASK_FEATURE_SETS["all_masks"]
    bulk_kernel = dims[0] <= 128 or features != "everything"
    inputs = _many_items_inputs(dims[0], seed=25, features=chosen)
    grad_out = cases.random_grad_out(inputs)
    monkeypatch.delenv("FREESCALE_HSTU_SM90_DQ", raising=False)
    assert _backward_kernels_bulk(inputs, grad_out) == [bulk_kernel]
    monkeypatch.setenv("FREESCALE_HSTU_SM90_DQ", "atomic")
    atomic = _backward(inputs, grad_out)
    assert _backward_kernels_bulk(inputs, grad_out) == [False]
    monkeypatch.setenv("FREESCALE_HSTU_SM90_DQ", "bulk")
    # (Else grad_q could reuse the atomics' freed block and hold their dQ where bulk left a row
    # unwritten.)
    cases.poison_cuda_allocator()
    bulk = _backward(inputs, grad_out)
    assert _backward_kernels_bulk(inputs, grad_out) == [bulk_kernel]
    assert torch.equal(bulk[1], atomic[1]) and torch.equal(bulk[2], atomic[2])
    scale = atomic[0].float().abs().max().item()
    assert (bulk[0].float() - atomic[0].float()).abs().max().item() <= 2**-7 * scale
    check_against_reference_of(
        cases.make_hstu_inputs(
            TILE_LENGTHS, 2, *dims, torch.bfloat16, "cuda", features=chosen, seed=26
        )
    )


# Head dims and layouts the kernels run on zero-padded copies (padded to 64/128/256).
PADDED = {
    "ml1m_d25": dict(dims=(25, 25), lead=0),
    "ml1m_d50": dict(dims=(50, 50), lead=0),
    "d32": dict(dims=(32, 32), lead=0),
    "dqk64_dv32": dict(dims=(64, 32), lead=0),
    "d200": dict(dims=(200, 200), lead=0),
    "misaligned_view": dict(dims=(64, 64), lead=1),
}


@pytest.mark.parametrize("case", PADDED.values(), ids=PADDED.keys())
def test_padded_head_dims_and_layouts(pin, case):
    """Pinned to sm90, these run (padded) and meet the error bound, bias tables included."""
    dim_qk, dim_v = case["dims"]
    pin("sm90", "sm90")
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS,
        2,
        dim_qk,
        dim_v,
        torch.bfloat16,
        "cuda",
        features=cases.EVERYTHING,
        seed=15,
    )
    if case["lead"]:
        inputs = _fused_views(inputs, case["lead"])
        assert inputs["q"].data_ptr() % 16 != 0
    check_against_reference_of(inputs)


@pytest.mark.parametrize("lengths", [[0, 0], [1]], ids=["empty", "one_token"])
def test_padded_calls_with_no_rows_or_one(pin, lengths):
    """The one-launch padding copies nothing for an empty batch (its tensors have no storage),
    and reads a one-token q through a row stride smaller than a row, which torch allows there."""
    pin("sm90", "sm90")
    inputs = cases.make_hstu_inputs(
        lengths, 2, 25, 25, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=16
    )
    if sum(lengths) == 1:
        q = inputs["q"].detach()
        strided = torch.empty_strided(q.shape, (7, q.size(2), 1), dtype=q.dtype, device="cuda")
        inputs["q"] = strided.copy_(q).requires_grad_()
        assert inputs["q"].stride(0) < q.size(1) * q.size(2)
    check_against_reference_of(inputs)


def check_against_reference_of(inputs: dict) -> None:
    """check_against_reference on ready-made inputs (views included)."""
    grad_out = cases.random_grad_out(inputs)
    f64_out, f64_grads = cases.forward_backward(
        hstu_attention_reference, cases.cast_inputs(inputs, torch.float64), grad_out.double()
    )
    lowp_out, lowp_grads = cases.forward_backward(
        hstu_attention_reference, cases.cast_inputs(inputs), grad_out
    )
    cases.poison_cuda_allocator()
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    cases.assert_error_bound("out", out, lowp_out, f64_out)
    for name, grad in grads.items():
        cases.assert_error_bound(f"d{name}", grad, lowp_grads[name], f64_grads[name])
        if name in cases.TABLE_NAMES:
            cases.assert_table_grad_accurate(f"d{name}", grad, f64_grads[name])


def _timestamps(total: int, span: str, seed: int) -> torch.Tensor:
    """Millisecond-scale timestamps whose gaps keep every step of the kernels within 2^30 of
    its reference time ("narrow"), put every step far outside ("wide": gaps up to 2^40), jump by
    2^31 every ~200 tokens so that some steps hold a jump ("mixed"), stay flat between jumps
    every ~150 tokens ("plateaus": a step's rows then see one bucket each, the forward's and
    backward's one-bucket warps), all non-decreasing, or step back now and then ("unsorted":
    times that do not ascend, some visible gaps negative)."""
    gen = torch.Generator().manual_seed(seed)
    if span == "wide":
        log_gap = torch.rand(total, generator=gen, dtype=torch.float64) * 40 * math.log(2)
        gaps = log_gap.exp().round().long()
    elif span == "plateaus":
        gaps = torch.zeros(total, dtype=torch.long)
        jumps = torch.rand(total, generator=gen) < 1 / 150
        gaps[jumps] = torch.randint(1, 10**6, (int(jumps.sum()),), generator=gen)
    elif span == "unsorted":
        gaps = torch.randint(0, 3000, (total,), generator=gen)
        gaps[torch.rand(total, generator=gen) < 1 / 50] *= -40
    else:
        gaps = torch.randint(0, 3000, (total,), generator=gen)
        if span == "mixed":
            gaps[torch.rand(total, generator=gen) < 1 / 200] += 2**31
    return 1_600_000_000_000 + gaps.cumsum(0)


@pytest.mark.parametrize("span", ["narrow", "wide", "mixed", "plateaus", "unsorted"])
@pytest.mark.parametrize("features", ["everything", "pos_ts_bias"])
def test_time_gap_spans_take_every_bucket_path(pin, span, features):
    """A step whose times all lie within 2^30 of its reference time and ascend buckets its gaps
    with the cell table, or, under a plain causal mask, with two buckets per row where a
    row's gaps span no more (one, without a compare, where no row of a warp steps); any other
    with the threshold table. Each, and a mix of them
    across the steps of one batch, gives the reference's buckets (outputs and every gradient
    within the bound, the time table's included)."""
    pin("sm90", "sm90")
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS,
        2,
        128,
        128,
        torch.bfloat16,
        "cuda",
        features=cases.FEATURE_SETS[features],
        seed=27,
    )
    inputs["timestamps"] = _timestamps(inputs["timestamps"].numel(), span, seed=28).cuda()
    check_against_reference_of(inputs)


@pytest.mark.parametrize("entries", [11, 129, 130, 1024])
def test_time_table_sizes_take_both_slot_layouts(pin, entries):
    """The backward sums the time table's gradient in one shared copy per accumulator row group
    while the table has at most 129 entries, in one copy beyond: a small table, the largest
    with copies, the smallest without, and the largest the kernels take, each against the
    reference (every gradient within the bound). Jumps of 2^56-2^57 in the times put pairs in
    buckets 129 and up, so every table's last entry (the clamp) gets gradient: the last slot
    of each copy, and the slot a copy layout would overrun with 130 entries."""
    pin("sm90", "sm90")
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS, 2, 128, 128, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=29
    )
    gen = torch.Generator().manual_seed(entries)
    table = torch.randn(entries, generator=gen, dtype=torch.float64) * 0.5
    inputs["ts_weight"] = table.float().cuda().requires_grad_()
    total = inputs["timestamps"].numel()
    gaps = torch.randint(0, 3000, (total,), generator=gen)
    jumps = torch.rand(total, generator=gen) < 1 / 100  # ~30: the times stay below 2^63
    gaps[jumps] += torch.randint(2**56, 2**57, (int(jumps.sum()),), generator=gen)
    inputs["timestamps"] = gaps.cumsum(0).cuda()
    check_against_reference_of(inputs)


def _assert_auto_falls_back(pin, inputs: dict, grad_out: torch.Tensor) -> None:
    """With `auto`, a call the sm_90a kernels refuse gives the simple kernels' results."""
    pin("simple", "simple")
    expected = [_forward(inputs), *_backward(inputs, grad_out)]
    pin("auto", "auto")
    got = [_forward(inputs), *_backward(inputs, grad_out)]
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_float32_raises_when_pinned_and_falls_back_otherwise(pin):
    inputs = cases.make_hstu_inputs(
        [3, 70, 0, 129], 2, 64, 64, torch.float32, "cuda", features=cases.EVERYTHING, seed=15
    )
    grad_out = cases.random_grad_out(inputs)
    for variable, run in (("FORWARD", _forward), ("BACKWARD", lambda x: _backward(x, grad_out))):
        pin("sm90", "sm90") if variable == "FORWARD" else pin("simple", "sm90")
        with pytest.raises(RuntimeError, match=f"FREESCALE_HSTU_{variable}=sm90") as err:
            run(inputs)
        assert "float16 or bfloat16" in str(err.value)
    _assert_auto_falls_back(pin, inputs, grad_out)


def test_time_table_limit_raises_when_pinned(pin):
    """Both kernels stage the time-bias table in shared memory: one entry too many is refused
    with the reason, forward and backward, and `auto` falls back to the simple kernels."""
    inputs = cases.make_hstu_inputs(
        [3, 70], 1, 64, 64, torch.bfloat16, "cuda", features=[cases.TS_BIAS], seed=16
    )
    inputs["ts_weight"] = torch.randn(1025, device="cuda") * 0.1  # one too many
    grad_out = cases.random_grad_out(inputs)
    pin("sm90", "sm90")
    with pytest.raises(RuntimeError, match="FREESCALE_HSTU_FORWARD=sm90") as err:
        _forward(inputs)
    assert "at most 1024 entries" in str(err.value)
    with pytest.raises(RuntimeError, match="FREESCALE_HSTU_BACKWARD=sm90") as err:
        _backward(inputs, grad_out)
    assert "at most 1024 entries" in str(err.value)
    _assert_auto_falls_back(pin, inputs, grad_out)


def test_time_buckets_match_the_reference(pin):
    """The sm_90a kernels' buckets on the device (cell table below 2^30, threshold table
    above), against the float64 reference (fp16 output: the op_ts_buckets readout needs its
    precision)."""
    pin("sm90", "sm90")
    gaps = cases.bucket_test_gaps()
    assert cases.op_ts_buckets(list(gaps), "cuda", dtype=torch.float16) == list(gaps.values())
    got = cases.op_ts_buckets([1, 2, 10**4, 10**9], "cuda", num_buckets=10, dtype=torch.float16)
    assert got == [0, 2, 10, 10]


def test_bad_kernel_name_raises(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv("FREESCALE_HSTU_FORWARD", "fastest")
    inputs = cases.make_hstu_inputs([3, 5], 1, 64, 64, torch.bfloat16, "cuda", seed=17)
    with pytest.raises(RuntimeError, match="must be auto, simple or sm90"):
        _forward(inputs)
    monkeypatch.setenv("FREESCALE_HSTU_FORWARD", "auto")  # (the simple kernels ignore it)
    monkeypatch.setenv("FREESCALE_HSTU_SM90_LOOP", "ping-pong")
    with pytest.raises(
        RuntimeError, match="must be auto, plain, overlap or pingpong, got 'ping-pong'"
    ):
        _forward(inputs)
    monkeypatch.setenv("FREESCALE_HSTU_SM90_DQ", "atomics")
    grad_out = cases.random_grad_out(inputs)
    with pytest.raises(RuntimeError, match="must be atomic or bulk, got 'atomics'"):
        _backward(inputs, grad_out)


def test_autograd_uses_the_pinned_kernels(pin):
    """freescale_ext.hstu_attention (autograd) runs the pinned kernels: bitwise the raw ops."""
    pin("sm90", "sm90")
    inputs = _all_masks_inputs(64, seed=18)
    grad_out = cases.random_grad_out(inputs)
    out, grads = cases.forward_backward(freescale_ext.hstu_attention, inputs, grad_out)
    assert torch.equal(out, _forward(inputs))
    _, dk, dv = _backward(inputs, grad_out)
    assert torch.equal(grads["k"], dk) and torch.equal(grads["v"], dv)


@pytest.mark.parametrize("dims", [(64, 64), (4, 3)], ids=["d64", "padded_d4_d3"])
def test_opcheck(pin, dims):
    """The ops' registrations (schema, fake impls, autograd) hold with the sm_90a kernels too,
    padded outputs included (they come back contiguous, as the fake impls say)."""
    pin("sm90", "sm90")
    inputs = cases.make_hstu_inputs(
        [0, 3, 7, 130], 2, *dims, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=19
    )
    plain = {n: t.detach() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    torch.library.opcheck(torch.ops.freescale.hstu_attention.default, cases.op_args(inputs))
    args = (cases.random_grad_out(plain), *cases.op_args(plain))
    torch.library.opcheck(torch.ops.freescale.hstu_attention_backward.default, args)


@pytest.mark.parametrize("dims", [(128, 128), (256, 256), (50, 50)], ids=str)
def test_tile_list_and_full_grid_agree(pin, monkeypatch, dims):
    """The kernels' tile list (heaviest tiles first) and the full grid it replaces
    (FREESCALE_HSTU_TILE_LIST=0) compute the same forward, dK and dV, bit for bit: 128-row and
    (d = 256 backward) 64-row key tiles, and a padded call."""
    pin("sm90", "sm90")
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS,
        2,
        *dims,
        torch.bfloat16,
        "cuda",
        features=cases.EVERYTHING,
        seed=20,
        max_seq_len=1500,
    )
    grad_out = cases.random_grad_out(inputs)
    listed = [_forward(inputs), *_backward(inputs, grad_out)]
    monkeypatch.setenv("FREESCALE_HSTU_TILE_LIST", "0")
    full = [_forward(inputs), *_backward(inputs, grad_out)]
    assert torch.equal(listed[0], full[0])
    assert torch.equal(listed[2], full[2]) and torch.equal(listed[3], full[3])
    scale = full[1].float().abs().max().item()
    assert (listed[1].float() - full[1].float()).abs().max().item() <= 2**-7 * scale


def _forward_loops(inputs: dict) -> list[int]:
    """Runs the forward under the profiler: for each sm_90a forward kernel launched, its loop
    (hopper::FwdLoop, the last template argument: 0 plain, 1 overlap, 2 ping-pong; names
    demangled, `...(freescale::attention::hopper::FwdLoop)2>`, or not, `...FwdLoopE2EEEv`)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _forward(inputs)
        torch.cuda.synchronize()
    loops = []
    for event in prof.events():
        if "hstu_forward_sm90_kernel" in event.name:
            found = re.search(r"FwdLoop\)(\d)>|FwdLoopE(\d)E", event.name)
            assert found, event.name
            loops.append(int(found.group(1) or found.group(2)))
    return loops


@pytest.mark.parametrize(
    "dim, max_seq_len, features, loop",
    [
        (128, 4096, frozenset(), 2),  # long d = 128: ping-pong
        (128, 4095, frozenset(), 0),
        (128, 8192, BIAS, 0),  # the bias runs the plain loop only
        (64, 8192, frozenset(), 0),  # other head dims are not measured with ping-pong
        (256, 8192, frozenset(), 0),
    ],
    ids=["d128_long", "d128_short", "d128_bias", "d64_long", "d256_long"],
)
def test_the_default_loop_is_picked_by_head_dim_and_length(
    pin, monkeypatch, dim, max_seq_len, features, loop
):
    """FREESCALE_HSTU_SM90_LOOP unset (auto): ping-pong at d = 128 where max_seq_len >= 4096
    and without the bias, else the plain loop; a named loop is taken as named."""
    pin("sm90", "simple")
    inputs = cases.make_hstu_inputs(
        [300, 0, 129],
        2,
        dim,
        dim,
        torch.bfloat16,
        "cuda",
        features=features,
        seed=27,
        max_seq_len=max_seq_len,
    )
    monkeypatch.delenv("FREESCALE_HSTU_SM90_LOOP", raising=False)
    assert _forward_loops(inputs) == [loop]
    if not features:
        for name, number in (("plain", 0), ("overlap", 1), ("pingpong", 2)):
            monkeypatch.setenv("FREESCALE_HSTU_SM90_LOOP", name)
            assert _forward_loops(inputs) == [number], name


@pytest.mark.parametrize("loop", ["overlap", "pingpong"])
@pytest.mark.parametrize("dim", SM90_DIMS)
def test_overlapped_forward_equals_the_plain_loop(pin, monkeypatch, dim, loop):
    """FREESCALE_HSTU_SM90_LOOP=overlap (the next step's Q K^T beside this step's P V) and
    pingpong (also the two consumer warpgroups taking turns) compute the same products in the
    same order: bit for bit the plain loop, on every mask; and they meet the error bound on
    long sequences."""
    pin("sm90", "simple")
    for name, features in MASK_FEATURE_SETS.items():
        inputs = cases.make_hstu_inputs(
            TILE_LENGTHS, 2, dim, dim, torch.bfloat16, "cuda", features=features, seed=21
        )
        monkeypatch.setenv("FREESCALE_HSTU_SM90_LOOP", "plain")
        plain = _forward(inputs)
        monkeypatch.setenv("FREESCALE_HSTU_SM90_LOOP", loop)
        assert torch.equal(_forward(inputs), plain), name
    check_against_reference(
        [4096, 2047, 5, 1100],
        2,
        dim,
        dim,
        torch.bfloat16,
        frozenset(),
        seed=22,
        max_seq_len=6000,
    )
