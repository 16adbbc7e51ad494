"""Sharded-embedding training on all GPUs of the host: step time and the exchange stages'
exposed time, with and without prefetching the next step's rows, over NCCL and over the
copy-engine runtime (`--embedding-exchange ce`).

    python benchmarks/bench_sharded_training.py [--gpus 4] [--items 20000000] [--steps 60]
        [--out results.json]

Each configuration is one `torchrun ... freescale train --embeddings sharded` run on an
embedding-heavy synthetic workload (a table of `--items` rows of dim 128, lognormal history
lengths capped at 2048, sampled softmax with 128 negatives per position), evaluation off. The train log's
per-step means over the timed steps (the first `--warmup` steps dropped) give the breakdown:
`embedding_<stage>_ms` is the time a stage keeps the training loop waiting (for the prefetch,
only what was not hidden behind the step's compute), so
exposed exchange time = fetch + prefetch + grads; the update (the fused sparse optimizer) is
compute. "Non-overlapped" is the same sum in the run without prefetch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from freescale.runlog import read_log

STAGES = ("fetch", "prefetch", "grads", "update")
EXCHANGE = ("fetch", "prefetch", "grads")


def train_args(items: int, steps: int, users: int, batch: int, device: str) -> list[str]:
    data = (
        f"synthetic:num_users={users},num_items={items},num_topics=200,mean_len=200,"
        "max_len=2048,seed=3"
    )
    return [
        f"--data={data}",
        "--model=hstu",
        "--dim=128",
        "--blocks=2",
        "--heads=2",
        "--dqk=64",
        "--dv=64",
        "--max-len=1024",
        "--dropout=0",
        f"--batch-size={batch}",
        "--negatives=128",
        "--embeddings=sharded",
        "--embedding-optimizer=adam",
        f"--max-steps={steps}",
        "--eval-every=-1",
        "--log-every=1",
        f"--device={device}",
        "--progress=off",
    ]


def run(gpus: int, args: list[str], run_dir: Path) -> list[dict]:
    """The train log records of one torchrun run."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus}",
        "-m",
        "freescale.cli",
        "train",
        *args,
        f"--run-dir={run_dir}",
    ]
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="4"))
    return [r for r in read_log(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def summarize(name: str, records: list[dict], warmup: int) -> dict:
    timed = [r for r in records if r["step"] > warmup]
    mean = lambda key: sum(r.get(key, 0.0) for r in timed) / max(len(timed), 1)  # noqa: E731
    out = {"config": name, "steps": len(timed), "step_ms": 1e3 / mean("steps_per_s")}
    for stage in STAGES:
        out[f"{stage}_ms"] = mean(f"embedding_{stage}_ms")
    out["exposed_exchange_ms"] = sum(out[f"{s}_ms"] for s in EXCHANGE)
    # The row counters are cumulative (rows rank 0 served early / late since the start).
    before = [r for r in records if r["step"] <= warmup]
    for key, name in (
        ("prefetched_rows_early", "rows_early"),
        ("prefetched_rows_late", "rows_late"),
        ("updated_rows_in_step", "updated_in_step"),
        ("updated_rows_deferred", "updated_deferred"),
    ):
        start = before[-1].get(key, 0) if before else 0
        end = timed[-1].get(key, 0) if timed else 0
        out[name] = (end - start) / max(len(timed), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--items", type=int, default=20_000_000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--users", type=int, default=16000)
    parser.add_argument("--batch-size", type=int, default=128, help="users per step, all ranks")
    parser.add_argument("--device", default="cuda", help="cpu: a gloo smoke run")
    parser.add_argument("--nccl-only", action="store_true", help="skip the copy-engine runs")
    parser.add_argument(
        "--configs",
        default="",
        help="comma-separated config names to run (default: all; 'no prefetch' always runs: "
        "it is the base of the shares)",
    )
    parser.add_argument("--out", default=os.environ.get("FREESCALE_BENCH_OUT"), help="JSON path")
    args = parser.parse_args()
    configs = {
        "prefetch (exact)": ["--embedding-prefetch"],
        "no prefetch": ["--no-embedding-prefetch"],
        "copy engines, prefetch": ["--embedding-prefetch", "--embedding-exchange=ce"],
        "copy engines, no prefetch": ["--no-embedding-prefetch", "--embedding-exchange=ce"],
        # Semi-synchronous, not exact: what the exact pipeline's late rows cost.
        "prefetch (stale)": ["--embedding-prefetch", "--embedding-stale"],
        "copy engines, prefetch (stale)": [
            "--embedding-prefetch",
            "--embedding-stale",
            "--embedding-exchange=ce",
        ],
    }
    if args.nccl_only:
        configs = {k: v for k, v in configs.items() if not k.startswith("copy engines")}
    if args.configs:
        wanted = {name.strip() for name in args.configs.split(",")} | {"no prefetch"}
        unknown = wanted - set(configs)
        if unknown:
            parser.error(f"unknown configs {sorted(unknown)}; choose from {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k in wanted}
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU processes (gloo)"
    header = (
        f"{args.gpus}x {card}, {args.items:,} rows x 128, torch.distributed all-to-all, "
        f"steps {args.warmup + 1}-{args.steps}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, flags) in enumerate(configs.items()):
            extra = train_args(args.items, args.steps, args.users, args.batch_size, args.device)
            records = run(args.gpus, [*extra, *flags], Path(tmp) / str(i))
            rows.append(summarize(name, records, args.warmup))
            print(json.dumps(rows[-1]), flush=True)  # a partial result survives a cut run
    base = next(r for r in rows if r["config"] == "no prefetch")
    print(f"\n{header}")
    print(
        "| config | step ms | fetch ms | prefetch ms | grads ms | update ms | exposed exchange "
        "ms | of non-overlapped | rows early / late per step | rows updated in step / deferred |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = r["exposed_exchange_ms"] / base["exposed_exchange_ms"]
        print(
            f"| {r['config']} | {r['step_ms']:.1f} | {r['fetch_ms']:.2f} | {r['prefetch_ms']:.2f} "
            f"| {r['grads_ms']:.2f} | {r['update_ms']:.2f} | {r['exposed_exchange_ms']:.2f} | "
            f"{share:.0%} | {r['rows_early']:.0f} / {r['rows_late']:.0f} | "
            f"{r['updated_in_step']:.0f} / {r['updated_deferred']:.0f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
