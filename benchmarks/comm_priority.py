"""Latency of an urgent all-to-all issued while a bulk one is in flight (issue 5's priority
classes): the copy-engine runtime with the bulk call in class 1, cut into pieces of several
sizes, against NCCL, whose one communicator queues the urgent call behind the bulk one.

    python benchmarks/comm_priority.py [--gpus 2] [--urgent 64K] [--bulk 256M] [--out r.json]

Per repetition every rank issues the bulk all-to-all (`--bulk` bytes per peer) on one stream,
waits a quarter of its time alone on the host (so that it is in flight), then issues the urgent
one (`--urgent` bytes per peer) on another stream. Urgent latency: from an event recorded on its
stream just before the call to one just after (the stream is otherwise idle); medians over
ranks of the medians over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from comm_overlap import parse_size


def event_pair() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def timed_call(fn, stream: torch.cuda.Stream) -> tuple[torch.cuda.Event, torch.cuda.Event]:
    start, end = event_pair()
    with torch.cuda.stream(stream):
        start.record()
        fn()
        end.record()
    return start, end


def measure(way: dict, reps: int, streams) -> dict:
    """Urgent alone, bulk alone, and both (urgent issued during bulk): milliseconds."""
    bulk_stream, urgent_stream = streams
    out: dict = {k: [] for k in ("urgent_alone", "bulk_alone", "urgent_during", "bulk_during")}
    for _ in range(reps):
        dist.barrier()
        u = timed_call(way["urgent"], urgent_stream)
        torch.cuda.synchronize()
        out["urgent_alone"].append(u[0].elapsed_time(u[1]))
        dist.barrier()
        b = timed_call(way["bulk"], bulk_stream)
        torch.cuda.synchronize()
        out["bulk_alone"].append(b[0].elapsed_time(b[1]))
    delay = float(np.median(out["bulk_alone"])) / 4e3
    for _ in range(reps):
        dist.barrier()
        b = timed_call(way["bulk"], bulk_stream)
        time.sleep(delay)
        u = timed_call(way["urgent"], urgent_stream)
        torch.cuda.synchronize()
        out["urgent_during"].append(u[0].elapsed_time(u[1]))
        out["bulk_during"].append(b[0].elapsed_time(b[1]))
    return {k: float(np.median(v)) for k, v in out.items()}


def worker(rank: int, world: int, init_file: str, args) -> None:
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    urgent, bulk = parse_size(args.urgent), parse_size(args.bulk)
    small = torch.randint(0, 255, (world * urgent,), dtype=torch.uint8, device="cuda")
    large = torch.randint(0, 255, (world * bulk,), dtype=torch.uint8, device="cuda")
    small_out, large_out = torch.empty_like(small), torch.empty_like(large)
    split = np.full((world, world), 1, dtype=np.int64)
    ways = {
        "nccl": {
            "urgent": lambda: dist.all_to_all_single(small_out, small),
            "bulk": lambda: dist.all_to_all_single(large_out, large),
        }
    }
    runtimes = []
    for piece in [parse_size(p) for p in args.pieces.split(",")]:
        rt = CommRuntime(recv_bytes=[world * urgent, world * bulk], piece_bytes=piece)
        runtimes.append(rt)
        ways[f"copy engines, bulk pieces {piece >> 10} KiB" if piece else "copy engines, uncut"] = {
            "urgent": lambda rt=rt: rt.all_to_all_v(small.view(world, -1), split, priority=0),
            "bulk": lambda rt=rt: rt.all_to_all_v(large.view(world, -1), split, priority=1),
        }
    streams = (torch.cuda.Stream(), torch.cuda.Stream())
    for way in ways.values():  # warm-up
        measure(way, 2, streams)
    rows = [
        {"rank": rank, "way": name, **measure(way, args.reps, streams)}
        for name, way in ways.items()
    ]
    everyone: list = [None] * world
    dist.all_gather_object(everyone, rows)
    for rt in runtimes:
        rt.check()
        rt.close()
    if rank == 0:
        report([r for rs in everyone for r in rs], world, args)
    dist.destroy_process_group()


def report(rows: list[dict], world: int, args) -> None:
    print(
        f"\n{world}x {torch.cuda.get_device_name()}: urgent {args.urgent} per peer issued during "
        f"a bulk {args.bulk} per peer (medians; ms)"
    )
    print("| way | urgent alone | urgent during bulk | bulk alone | bulk with urgent |")
    print("|---|---:|---:|---:|---:|")
    summary = []
    for way in dict.fromkeys(r["way"] for r in rows):
        sel = [r for r in rows if r["way"] == way]
        med = {k: float(np.median([r[k] for r in sel])) for k in sel[0] if k not in ("rank", "way")}
        summary.append({"way": way, **med})
        print(
            f"| {way} | {med['urgent_alone']:.3f} | {med['urgent_during']:.3f} | "
            f"{med['bulk_alone']:.3f} | {med['bulk_during']:.3f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"world": world, "rows": rows, "summary": summary}, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--urgent", default="64K")
    parser.add_argument("--bulk", default="256M")
    parser.add_argument("--pieces", default="0,1M,4M,16M", help="bulk piece sizes (0: uncut)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", default=os.environ.get("FREESCALE_BENCH_OUT"))
    parser.add_argument("--init-file", default=f"/tmp/comm_priority_init_{os.getpid()}")
    args = parser.parse_args()
    mp.spawn(worker, args=(args.gpus, args.init_file, args), nprocs=args.gpus, join=True)


if __name__ == "__main__":
    main()
