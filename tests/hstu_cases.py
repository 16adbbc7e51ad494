"""Shared helpers for the HSTU attention tests (CPU and CUDA).

- `make_hstu_inputs`: random jagged inputs, as keyword arguments of `hstu_attention` (and of
  `hstu_attention_reference`, which has the same contract).
- Length presets and feature sets to parametrize over.
- `error_bound`: FlashAttention's rule for low-precision kernels.
- `poison_cuda_allocator`: makes outputs a kernel forgot to write show up as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from freescale_ext.reference import NUM_TS_BUCKETS

# Lengths around the kernels' tiles (32 rows, 16 for head dims > 128): empty sequences, a single
# token, and lengths just off multiples of 16 and 32.
EDGE_LENGTHS = (0, 1, 17, 33, 47, 5, 0, 16, 31, 64)
# One long sequence among short ones, as in real batches; 300+ spans many tiles.
LONG_TAIL_LENGTHS = (3, 9, 321, 1, 24, 0, 7, 40)

CONTEXTUAL_LEN = 3
MAX_ATTN_LEN = 20  # a local window that is not a multiple of a tile

# Features a call can switch on; FEATURE_SETS are the combinations tests parametrize over.
TARGETS, CONTEXTUAL, WINDOW, POS_BIAS, TS_BIAS = (
    "num_targets",
    "contextual",
    "max_attn_len",
    "pos_bias",
    "ts_bias",
)
EVERYTHING = frozenset({TARGETS, CONTEXTUAL, WINDOW, POS_BIAS, TS_BIAS})
FEATURE_SETS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "num_targets": frozenset({TARGETS}),
    "contextual": frozenset({CONTEXTUAL}),
    "max_attn_len": frozenset({WINDOW}),
    "pos_bias": frozenset({POS_BIAS}),
    "ts_bias": frozenset({TS_BIAS}),
    "pos_ts_bias": frozenset({POS_BIAS, TS_BIAS}),
    "everything": EVERYTHING,
}

# The arguments of hstu_attention that get gradients, in the order tests report them.
GRAD_NAMES = ("q", "k", "v", "pos_weight", "ts_weight")
TABLE_NAMES = ("pos_weight", "ts_weight")


def make_hstu_inputs(
    lengths: Iterable[int],
    num_heads: int,
    dim_qk: int,
    dim_v: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    *,
    max_seq_len: int | None = None,
    features: Iterable[str] = (),
    seed: int = 0,
    alpha: float | None = None,
) -> dict:
    """Random jagged inputs as keyword arguments of `hstu_attention`.

    Values are drawn on the CPU from `seed` in float64 and then cast, so the same seed gives the
    same problem on every device and in every dtype. q, k, v and the bias tables (float32, as
    model parameters are) require grad. `max_seq_len` defaults to a little more than the longest
    sequence, so that a kernel normalizing by the actual length is caught.
    """
    lengths = [int(n) for n in lengths]
    features = frozenset(features)
    unknown = features - EVERYTHING
    assert not unknown, f"unknown features {sorted(unknown)}"
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    if max_seq_len is None:
        max_seq_len = max(lengths, default=0) + 3

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    def leaf(x: torch.Tensor, leaf_dtype: torch.dtype) -> torch.Tensor:
        return x.to(device=device, dtype=leaf_dtype).requires_grad_()

    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    inputs = {
        "q": leaf(randn(total, num_heads, dim_qk), dtype),
        "k": leaf(randn(total, num_heads, dim_qk), dtype),
        "v": leaf(randn(total, num_heads, dim_v), dtype),
        "seq_offsets": offsets.to(device=device, dtype=torch.int32),
        "max_seq_len": max_seq_len,
        # Scores of order one whatever the head dim, so SiLU sees both of its regimes.
        "alpha": alpha if alpha is not None else 1.0 / math.sqrt(dim_qk),
    }
    if TARGETS in features:
        targets = [int(torch.randint(0, n + 1, (), generator=gen)) for n in lengths]
        inputs["num_targets"] = torch.tensor(targets, dtype=torch.int32, device=device)
    if CONTEXTUAL in features:
        inputs["contextual_len"] = CONTEXTUAL_LEN
    if WINDOW in features:
        inputs["max_attn_len"] = MAX_ATTN_LEN
    if POS_BIAS in features:
        inputs["pos_weight"] = leaf(randn(2 * max_seq_len - 1, scale=0.5), torch.float32)
    if TS_BIAS in features:
        inputs["ts_weight"] = leaf(randn(NUM_TS_BUCKETS + 1, scale=0.5), torch.float32)
        inputs["timestamps"] = _random_timestamps(lengths, gen).to(device)
    return inputs


def _random_timestamps(lengths: list[int], gen: torch.Generator) -> torch.Tensor:
    """int64 [T], non-decreasing within each sequence, gaps from 0 to ~1e8 (buckets 0 to ~60)."""
    parts = []
    for n in lengths:
        log_gap = torch.rand(n, generator=gen, dtype=torch.float64) * 18.0
        gaps = torch.exp(log_gap).round().long()
        gaps[torch.rand(n, generator=gen) < 0.1] = 0  # repeated timestamps: bucket 0
        start = int(torch.randint(1_500_000_000, 1_700_000_000, (), generator=gen))
        parts.append(start + gaps.cumsum(0))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def cast_inputs(
    inputs: dict, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> dict:
    """A copy of `inputs` with fresh leaves: q, k, v in `dtype` (bias tables float64 when `dtype`
    is float64, else unchanged float32), everything on `device`."""
    out = {}
    for name, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            out[name] = value
            continue
        target = value.dtype
        if name in ("q", "k", "v") and dtype is not None:
            target = dtype
        elif name in TABLE_NAMES and dtype == torch.float64:
            target = torch.float64
        moved = value.detach().to(device=device or value.device, dtype=target)
        out[name] = moved.requires_grad_() if value.requires_grad else moved
    return out


def op_args(inputs: dict) -> tuple:
    """`inputs` as the positional arguments of `torch.ops.freescale.hstu_attention`."""
    return (
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["seq_offsets"],
        inputs["max_seq_len"],
        inputs.get("alpha", 1.0),
        inputs.get("num_targets"),
        inputs.get("contextual_len", 0),
        inputs.get("max_attn_len", 0),
        inputs.get("pos_weight"),
        inputs.get("ts_weight"),
        inputs.get("timestamps"),
    )


def random_grad_out(inputs: dict, seed: int = 1) -> torch.Tensor:
    """A random upstream gradient shaped like the output, in q's dtype and on q's device."""
    q, v = inputs["q"], inputs["v"]
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(q.shape[0], q.shape[1], v.shape[2], generator=gen, dtype=torch.float64)
    return grad.to(device=q.device, dtype=q.dtype)


def forward_backward(
    attention: Callable[..., torch.Tensor], inputs: dict, grad_out: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and the gradients of <output, grad_out> wrt every differentiable input.

    An input the output does not depend on (all sequences empty) gets a zero gradient.
    """
    out = attention(**inputs)
    leaves = {n: inputs[n] for n in GRAD_NAMES if n in inputs and inputs[n].requires_grad}
    grads: tuple[torch.Tensor | None, ...] = (None,) * len(leaves)
    if out.requires_grad:
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out, allow_unused=True)
    return out.detach(), {
        name: torch.zeros_like(leaf) if grad is None else grad
        for (name, leaf), grad in zip(leaves.items(), grads, strict=True)
    }


# The rounding term of the error bound, relative to the largest reference value: about one
# unit in the last place of the output dtype (float32 gets 1e-5, a little slack for long sums).
_ROUNDING_RTOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2**-10,
    torch.bfloat16: 2**-7,
}


@dataclass(frozen=True)
class ErrorBound:
    error: float  # max |out - float64 reference|
    reference_error: float  # max |same-precision PyTorch reference - float64 reference|
    bound: float  # 2 * reference_error + rounding

    @property
    def ok(self) -> bool:
        return self.error <= self.bound

    def __str__(self) -> str:
        return (
            f"error {self.error:.3e} vs bound {self.bound:.3e} "
            f"(same-precision reference error {self.reference_error:.3e})"
        )


def error_bound(
    out: torch.Tensor, out_lowp_ref: torch.Tensor, out_f64_ref: torch.Tensor
) -> ErrorBound:
    """FlashAttention's rule: a kernel may be at most twice as far from the float64 reference as
    the plain PyTorch implementation run in the kernel's own dtype, plus a rounding term."""
    assert out.shape == out_f64_ref.shape == out_lowp_ref.shape, (
        out.shape,
        out_lowp_ref.shape,
        out_f64_ref.shape,
    )
    if out_f64_ref.numel() == 0:
        return ErrorBound(0.0, 0.0, 0.0)
    ref = out_f64_ref.detach().double().cpu()
    error = (out.detach().double().cpu() - ref).abs().max().item()
    reference_error = (out_lowp_ref.detach().double().cpu() - ref).abs().max().item()
    rounding = _ROUNDING_RTOL[out.dtype] * ref.abs().max().item()
    return ErrorBound(error, reference_error, 2.0 * reference_error + rounding)


def assert_error_bound(
    name: str, out: torch.Tensor, out_lowp_ref: torch.Tensor, out_f64_ref: torch.Tensor
) -> None:
    assert not out.isnan().any(), f"{name}: NaN in the output (an unwritten or bad value)"
    result = error_bound(out, out_lowp_ref, out_f64_ref)
    assert result.ok, f"{name}: {result}"


def assert_table_grad_accurate(name: str, grad: torch.Tensor, grad_f64_ref: torch.Tensor) -> None:
    """Bias-table gradients are reduced in fp32 from fp32 scores whatever the input dtype, so
    they must be close to float64 even where the same-precision reference (which sums in the
    input dtype) is too poor for FlashAttention's rule to catch much."""
    ref = grad_f64_ref.detach().double().cpu()
    error = (grad.detach().double().cpu() - ref).abs().max().item()
    assert error <= 1e-4 * ref.abs().max().item(), (
        f"{name}: error {error:.3e}, max {ref.abs().max():.3e}"
    )


def poison_cuda_allocator(device: torch.device | str | None = None) -> None:
    """Fill the blocks the CUDA caching allocator will hand out next with NaN.

    Releases the cache, then allocates NaN tensors over a ladder of sizes (the large pool, and
    the small pool that serves tensors up to 1 MiB, which is where small test outputs live) and
    frees them: the next allocations on the current stream reuse these blocks, so an output
    element a kernel never writes reads back as NaN instead of a plausible stale value.
    Call it on the stream that will run the op (the cache is per stream).
    """
    device = torch.device("cuda") if device is None else torch.device(device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    keep = []
    # (bytes per tensor, count) from 1 GiB down to 512 B, the allocator's rounding unit: best-fit
    # allocation fills the smallest free blocks first, so stale fragments get poisoned too.
    for nbytes, count in ((1 << 30, 1), (1 << 26, 4), (1 << 22, 4), (1 << 20, 64), (1 << 16, 64)):
        keep += [torch.full((nbytes // 4,), math.nan, device=device) for _ in range(count)]
    for nbytes in (1 << 12, 1 << 9):
        keep += [torch.full((nbytes // 4,), math.nan, device=device) for _ in range(256)]
    del keep
    torch.cuda.synchronize(device)


# bucket(Δ) = clamp(floor(ln(max(|Δ|, 1)) / 0.301), 0, 128); hand-computed ln(Δ)/0.301 in comments.
HAND_BUCKETS = {
    0: 0,
    1: 0,
    -1: 0,
    2: 2,  # 2.30
    -2: 2,
    3: 3,  # 3.65
    4: 4,  # 4.61
    10: 7,  # 7.65
    100: 15,  # 15.30
    -1000: 22,  # 22.95
    86_400: 37,  # 37.76, a day in seconds
    10**9: 68,  # 68.85
    5 * 10**16: 127,  # 127.74
    10**17: 128,  # 130.05, clamped
    -(2**62): 128,  # 142.77, clamped
}


def boundary_gaps() -> dict[int, int]:
    """Integer gaps on both sides of each bucket boundary exp(0.301 k), with their buckets.

    A gap whose ln(gap)/0.301 is within 1e-12 (relative) of the boundary is left out: float64
    rounding may put it on either side. That leaves boundaries up to about k = 90 (gaps ~1e12).
    """
    gaps = {}
    for k in range(1, 129):
        edge = math.exp(0.301 * k)
        first = math.ceil(edge)  # the smallest gap with ln(gap)/0.301 >= k
        if (first - edge) / edge > 1e-12 and first < math.exp(0.301 * (k + 1)):
            gaps[first] = k
        below = first - 1
        if below >= 1 and (edge - below) / edge > 1e-12 and below >= math.exp(0.301 * (k - 1)):
            gaps[below] = k - 1
    return gaps


def bucket_test_gaps() -> dict[int, int]:
    """The gaps the op's buckets are checked at: hand-computed ones, boundaries of both signs."""
    boundary = boundary_gaps()
    return {**HAND_BUCKETS, **boundary, **{-gap: bucket for gap, bucket in boundary.items()}}


def op_ts_buckets(
    deltas: list[int],
    device: torch.device | str,
    num_buckets: int = 128,
    dtype: torch.dtype | None = None,
) -> list:
    """The time bucket the op assigns to each gap Δ, read off its forward output.

    One length-2 sequence per Δ with timestamps (0, Δ): token 0 pairs with itself at gap
    t_1 - t_0 = Δ. With q = k = 0 its score is just ts_weight[bucket(Δ)]; the table holds
    distinct values, so the output identifies the bucket.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float64 if device.type == "cpu" else torch.float32
    batch = len(deltas)
    table = torch.arange(num_buckets + 1, dtype=torch.float64) * 0.05
    zeros = torch.zeros(2 * batch, 1, 1, dtype=dtype, device=device)
    timestamps = torch.tensor([[0, d] for d in deltas], dtype=torch.int64).flatten()
    out = torch.ops.freescale.hstu_attention(
        zeros,
        zeros,
        torch.ones_like(zeros),
        torch.arange(0, 2 * batch + 1, 2, dtype=torch.int32, device=device),
        2,
        ts_weight=table.to(device=device, dtype=dtype),
        timestamps=timestamps.to(device),
    )
    first_token_scores = out[0::2, 0, 0].double().cpu() * 2  # undo the 1/N normalizer
    candidates = torch.nn.functional.silu(table)
    return (first_token_scores[:, None] - candidates[None, :]).abs().argmin(1).tolist()
