"""The sm_90a HSTU forward (csrc/attention/hopper), pinned with FREESCALE_HSTU_FORWARD=sm90: held to
the float64 oracle by FlashAttention's rule on every feature set, dtype and head dim it takes, on
jagged batches whose lengths straddle its 128-row and 128-column tiles; layouts it cannot take
raise under the pin and fall back to the simple kernels otherwise."""

from __future__ import annotations

import hstu_cases as cases
import pytest
import torch
from test_hstu_attention_cuda import check_against_reference

import freescale_ext

pytestmark = pytest.mark.gpu

# Around the tile sizes (64 rows per consumer warpgroup, 128 per block, 64/128 columns), plus
# empty and one-token sequences: ~2.9K tokens.
TILE_LENGTHS = [0, 1, 2, 63, 64, 65, 127, 128, 129, 0, 255, 257, 300, 513, 1000]
SM90_DIMS = [64, 128, 256]


def _sm90_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.fixture
def pin(monkeypatch):
    """Pins the forward kernel for the duration of a test."""

    def pin_to(kernel: str) -> None:
        monkeypatch.setenv("FREESCALE_HSTU_FORWARD", kernel)

    return pin_to


@pytest.fixture
def sm90(pin):
    if not _sm90_gpu():
        pytest.skip("the sm_90a kernels need an H100/H200")
    pin("sm90")


@pytest.mark.parametrize("dim", SM90_DIMS)
@pytest.mark.parametrize("features", cases.FEATURE_SETS.values(), ids=cases.FEATURE_SETS.keys())
def test_every_feature_set_and_head_dim_bf16(sm90, features, dim):
    check_against_reference(TILE_LENGTHS, 2, dim, dim, torch.bfloat16, features, seed=dim)


@pytest.mark.parametrize("dim", SM90_DIMS)
def test_float16_with_everything_on(sm90, dim):
    check_against_reference(TILE_LENGTHS, 2, dim, dim, torch.float16, cases.EVERYTHING, seed=7)


@pytest.mark.parametrize("features", ["none", "everything"])
def test_long_sequences_many_tiles(sm90, features):
    """Full 4096-token rows (32 column tiles per row tile, several pipeline wraps) and a
    max_seq_len normalizer far above the longest sequence."""
    lengths = [4096, 2047, 5, 1100]
    check_against_reference(
        lengths,
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
        "q": q.view(total, heads, dim),
        "k": k.view(total, heads, dim),
        "v": v.view(total, heads, dim),
    }


def _forward(inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return torch.ops.freescale.hstu_attention(*cases.op_args(inputs))


def test_strided_views_match_contiguous(sm90):
    """Rows strided by a fused projection (row stride 3 H d) go through TMA unchanged."""
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS, 2, 64, 64, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=12
    )
    strided = _fused_views(inputs, lead=0)
    assert not strided["q"].is_contiguous()
    assert torch.equal(_forward(strided), _forward(inputs))


def test_deterministic(sm90):
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS, 2, 128, 128, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=13
    )
    assert torch.equal(_forward(inputs), _forward(inputs))


def test_matches_the_simple_kernel(pin):
    """Both forward kernels on the same inputs agree to bf16 rounding of P (the sm_90a kernel
    rounds P to bf16 before P V; the simple one keeps fp32)."""
    if not _sm90_gpu():
        pytest.skip("the sm_90a kernels need an H100/H200")
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS, 2, 128, 128, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=14
    )
    pin("simple")
    simple = _forward(inputs).float()
    pin("sm90")
    fast = _forward(inputs).float()
    scale = simple.abs().max().item()
    assert (fast - simple).abs().max().item() <= 2**-6 * scale


UNSUPPORTED = {
    "float32": dict(dtype=torch.float32, dim=64, lead=0, reason="float16 or bfloat16"),
    "d50": dict(dtype=torch.bfloat16, dim=50, lead=0, reason="d_qk == d_v in {64, 128, 256}"),
    "d32": dict(dtype=torch.bfloat16, dim=32, lead=0, reason="d_qk == d_v in {64, 128, 256}"),
    "misaligned": dict(dtype=torch.bfloat16, dim=64, lead=1, reason="16-byte aligned"),
}


@pytest.mark.parametrize("case", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_inputs_raise_when_pinned_and_fall_back_otherwise(pin, case):
    if not _sm90_gpu():
        pytest.skip("the sm_90a kernels need an H100/H200")
    inputs = cases.make_hstu_inputs(
        [3, 70, 0, 129],
        2,
        case["dim"],
        case["dim"],
        case["dtype"],
        "cuda",
        features=cases.EVERYTHING,
        seed=15,
    )
    inputs = _fused_views(inputs, case["lead"])
    pin("sm90")
    with pytest.raises(RuntimeError, match="FREESCALE_HSTU_FORWARD=sm90") as err:
        _forward(inputs)
    assert case["reason"] in str(err.value)
    pin("simple")
    expected = _forward(inputs)
    pin("auto")
    assert torch.equal(_forward(inputs), expected)


def test_bad_kernel_name_raises(pin):
    pin("fastest")
    inputs = cases.make_hstu_inputs([3, 5], 1, 64, 64, torch.bfloat16, "cuda", seed=16)
    with pytest.raises(RuntimeError, match="must be auto, simple or sm90"):
        _forward(inputs)


def test_autograd_uses_the_pinned_forward(sm90):
    """freescale_ext.hstu_attention (autograd) runs the pinned forward: bitwise the raw op."""
    inputs = cases.make_hstu_inputs(
        TILE_LENGTHS, 2, 64, 64, torch.bfloat16, "cuda", features=cases.EVERYTHING, seed=17
    )
    out = freescale_ext.hstu_attention(**inputs)
    assert torch.equal(out.detach(), _forward(inputs))
