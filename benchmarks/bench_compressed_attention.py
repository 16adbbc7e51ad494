"""Microbenchmark of the block-sparse compressed (PerSRec) attention kernels against the dense
masked computation: the same kernels visiting every causal tile (`skip_empty_tiles=False`) and
the padded PyTorch path, on PerSRec layouts [history | tokens | recent] with one group after the
history or one every S items.

    python benchmarks/bench_compressed_attention.py [--tokens N] [--out results.json]
    pytest benchmarks/bench_compressed_attention.py --run-benchmarks -s

The issue's criterion: speed-up over the dense masked computation >= 80% of the pair ratio,
pair ratio = causal pairs / pairs the mask keeps; schedule bound = the same ratio counted in the tiles the kernels' schedule
visits (a host replay; the speed-up the tile granularity allows). Forward counts 4·pairs·H·d FLOPs (Q K^T and
P V), backward 2.5x forward, each implementation credited with the pairs it must compute (kept
pairs for the block-sparse kernel, causal pairs for the dense ones). bf16, H=4, d=64, every
sequence of a batch the same layout, ~`tokens` tokens per batch; the PyTorch path runs 2 of the
sequences (its [B, H, L, L] scores would not fit) and is reported per sequence.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
from bench_hstu_attention import median_ms

DEFAULT_TOKENS = 256 * 1024
HEADS, DIM = 4, 64
TORCH_SEQUENCES = 2


@dataclass(frozen=True)
class Layout:
    history: int
    recent: int
    tokens: int
    segment: int  # 0: one group after the history

    @property
    def name(self) -> str:
        where = "one group" if self.segment == 0 else f"every {self.segment}"
        return f"hist {self.history} rec {self.recent} K {self.tokens} ({where})"

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """region and is_token of one sequence."""
        segment = self.segment or max(self.history, 1)
        region, is_token = [], []
        for s, start in enumerate(range(0, self.history, segment)):
            n = min(segment, self.history - start)
            region += [s] * (n + self.tokens)
            is_token += [False] * n + [True] * self.tokens
        region += [region[-1] + 1 if region else 0] * self.recent
        is_token += [False] * self.recent
        return np.asarray(region, np.int32), np.asarray(is_token, bool)

    def schedule_bound(self, tile: int = 64) -> float:
        """Dense-tile pairs / block-sparse-schedule pairs: the speed-up the kernels' schedule
        allows at its tile granularity (host replay of the forward walk: per 64-row query tile,
        the gathered 64-token blocks up to its last row and the key tiles whose non-token
        regions overlap its regions)."""
        region, is_token = self.rows()
        n = len(region)
        tiles = -(-n // tile)
        token_pos = np.flatnonzero(is_token)
        ranges = []
        for t in range(tiles):
            reg, tok = region[t * tile : (t + 1) * tile], is_token[t * tile : (t + 1) * tile]
            items = reg[~tok]
            lo, hi = (items.min(), items.max()) if items.size else (np.inf, -np.inf)
            ranges.append((lo, hi, reg.min(), reg.max()))
        sparse = dense = 0
        for qt in range(tiles):
            rows = min(tile, n - qt * tile)
            last = qt * tile + rows - 1
            token_blocks = int(np.sum(token_pos[::tile] <= last))
            q = ranges[qt]
            key_tiles = sum(ranges[kt][0] <= q[3] and q[2] <= ranges[kt][1] for kt in range(qt + 1))
            sparse += (token_blocks + key_tiles) * tile * rows
            dense += (qt + 1) * tile * rows
        return dense / sparse

    def pairs(self) -> tuple[int, int]:
        """(causal pairs, pairs the mask keeps) of one sequence."""
        region, is_token = self.rows()
        n = len(region)
        keep = np.tril(is_token[None, :] | (region[:, None] == region[None, :]))
        return n * (n + 1) // 2, int(keep.sum())


def make_layouts() -> list[Layout]:
    out = []
    for history in (1024, 2048, 4096):
        for recent in (64, 256):
            for tokens in (4, 16):
                out.append(Layout(history, recent, tokens, 0))
                out.append(Layout(history, recent, tokens, 256))
    return out


def make_batch(layout: Layout, tokens: int, device="cuda", seed=0):
    region, is_token = layout.rows()
    n = len(region)
    batch = max(1, tokens // n)
    gen = torch.Generator(device=device).manual_seed(seed)
    total = batch * n

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16)

    return dict(
        q=randn(total, HEADS, DIM),
        k=randn(total, HEADS, DIM),
        v=randn(total, HEADS, DIM),
        seq_offsets=torch.arange(0, total + 1, n, dtype=torch.int32, device=device),
        region=torch.from_numpy(np.tile(region, batch)).to(device),
        is_token=torch.from_numpy(np.tile(is_token, batch)).to(device),
        max_seq_len=n,
    ), batch


@dataclass
class Result:
    layout: str
    length: int
    batch: int
    pair_ratio: float
    schedule_bound: float  # the schedule's own tile ratio (host replay), <= pair ratio
    sparse_fwd_ms: float
    sparse_bwd_ms: float
    dense_fwd_ms: float
    dense_bwd_ms: float
    speedup_fwd: float
    speedup_bwd: float
    speedup_fwd_bwd: float
    share_of_pair_ratio: float  # fwd+bwd speed-up / pair ratio (target >= 0.8)
    sparse_fwd_tflops: float
    sparse_bwd_tflops: float
    torch_fwd_bwd_ms_per_seq: float
    kernel_fwd_bwd_ms_per_seq: float


def run_layout(layout: Layout, tokens: int, with_torch: bool = True) -> Result:
    import freescale_ext
    from freescale_ext.compressed import compressed_attention_dense

    inputs, batch = make_batch(layout, tokens)
    args = [inputs[n] for n in ("q", "k", "v", "seq_offsets", "region", "is_token")]
    n = inputs["max_seq_len"]
    alpha = 1.0 / math.sqrt(DIM)
    grad = torch.randn_like(inputs["v"])
    ops = torch.ops.freescale

    def timed(skip: bool) -> tuple[float, float]:
        fwd = median_ms(lambda: ops.compressed_attention(*args, n, alpha, skip))
        bwd = median_ms(lambda: ops.compressed_attention_backward(grad, *args, n, alpha, skip))
        return fwd, bwd

    sparse_fwd, sparse_bwd = timed(True)
    dense_fwd, dense_bwd = timed(False)
    causal, kept = layout.pairs()
    flops = 4.0 * kept * batch * HEADS * DIM
    torch_ms = float("nan")
    if with_torch:
        small, _ = make_batch(layout, TORCH_SEQUENCES * n, seed=1)
        leaves = {k: small[k].detach().requires_grad_() for k in ("q", "k", "v")}

        def torch_fwd_bwd():
            out = compressed_attention_dense(**{**small, **leaves}, alpha=alpha)
            out.backward(torch.ones_like(out))

        torch_ms = median_ms(torch_fwd_bwd) / TORCH_SEQUENCES
        # Sanity: the kernel and the PyTorch path agree on this batch.
        got = freescale_ext.compressed_attention(**small, alpha=alpha).float()
        want = compressed_attention_dense(**small, alpha=alpha).float()
        assert (got - want).abs().max().item() <= 2e-2 * want.abs().max().item() + 1e-3
    ratio = causal / kept
    total_speedup = (dense_fwd + dense_bwd) / (sparse_fwd + sparse_bwd)
    return Result(
        layout=layout.name,
        length=n,
        batch=batch,
        pair_ratio=ratio,
        schedule_bound=layout.schedule_bound(),
        sparse_fwd_ms=sparse_fwd,
        sparse_bwd_ms=sparse_bwd,
        dense_fwd_ms=dense_fwd,
        dense_bwd_ms=dense_bwd,
        speedup_fwd=dense_fwd / sparse_fwd,
        speedup_bwd=dense_bwd / sparse_bwd,
        speedup_fwd_bwd=total_speedup,
        share_of_pair_ratio=total_speedup / ratio,
        sparse_fwd_tflops=flops / sparse_fwd * 1e-9,
        sparse_bwd_tflops=2.5 * flops / sparse_bwd * 1e-9,
        torch_fwd_bwd_ms_per_seq=torch_ms,
        kernel_fwd_bwd_ms_per_seq=(sparse_fwd + sparse_bwd) / batch,
    )


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| layout | L | B | pair ratio | schedule bound | sparse fwd / bwd ms "
        "| dense-tile fwd / bwd ms "
        "| speed-up fwd / bwd / both | share of ratio | sparse TFLOP/s fwd / bwd "
        "| ms/seq fwd+bwd: kernel / PyTorch |",
        "|---|---:|---:|---:|---:|---|---|---|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.layout} | {r.length} | {r.batch} | {r.pair_ratio:.2f} | {r.schedule_bound:.2f} "
            f"| {r.sparse_fwd_ms:.3f} / {r.sparse_bwd_ms:.3f} "
            f"| {r.dense_fwd_ms:.3f} / {r.dense_bwd_ms:.3f} "
            f"| {r.speedup_fwd:.2f} / {r.speedup_bwd:.2f} / {r.speedup_fwd_bwd:.2f} "
            f"| {r.share_of_pair_ratio:.2f} "
            f"| {r.sparse_fwd_tflops:.0f} / {r.sparse_bwd_tflops:.0f} "
            f"| {r.kernel_fwd_bwd_ms_per_seq:.3f} / {r.torch_fwd_bwd_ms_per_seq:.2f} |"
        )
    return "\n".join(lines)


def write_json(results: list[Result], path: str | None, tokens: int) -> None:
    if not path:
        return
    payload = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        tokens=tokens,
        heads=HEADS,
        dim=DIM,
        results=[asdict(r) for r in results],
    )
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


pytestmark = [pytest.mark.benchmark, pytest.mark.gpu]


@pytest.mark.parametrize("layout", make_layouts()[:4], ids=lambda x: x.name)
def test_compressed_attention(layout):
    result = run_layout(layout, DEFAULT_TOKENS // 4, with_torch=False)
    print(markdown_table([result]))
    assert result.sparse_fwd_ms > 0 and result.dense_fwd_ms > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="tokens per batch")
    parser.add_argument("--out", default=os.environ.get("FREESCALE_BENCH_OUT"), help="JSON path")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch dense path")
    args = parser.parse_args()
    results = []
    for layout in make_layouts():
        results.append(run_layout(layout, args.tokens, with_torch=not args.no_torch))
        print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
    print(f"\n{torch.cuda.get_device_name()}, bf16, H={HEADS}, d={DIM}, ~{args.tokens} tokens")
    print(markdown_table(results))
    write_json(results, args.out, args.tokens)


if __name__ == "__main__":
    main()
