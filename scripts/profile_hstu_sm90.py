"""The sm_90a HSTU kernels under Nsight Compute: one forward and one backward per shape inside a
profiler range, after a warmup outside it, so that `ncu --profile-from-start off` reads only
those launches (the `sm90_profile` stage of scripts/gpu_check.sh):

    ncu --profile-from-start off --kernel-name regex:hstu_ ... \
        python3 scripts/profile_hstu_sm90.py --lengths 2048 8192

Full-length bf16 batches of --tokens tokens, H=4, d=128 (the benchmark's shapes), optionally with
the relative bias (--bias). Reads tell where a kernel's time goes: tensor-pipe activity, L2 hit
rate and DRAM throughput (is it memory bound?), warp stall reasons.
"""

from __future__ import annotations

import argparse
import os

import torch

import freescale_ext  # noqa: F401  (registers torch.ops.freescale)


def batch(n: int, tokens: int, bias: bool) -> tuple:
    count = max(1, tokens // n)
    total, heads, dim = count * n, 4, 128
    q, k, v, dout = (
        torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(4)
    )
    offsets = torch.arange(count + 1, device="cuda", dtype=torch.int32) * n
    tables = (None, None, None)
    if bias:
        stamps = torch.randint(0, 1000, (total,), device="cuda").cumsum(0)
        tables = (torch.randn(2 * n - 1, device="cuda"), torch.randn(129, device="cuda"), stamps)
    args = (offsets, n, dim**-0.5, None, 0, 0, *tables)
    return q, k, v, dout, args


def forward_and_backward(q, k, v, dout, op_args) -> None:
    torch.ops.freescale.hstu_attention(q, k, v, *op_args)
    torch.ops.freescale.hstu_attention_backward(dout, q, k, v, *op_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--tokens", type=int, default=256 * 1024)
    parser.add_argument("--bias", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("FREESCALE_HSTU_FORWARD", "sm90")
    os.environ.setdefault("FREESCALE_HSTU_BACKWARD", "sm90")
    for n in args.lengths:
        inputs = batch(n, args.tokens, args.bias)
        forward_and_backward(*inputs)  # warmup: module loading, the first launches
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        forward_and_backward(*inputs)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        q = inputs[0]
        print(f"profiled n={n} ({q.shape[0]} tokens, bias={args.bias})", flush=True)


if __name__ == "__main__":
    main()
