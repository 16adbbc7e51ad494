"""All-to-all bandwidth alone and under a concurrent bf16 GEMM: the copy-engine runtime
(freescale_ext.comm.CommRuntime) against NCCL's all_to_all_single, in one run on every GPU of
the host (DESIGN §6, issue 5's benchmark).

    python benchmarks/comm_overlap.py [--gpus 4] [--sizes 64K,1M,8M,64M,256M] [--out r.json]

Per peer chunk size: each rank sends `size` bytes to every other rank (and itself). Bandwidth is
out of one rank, (world - 1) * size / time per call, the median over ranks of the mean of
`--iters` calls. Under load, a loop of 8192^3 bf16 GEMMs runs on another stream of the same
process for the whole measurement; its slowdown is its time per GEMM during the transfers over
its time alone. Communication runs on its own stream in both cases.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GEMM_N = 8192


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def timed(fn, iters: int, stream: torch.cuda.Stream) -> float:
    """Mean seconds per call of fn on `stream` (after a warm-up call)."""
    with torch.cuda.stream(stream):
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def measure(rank: int, world: int, sizes: list[int], iters: int, comm) -> list[dict]:
    a = torch.randn(GEMM_N, GEMM_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(GEMM_N, GEMM_N, device="cuda", dtype=torch.bfloat16)
    gemm_stream, comm_stream = torch.cuda.Stream(), torch.cuda.Stream()
    gemm_alone = timed(lambda: torch.mm(a, b), 20, gemm_stream)
    rows = []
    for size in sizes:
        x = torch.randint(0, 255, (world * size,), dtype=torch.uint8, device="cuda")
        splits = np.full((world, world), size, dtype=np.int64)
        out = torch.empty_like(x)
        ways = {
            "nccl": lambda x=x, out=out: dist.all_to_all_single(out, x),
            "copy engines": lambda x=x, splits=splits: comm.all_to_all_v(x.view(-1, 1), splits),
        }
        for name, fn in ways.items():
            dist.barrier()
            alone = timed(fn, iters, comm_stream)
            dist.barrier()
            # Under load: GEMMs queued for longer than the transfers take.
            gemms = max(10, int(3 * alone * iters / gemm_alone) + 10)
            g0, g1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(gemm_stream):
                g0.record()
                for _ in range(gemms):
                    torch.mm(a, b)
                g1.record()
            loaded = timed(fn, iters, comm_stream)
            g1.synchronize()
            # The GEMMs ran partly alone after the transfers: credit that part at full speed.
            gemm_total = g0.elapsed_time(g1) / 1e3
            overlapped = min(loaded * (iters + 1), gemm_total)
            slowdown = (gemm_total - gemms * gemm_alone) / overlapped if overlapped > 0 else 0.0
            moved = (world - 1) * size
            rows.append(
                {
                    "rank": rank,
                    "method": name,
                    "size": size,
                    "alone_gbps": moved / alone / 1e9,
                    "loaded_gbps": moved / loaded / 1e9,
                    "gemm_slowdown": slowdown,
                }
            )
    return rows


def worker(rank: int, world: int, init_file: str, sizes: list[int], iters: int, out: str):
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    comm = CommRuntime(recv_bytes=world * max(sizes), timeout_s=120.0)
    if rank == 0:
        print(f"copy-engine path: {comm.description}", flush=True)
    rows = measure(rank, world, sizes, iters, comm)
    everyone: list = [None] * world
    dist.all_gather_object(everyone, rows)
    comm.check()
    comm.close()
    if rank == 0:
        report([r for rank_rows in everyone for r in rank_rows], world, out)
    dist.destroy_process_group()


def report(rows: list[dict], world: int, out: str | None) -> None:
    print(f"\n{world}x {torch.cuda.get_device_name()}, bandwidth out of one rank (median of ranks)")
    print(
        "| method | per-peer chunk | alone GB/s | under GEMM GB/s | under/alone | GEMM slowdown |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    summary = []
    for method in ("nccl", "copy engines"):
        for size in sorted({r["size"] for r in rows}):
            sel = [r for r in rows if r["method"] == method and r["size"] == size]
            med = {
                k: float(np.median([r[k] for r in sel]))
                for k in sel[0]
                if k.endswith(("gbps", "slowdown"))
            }
            summary.append({"method": method, "size": size, **med})
            print(
                f"| {method} | {size >> 10} KiB | {med['alone_gbps']:.1f} | "
                f"{med['loaded_gbps']:.1f} | {med['loaded_gbps'] / med['alone_gbps']:.0%} | "
                f"{med['gemm_slowdown']:.1%} |"
            )
    if out:
        with open(out, "w") as f:
            json.dump({"world": world, "rows": rows, "summary": summary}, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--sizes", default="64K,1M,8M,64M,256M")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=os.environ.get("FREESCALE_BENCH_OUT"))
    parser.add_argument("--init-file", default=f"/tmp/comm_overlap_init_{os.getpid()}")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    mp.spawn(
        worker,
        args=(args.gpus, args.init_file, sizes, args.iters, args.out),
        nprocs=args.gpus,
        join=True,
    )


if __name__ == "__main__":
    main()
