"""All-to-all bandwidth alone and under a concurrent bf16 GEMM: the copy-engine runtime
(freescale_ext.comm.CommRuntime) against NCCL's all_to_all_single, in one run on every GPU of
the host (DESIGN §6, issue 5's benchmark).

    python benchmarks/comm_overlap.py [--gpus 4] [--sizes 64K,1M,8M,64M,256M] [--only REGEX]
        [--out r.json]

Per peer chunk size: each rank sends `size` bytes to every other rank (and itself). Bandwidth is
out of one rank, (world - 1) * size / time per call, the median over ranks. Alone: the mean of
`--iters` back-to-back calls (host issue time per call beside it). Under load: a queue of
8192^3 bf16 GEMMs runs on another stream of the same process for a window of at least 40 ms
while the calls repeat for longer than that; the bandwidth counts the calls that end inside
the window, and the GEMM slowdown is the window over the same GEMMs' time alone (measured just
before). Communication runs on its own stream in both cases. Ways: NCCL; the runtime as
configured in WAYS (side stream per peer or one batch per call; fenced-write or copied
signals); and, to find which piece of the protocol stalls under load, bare copy-engine puts of
the same chunks to every peer on one stream ("ce raw put"), followed by a fenced signal to each
peer and/or a wait for the peers' signals, with or without the own chunk's local copy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GEMM_N = 8192
WINDOW_S = 0.04
MAX_CALLS = 4000


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def timed(fn, iters: int, stream: torch.cuda.Stream) -> tuple[float, float]:
    """(device seconds per call, host seconds per call) of fn on `stream`, after a warm-up."""
    with torch.cuda.stream(stream):
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        host = (time.perf_counter() - t0) / iters
        end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters, host


def agreed_max(value: int) -> int:
    """The largest `value` over the ranks (every rank must make the same number of calls)."""
    t = torch.tensor([value], device="cuda", dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def under_load(fn, per_call: float, gemm, comm_stream, gemm_stream) -> tuple[float, float]:
    """(seconds per call while the GEMMs run, GEMM slowdown) for fn beside a GEMM queue."""
    gemm_alone = timed(gemm, 10, gemm_stream)[0]
    gemms = math.ceil(max(WINDOW_S, 8 * per_call) / gemm_alone)
    calls = agreed_max(min(MAX_CALLS, math.ceil(1.5 * gemms * gemm_alone / per_call) + 4))
    dist.barrier()
    g0, g1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(gemm_stream):
        g0.record()
        for _ in range(gemms):
            gemm()
        g1.record()
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    with torch.cuda.stream(comm_stream):
        for ev in ends:
            fn()
            ev.record()
    torch.cuda.synchronize()
    window = g0.elapsed_time(g1) / 1e3
    times = [g0.elapsed_time(ev) / 1e3 for ev in ends]
    inside = [t for t in times if 0.0 < t <= window]
    if times[-1] < window or len(inside) < 3:
        # The host could not keep the transfers going through the whole window: report the
        # calls it managed and the slowdown over the part they overlapped.
        inside = inside if len(inside) >= 2 else times
        span = max(inside[-1] - inside[0], 1e-9)
        return span / max(len(inside) - 1, 1), (window - gemms * gemm_alone) / span
    return (inside[-1] - inside[0]) / (len(inside) - 1), window / (gemms * gemm_alone) - 1.0


# The runtime's ways, by how they issue copies and signal peers (see CommRuntime).
WAYS = {
    "copy engines": {"issue": "streams", "signal": "fenced-write"},
    "ce copied signals": {"issue": "streams", "signal": "copy"},
    "ce batch": {"issue": "batch", "signal": "fenced-write"},
    "ce batch, copied signals": {"issue": "batch", "signal": "copy"},
}


def host_costs(rt, rank: int, world: int, reps: int = 200) -> dict[str, float]:
    """Host microseconds per call of the runtime's pieces (each pair of ranks in step)."""
    one = torch.zeros(4, dtype=torch.uint8, device="cuda")
    tiny, splits = torch.zeros(world, 16, dtype=torch.uint8, device="cuda"), np.ones((world, world))
    ops = {
        "event record": lambda i: torch.cuda.Event().record(),
        "signal": lambda i: rt.signal(rank, 7, i),
        "wait (satisfied)": lambda i: rt.wait(7, 0),
        "put": lambda i: rt.put((rank + 1) % world, 0, one),
        "all_to_all_v 16 B": lambda i: rt.all_to_all_v(tiny, splits),
        "own chunk in place": lambda i: rt.all_to_all_v(tiny, splits, own_chunk=False),
    }
    out = {}
    for name, op in ops.items():
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(reps):
            op(i)
        out[name] = round((time.perf_counter() - t0) / reps * 1e6, 1)
        torch.cuda.synchronize()
    return out


def measure(
    rank: int, world: int, sizes: list[int], iters: int, runtimes: dict, only: str
) -> list[dict]:
    a = torch.randn(GEMM_N, GEMM_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(GEMM_N, GEMM_N, device="cuda", dtype=torch.bfloat16)
    gemm_stream, comm_stream = torch.cuda.Stream(), torch.cuda.Stream()
    rows = []
    counter = [0]  # user-signal values: the same sequence of calls on every rank
    for size in sizes:
        x = torch.randint(0, 255, (world * size,), dtype=torch.uint8, device="cuda")
        splits = np.full((world, world), size, dtype=np.int64)
        out = torch.empty_like(x)
        raw, peers = runtimes["copy engines"], [(rank + s) % world for s in range(1, world)]

        def raw_put(x=x, size=size, raw=raw, peers=peers):
            for p in peers:  # every rank writes into its own slot of each peer's heap
                raw.put(p, rank * size, x[p * size : (p + 1) * size])

        def put_then(
            signal, wait, own=False, raw=raw, peers=peers, x=x, size=size, counter=counter
        ):
            """Bare puts (and the own chunk into this rank's heap), then a fenced signal to each
            peer and/or a wait on this rank's slot (the protocol's pieces under load; with wait
            alone, one already satisfied)."""
            counter[0] += 1
            if own:
                raw.put(rank, rank * size, x[rank * size : (rank + 1) * size])
            raw_put(x, size, raw, peers)
            for p in peers:
                if signal:
                    raw.signal(p, 8, counter[0])
            if wait:
                raw.wait(8, counter[0] if signal else 0)

        ways = {
            "nccl": lambda x=x, out=out: dist.all_to_all_single(out, x),
            **{
                name: (lambda x=x, splits=splits, rt=rt: rt.all_to_all_v(x.view(-1, 1), splits))
                for name, rt in runtimes.items()
            },
            **{
                f"{name}, own chunk in place": (
                    lambda x=x, splits=splits, rt=rt: rt.all_to_all_v(
                        x.view(-1, 1), splits, own_chunk=False
                    )
                )
                for name, rt in runtimes.items()
                if "copied signals" not in name  # measured no better than fenced writes
            },
            "ce raw put": raw_put,
            "ce put+signal": lambda: put_then(True, False),
            "ce put+wait": lambda: put_then(False, True),
            "ce put+signal+wait": lambda: put_then(True, True),
            "ce own+put+signal+wait": lambda: put_then(True, True, own=True),
        }
        for name, fn in ways.items():
            if not re.search(only, name):
                continue
            dist.barrier()
            alone, host = timed(fn, iters, comm_stream)
            loaded, slowdown = under_load(
                fn, alone, lambda: torch.mm(a, b), comm_stream, gemm_stream
            )
            moved = (world - 1) * size
            rows.append(
                {
                    "rank": rank,
                    "method": name,
                    "size": size,
                    "alone_us": alone * 1e6,
                    "host_us": host * 1e6,
                    "alone_gbps": moved / alone / 1e9,
                    "loaded_gbps": moved / loaded / 1e9,
                    "gemm_slowdown": slowdown,
                }
            )
    return rows


def worker(
    rank: int, world: int, init_file: str, sizes: list[int], iters: int, out: str, only: str
):
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    runtimes = {
        name: CommRuntime(recv_bytes=world * max(sizes), timeout_s=120.0, **options)
        for name, options in WAYS.items()
    }
    costs = {name: host_costs(rt, rank, world) for name, rt in runtimes.items()}
    if rank == 0:
        for name, rt in runtimes.items():
            print(f"{name}: {rt.description}", flush=True)
            print(f"  host µs per call: {costs[name]}", flush=True)
    rows = measure(rank, world, sizes, iters, runtimes, only)
    everyone: list = [None] * world
    dist.all_gather_object(everyone, rows)
    batched = {}
    for name, rt in runtimes.items():
        rt.check()
        batched[name] = rt._native.batch_refusal() or "accepted"
        rt.close()
    if rank == 0:
        print(f"cudaMemcpyBatchAsync (refused: one cudaMemcpyAsync per piece): {batched}")
        report([r for rank_rows in everyone for r in rank_rows], world, out)
    dist.destroy_process_group()


def report(rows: list[dict], world: int, out: str | None) -> None:
    print(f"\n{world}x {torch.cuda.get_device_name()}, bandwidth out of one rank (median of ranks)")
    print(
        "| method | per-peer chunk | µs per call (host) | alone GB/s | under GEMM GB/s "
        "| under/alone | GEMM slowdown |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for size in sorted({r["size"] for r in rows}):
            sel = [r for r in rows if r["method"] == method and r["size"] == size]
            med = {
                k: float(np.median([r[k] for r in sel]))
                for k in sel[0]
                if k.endswith(("gbps", "slowdown", "_us"))
            }
            summary.append({"method": method, "size": size, **med})
            print(
                f"| {method} | {size >> 10} KiB | {med['alone_us']:.1f} ({med['host_us']:.1f}) | "
                f"{med['alone_gbps']:.1f} | "
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
    parser.add_argument("--only", default="", help="regex: run only the ways it matches")
    parser.add_argument("--init-file", default=f"/tmp/comm_overlap_init_{os.getpid()}")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    mp.spawn(
        worker,
        args=(args.gpus, args.init_file, sizes, args.iters, args.out, args.only),
        nprocs=args.gpus,
        join=True,
    )


if __name__ == "__main__":
    main()
