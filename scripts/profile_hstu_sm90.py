"""The sm_90a HSTU kernels under Nsight Compute: one forward and one backward per benchmark shape
inside a profiler range, after a warmup outside it, so that `ncu --profile-from-start off` reads
only those launches (the `sm90_profile` stage of scripts/gpu_check.sh):

    ncu --profile-from-start off --kernel-name regex:hstu_ ... \
        python3 scripts/profile_hstu_sm90.py --shapes full_n2048 full_n8192

The shapes and inputs are benchmarks/bench_hstu_attention.py's (FREESCALE_BENCH_TOKENS tokens
per shape), optionally with the relative bias (--bias; --time-unit picks its timestamps, as the
benchmark's bias rows do: `flat` and `none` take the time buckets' cost apart). Reads tell where a kernel's time goes:
tensor-pipe activity, L2 hit rate and DRAM throughput (is it memory bound?), warp stall reasons.

--peer sdpa profiles torch SDPA's causal softmax attention (the benchmark's padded groups) on the
same shapes instead, to read the same counters of the FlashAttention-class kernel the targets
name (match its kernels with a --kernel-name of their own, or none).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch

import freescale_ext  # noqa: F401  (registers torch.ops.freescale)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_hstu_attention import (  # noqa: E402
    TIME_GAPS,
    bench_tokens,
    freescale_inputs,
    length_groups,
    make_shapes,
    padded_group,
)


def forward_and_backward(q, k, v, dout, op_args) -> None:
    torch.ops.freescale.hstu_attention(q, k, v, *op_args)
    torch.ops.freescale.hstu_attention_backward(dout, q, k, v, *op_args)


def sdpa_forward_and_backward(batches) -> None:
    for q, k, v, dout in batches:  # (q, k, v require grad)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), dout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["full_n2048", "full_n8192"],
        help="substrings of the benchmark's shape names",
    )
    parser.add_argument("--tokens", type=int, default=bench_tokens(), help="tokens per shape")
    parser.add_argument("--bias", action="store_true")
    parser.add_argument("--time-unit", default="seconds", choices=list(TIME_GAPS))
    parser.add_argument("--peer", choices=["sdpa"], help="profile this peer instead of ours")
    args = parser.parse_args()
    os.environ.setdefault("FREESCALE_HSTU_FORWARD", "sm90")
    os.environ.setdefault("FREESCALE_HSTU_BACKWARD", "sm90")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape in make_shapes(args.tokens):
        if not any(s in shape.name for s in args.shapes):
            continue
        if args.peer == "sdpa":
            batches = [padded_group(g, shape, gen) for g in length_groups(shape.lengths)]
            run = functools.partial(sdpa_forward_and_backward, batches)
        else:
            inputs = freescale_inputs(shape, args.bias, gen, TIME_GAPS[args.time_unit])
            run = functools.partial(forward_and_backward, *inputs)
        run()  # warmup: module loading, the first launches
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        run()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        what = args.peer or f"bias={args.bias}, {args.time_unit}"
        print(f"profiled {shape.name} ({what})", flush=True)


if __name__ == "__main__":
    main()
