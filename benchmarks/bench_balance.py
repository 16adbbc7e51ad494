"""Straggler wait with and without balancing on 2 and 4 GPUs, beside the simulator (issue 7).

Runs `freescale train` under torchrun on a long-tailed synthetic workload (lengths up to 4096)
once without and once with balancing per world size, reads every rank's measured per-step
compute times from the run logs (freescale.balance.report), and replays the same length
distribution through `freescale.balance.simulate` with the cost model fitted online in the
unbalanced run. Prints a markdown table and writes JSON.

    python benchmarks/bench_balance.py --worlds 2,4 --out out/bench_balance.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from freescale.balance import CostModel, simulate
from freescale.balance.report import StragglerStats
from freescale.data import leave_one_out, load_dataset
from freescale.runlog import read_log

DATA = (
    "synthetic:num_users=4000,num_items=100000,num_topics=50,mean_len=600,max_len=4096,"
    "length_sigma=1.0,seed=1"
)
MODEL = [
    "--model=hstu",
    "--dim=128",
    "--blocks=4",
    "--heads=2",
    "--dqk=64",
    "--dv=64",
    "--max-len=4096",
    "--negatives=128",
]


def run(world: int, balance: bool, args: argparse.Namespace, run_dir: Path) -> float:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world}",
        "-m",
        "freescale.cli",
        "train",
        f"--data={args.data}",
        *args.model_args.split(),
        f"--batch-size={args.per_rank_batch * world}",
        f"--max-steps={args.steps}",
        "--epochs=1000",
        "--eval-every=-1",
        f"--log-every={args.log_every}",
        "--progress=off",
        "--balance" if balance else "--no-balance",
        f"--run-dir={run_dir}",
    ]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="4")
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def measured(run_dir: Path, warmup_steps: int) -> dict:
    records = read_log(run_dir / "metrics.jsonl")
    balance = [r for r in records if r["kind"] == "balance" and r["step"] > warmup_steps]
    train = [r for r in records if r["kind"] == "train" and r["step"] > warmup_steps]
    stats = StragglerStats.concat(
        [
            StragglerStats(
                np.array(r["step_compute_ms"]) / 1e3, np.array(r["step_reduce_ms"]) / 1e3
            )
            for r in balance
        ]
    )
    tokens = sum(np.array(r["step_tokens"]).sum() for r in balance)
    # Intervals end at log steps and at epoch ends: weight each by its steps.
    steps = np.array([r["step"] for r in records if r["kind"] == "train"])
    spans = dict(zip(steps, np.diff(steps, prepend=0), strict=True))
    seconds = sum(spans[r["step"]] / r["steps_per_s"] for r in train)
    step_s = seconds / sum(spans[r["step"]] for r in train)
    out = stats.summary()
    out.update(
        step_ms=step_s * 1e3,
        tokens_per_s=tokens / (step_s * out["steps"]),
        predicted_imbalance=float(np.mean([r["predicted_imbalance"] for r in balance])),
        cost=[
            balance[-1]["cost_a"],
            balance[-1]["cost_b"],
            balance[-1]["cost_c0"],
            balance[-1]["cost_tile"],
        ],
    )
    return out


def train_lengths(data: str, max_len: int) -> np.ndarray:
    split = leave_one_out(load_dataset(data))
    lengths = np.minimum(split.train.lengths - 1, max_len)
    return lengths[lengths >= 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--worlds", default="2,4")
    p.add_argument("--data", default=DATA)
    p.add_argument("--model-args", default=" ".join(MODEL), help="freescale train model flags")
    p.add_argument("--max-len", type=int, default=4096, help="as in --model-args")
    p.add_argument("--per-rank-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=70)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--sim-ranks", default="256")
    p.add_argument("--runs", type=Path, default=Path("runs/bench_balance"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.warmup_steps % args.log_every or args.steps <= args.warmup_steps + args.log_every:
        p.error("--warmup-steps must be a multiple of --log-every, with log intervals after it")

    lengths = train_lengths(args.data, args.max_len)
    results = []
    for world in [int(w) for w in args.worlds.split(",")]:
        rows = {}
        for balance in (False, True):
            run_dir = args.runs / f"w{world}-{'bal' if balance else 'plain'}"
            wall = run(world, balance, args, run_dir)
            rows[balance] = dict(measured(run_dir, args.warmup_steps), wall_s=wall)
        fitted = CostModel(*rows[False]["cost"])  # fitted online in the unbalanced run
        sim_worlds = [world] + [int(r) for r in args.sim_ranks.split(",")]
        sim = simulate(
            lengths,
            sim_worlds,
            per_rank_batch=args.per_rank_batch,
            steps=200,
            cost_model=fitted,
        )
        results.append(
            {
                "world": world,
                "unbalanced": rows[False],
                "balanced": rows[True],
                "cost_model": [fitted.a, fitted.b, fitted.c0, fitted.tile],
                "simulated": [
                    {
                        "ranks": s.world_size,
                        "bubble_unbalanced": s.bubble_unbalanced,
                        "bubble_balanced": s.bubble_balanced,
                        "reduction": s.bubble_reduction,
                    }
                    for s in sim
                ],
            }
        )
    print_table(results, lengths)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def print_table(results: list[dict], lengths: np.ndarray) -> None:
    print(
        f"\nlengths: mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, "
        f"p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}"
    )
    print(
        "| GPUs | sampling | measured bubble | predicted bubble | straggler wait ms/step | "
        "slowest rank ms | step ms | tokens/s | predicted max/mean |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        sim = r["simulated"][0]
        for name, key, pred in (
            ("contiguous", "unbalanced", sim["bubble_unbalanced"]),
            ("balanced", "balanced", sim["bubble_balanced"]),
        ):
            m = r[key]
            print(
                f"| {r['world']} | {name} | {m['bubble']:.1%} | {pred:.1%} | {m['wait_ms']:.2f} | "
                f"{m['max_compute_ms']:.1f} | {m['step_ms']:.1f} | {m['tokens_per_s']:.0f} | "
                f"{m['predicted_imbalance']:.3f} |"
            )
        wait_cut = 1 - r["balanced"]["wait_ms"] / max(r["unbalanced"]["wait_ms"], 1e-9)
        print(
            f"<!-- {r['world']} GPUs: straggler wait reduced by {wait_cut:.1%}; cost model "
            f"a, b, c0 = {r['cost_model']} -->"
        )
        for s in r["simulated"][1:]:
            print(
                f"<!-- simulated {s['ranks']} ranks: bubble {s['bubble_unbalanced']:.1%} -> "
                f"{s['bubble_balanced']:.2%} ({s['reduction']:.1%} less) -->"
            )


if __name__ == "__main__":
    sys.exit(main())
