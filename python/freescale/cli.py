"""`freescale` command line: train, eval, simulate, presets."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from freescale.config import PRESETS, TrainConfig, preset_config

# CLI flag -> (config field, type); model fields are prefixed with "model.".
_TRAIN_FLAGS = {
    "data": ("data", str),
    "protocol": ("protocol", str),
    "epochs": ("epochs", int),
    "max_steps": ("max_steps", int),
    "batch_size": ("batch_size", int),
    "eval_batch_size": ("eval_batch_size", int),
    "lr": ("lr", float),
    "weight_decay": ("weight_decay", float),
    "negatives": ("num_negatives", int),
    "temperature": ("temperature", float),
    "seed": ("seed", int),
    "device": ("device", str),
    "amp": ("amp", str),
    "eval_every": ("eval_every", int),
    "log_every": ("log_every", int),
    "checkpoint_every": ("checkpoint_every", int),
    "model": ("model.kind", str),
    "dim": ("model.dim", int),
    "blocks": ("model.num_blocks", int),
    "heads": ("model.num_heads", int),
    "dqk": ("model.dim_qk", int),
    "dv": ("model.dim_v", int),
    "ffn_hidden": ("model.ffn_hidden", int),
    "dropout": ("model.dropout", float),
    "max_len": ("model.max_len", int),
    "micro_batches": ("micro_batches", int),
    "embeddings": ("embeddings", str),
    "embedding_optimizer": ("embedding_optimizer", str),
    "embedding_lr": ("embedding_lr", float),
    "embedding_exchange": ("embedding_exchange", str),
    "persrec_tokens": ("model.persrec_tokens", int),
    "persrec_segment": ("model.persrec_segment", int),
    "persrec_recent": ("model.persrec_recent", int),
}


# On/off training options (--x / --no-x), named as their config fields.
_SWITCHES = {
    "balance": "under torchrun: balance each global batch over the ranks (default on)",
    "fit_cost": "refit the balancing cost model from measured step times (default on)",
    "tf32": "TF32 tensor cores for fp32 matmuls on GPU (default on)",
    "embedding_prefetch": "sharded embeddings: fetch the next step's rows during this step, "
    "exactly (default off: measured slower so far)",
    "embedding_stale": "with --embedding-prefetch: the prefetched rows skip this step's sparse "
    "update (semi-synchronous, one step stale, not exact), which runs beside the next backward",
}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quickstart", help=f"one of: {', '.join(PRESETS)}")
    for flag, (name, kind) in _TRAIN_FLAGS.items():
        p.add_argument(
            f"--{flag.replace('_', '-')}",
            dest=flag,
            type=kind,
            default=None,
            help=f"override {name}",
        )
    p.add_argument("--in-batch-negatives", action="store_true", default=None)
    p.add_argument(
        "--time-bias",
        action="store_true",
        default=None,
        help="HSTU relative time bias (needs timestamps in the data)",
    )
    p.add_argument("--no-pos-bias", action="store_true", default=None)
    for flag, help_text in _SWITCHES.items():
        p.add_argument(
            f"--{flag.replace('_', '-')}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=help_text,
        )
    p.add_argument(
        "--cost",
        default=None,
        help="A,B,C0 of the per-sample cost A*L^2 + B*L + C0 (default: from the model's FLOPs)",
    )
    p.add_argument("--run-dir", type=Path, default=None, help="where logs and checkpoints go")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue the run in this directory from its latest checkpoint",
    )
    p.add_argument("--progress", choices=["auto", "on", "off"], default=None)


def build_config(args: argparse.Namespace) -> TrainConfig:
    config = preset_config(args.preset)
    raw = config.to_dict()
    for flag, (name, _) in _TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if name.startswith("model."):
            raw["model"][name.split(".", 1)[1]] = value
        else:
            raw[name] = value
    if args.in_batch_negatives:
        raw["in_batch_negatives"] = True
    if args.time_bias:
        raw["model"]["time_bias"] = True
    if args.no_pos_bias:
        raw["model"]["pos_bias"] = False
    for flag in _SWITCHES:
        if getattr(args, flag) is not None:
            raw[flag] = getattr(args, flag)
    if args.cost:
        raw["cost"] = [float(x) for x in args.cost.split(",")]
        if len(raw["cost"]) != 3:
            raise SystemExit(f"--cost needs A,B,C0, got {args.cost!r}")
    if args.progress:
        raw["progress"] = args.progress
    return TrainConfig.from_dict(raw)


def _format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _metric_rows(metrics: dict) -> list[tuple[str, str]]:
    keys = [k for k in metrics if k.startswith(("hr@", "ndcg@", "mrr"))]
    return [(k, f"{metrics[k]:.4f}") for k in keys]


def _run_stamp(device: str) -> str:
    """One timestamp for every rank of a torchrun job (rank 0's)."""
    from freescale.distributed import init_distributed

    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    env = init_distributed(device)
    if env.enabled:
        import torch.distributed as dist

        dist.broadcast_object_list(stamp, src=0)
    return stamp[0]


def cmd_train(args: argparse.Namespace) -> int:
    from freescale.train import Trainer

    if args.resume is not None:
        config = TrainConfig.load(args.resume / "config.json")
        for flag in ("epochs", "max_steps", "device", "progress"):
            if getattr(args, flag, None) is not None:
                setattr(config, flag, getattr(args, flag))
        run_dir, resume = args.resume, True
    else:
        config = build_config(args)
        if args.run_dir is not None:
            run_dir = args.run_dir
        else:
            stamp = _run_stamp(config.device)
            run_dir = Path("runs") / f"{config.preset or config.model.kind}-{stamp}"
        resume = False
    trainer = Trainer(config, run_dir, resume=resume)
    try:
        if trainer.env.is_main:
            _print_header(trainer, run_dir)
        summary = trainer.fit()
    finally:
        trainer.close()
    if trainer.env.is_main:
        _print_summary(trainer, summary, run_dir)
    return 0


def _print_header(trainer, run_dir: Path) -> None:
    config = trainer.config
    print(
        f"freescale train: {config.preset or 'custom'} | data {config.data} "
        f"({trainer.dataset.num_users} users, {trainer.dataset.num_items} items) | "
        f"{config.model.kind} {trainer.model.num_parameters():,} params | "
        f"{trainer.env.world_size} x {trainer.device.type} | run {run_dir}",
        flush=True,
    )


def _print_summary(trainer, summary: dict, run_dir: Path) -> None:
    from freescale.evaluate import evaluate_popularity

    # eval_every = -1 never evaluates: no baseline either (on a catalog of millions of items it
    # would rank every one of them for every user).
    baseline = evaluate_popularity(trainer.split) if trainer.config.eval_every >= 0 else {}
    final = summary["final"]
    rows = [
        ("run", str(run_dir)),
        ("epochs / steps", f"{summary['epochs']} / {summary['steps']}"),
        (
            "train time",
            f"{summary['train_seconds']:.1f} s ({summary['tokens_per_s']:.0f} tokens/s)",
        ),
    ]
    rows += [(f"{k} ({trainer.split.stage})", v) for k, v in _metric_rows(final)]
    rows += [(f"{k} popularity", v) for k, v in _metric_rows(baseline) if k.endswith("@10")]
    if summary["best_epoch_by_ndcg10"] is not None:
        rows.append(
            (
                f"max {trainer.split.stage} NDCG@10 over epochs (epoch; not a selection)",
                f"{summary['best_ndcg@10']:.4f} ({summary['best_epoch_by_ndcg10']})",
            )
        )
    print("\nSummary\n" + _format_table(rows))
    (run_dir / "summary.json").write_text(
        json.dumps({"summary": summary, "popularity": baseline}, indent=2) + "\n"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from freescale.checkpoint import load_checkpoint
    from freescale.data import leave_one_out, load_dataset
    from freescale.evaluate import evaluate
    from freescale.models.persrec import build_recommender
    from freescale.train import resolve_amp, resolve_device

    config = TrainConfig.load(args.run_dir / "config.json")
    if args.data:
        config.data = args.data
    device = resolve_device(args.device or config.device)
    dataset = load_dataset(config.data)
    split = leave_one_out(dataset, protocol=config.protocol, stage=args.stage)
    model = build_recommender(dataset.num_items, config.model).to(device)
    state = load_checkpoint(args.checkpoint or args.run_dir, model, restore_rng=False)
    metrics = evaluate(
        model,
        split,
        device=device,
        batch_size=config.eval_batch_size,
        amp_dtype=resolve_amp(config.amp, device),
    )
    print(
        f"checkpoint {state['checkpoint']} (step {state['step']}), {split.stage} users: "
        f"{metrics.get('num_users', 0)}"
    )
    print(_format_table(_metric_rows(metrics)))
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _simulation_lengths(args: argparse.Namespace):
    import numpy as np

    if args.data:
        from freescale.data import load_dataset

        lengths = load_dataset(args.data).lengths
    else:
        median, sigma = (float(x) for x in args.lognormal.split(","))
        rng = np.random.default_rng(args.seed)
        lengths = rng.lognormal(np.log(median), sigma, 200_000).round()
    return np.clip(lengths, 1, args.max_len).astype(np.int64)


def cmd_simulate(args: argparse.Namespace) -> int:
    from freescale.balance import CostModel, format_table, simulate

    a, b, c0 = (float(x) for x in args.cost.split(","))
    lengths = _simulation_lengths(args)
    rows = simulate(
        lengths,
        [int(x) for x in args.ranks.split(",")],
        per_rank_batch=args.per_rank_batch,
        steps=args.steps,
        cost_model=CostModel(a, b, c0, tile=args.tile),
        seed=args.seed,
    )
    median, sigma = args.lognormal.split(",")
    source = args.data or f"lognormal(median={median}, sigma={sigma})"
    print(
        f"lengths: {source}, capped at {args.max_len} (mean {lengths.mean():.0f}, "
        f"max {lengths.max()}); cost = {a}*L^2 + {b}*L + {c0}"
    )
    print(format_table(rows))
    return 0


def cmd_serve_bench(args: argparse.Namespace) -> int:
    import torch

    from freescale.models import ModelConfig
    from freescale.models.persrec import build_recommender
    from freescale.serving import serve_benchmark

    config = ModelConfig(
        kind=args.model,
        dim=args.dim,
        num_blocks=args.blocks,
        num_heads=args.heads,
        dim_qk=args.dqk,
        dim_v=args.dv,
        dropout=0.0,
        max_len=args.history + args.recent,
        persrec_tokens=args.tokens,
        persrec_segment=args.segment,
        persrec_recent=args.recent,
    )
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = build_recommender(args.items, config).to(args.device, dtype)
    graphs = args.cuda_graphs
    if graphs is None:
        graphs = torch.device(args.device).type == "cuda"
    print(
        f"{args.model} {args.blocks} blocks x {args.heads} heads, dim {args.dim}; users x "
        f"(history {args.history} + recent {args.recent}); {args.tokens} tokens per group, "
        f"segment {args.segment or 'all'}; {args.device}, {args.dtype}, "
        f"{'CUDA graphs' if graphs else 'eager'}; median of {args.repeats} calls"
    )
    profiles = []
    print(
        "| users | mode | latency ms | cached: lower latency | device pass ms | cached: lower "
        "| users/s | GFLOP per batch |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for users in (int(u) for u in args.users.split(",")):
        base, cached = serve_benchmark(
            model,
            users=users,
            history=args.history,
            recent=args.recent,
            repeats=args.repeats,
            device=args.device,
            cuda_graphs=graphs,
            profile=args.profile,
        )
        for r in (base, cached):
            speedup = f"{base.latency_ms / r.latency_ms:.1f}x" if r is cached else ""
            pass_speedup = f"{base.pass_ms / r.pass_ms:.1f}x" if r is cached else ""
            print(
                f"| {users} | {r.mode} | {r.latency_ms:.3f} | {speedup} | {r.pass_ms:.3f} | "
                f"{pass_speedup} | {r.users_per_s:.0f} | {r.gflops:.3f} |"
            )
            if r.profile:
                profiles.append(f"{users} users, {r.mode}:\n{r.profile}")
    print(f"cached serving uses {base.gflops / cached.gflops:.1f}x fewer FLOPs")
    print("\n".join(profiles))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    print(_format_table([(name, desc) for name, (desc, _) in PRESETS.items()]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freescale", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a model (CPU, one GPU, or one GPU per rank under torchrun)"
    )
    _add_train_args(train)
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="evaluate a run's checkpoint with full-catalog ranking")
    ev.add_argument("--run-dir", type=Path, required=True)
    ev.add_argument("--checkpoint", type=Path, default=None, help="default: the run's latest")
    ev.add_argument("--data", default=None, help="override the run's dataset")
    ev.add_argument("--stage", choices=["test", "valid"], default="test")
    ev.add_argument("--device", default=None)
    ev.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    ev.set_defaults(func=cmd_eval)
    sim = sub.add_parser("simulate", help="predict straggler bubbles with/without balancing")
    sim.add_argument(
        "--data", default=None, help="take lengths from a dataset (default: lognormal)"
    )
    sim.add_argument("--lognormal", default="400,1.0", help="MEDIAN,SIGMA of synthetic lengths")
    sim.add_argument("--max-len", type=int, default=4096)
    sim.add_argument("--ranks", default="8,16,32,64,128,256,512,1024,2048,4096")
    sim.add_argument("--per-rank-batch", type=int, default=32)
    sim.add_argument("--steps", type=int, default=20)
    sim.add_argument("--cost", default="1,512,0", help="A,B,C0 of cost = A*L^2 + B*L + C0")
    sim.add_argument(
        "--tile", type=int, default=0, help="count L^2 in whole causal tiles of this size"
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)
    sb = sub.add_parser(
        "serve-bench", help="PerSRec serving latency with vs without the token cache"
    )
    sb.add_argument("--users", default="32", help="batch sizes, comma separated")
    for flag, default in (
        ("history", 1024),
        ("recent", 50),
        ("tokens", 8),
        ("segment", 0),
        ("items", 10000),
        ("dim", 64),
        ("blocks", 4),
        ("heads", 2),
        ("dqk", 32),
        ("dv", 32),
        ("repeats", 5),
    ):
        sb.add_argument(f"--{flag}", type=int, default=default)
    sb.add_argument("--model", choices=["hstu", "stu", "sasrec"], default="hstu")
    sb.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="model weights and activations (bfloat16 runs the CUDA kernels on a GPU)",
    )
    sb.add_argument("--device", default="cpu")
    sb.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay each pass as a CUDA graph (default: on for CUDA devices)",
    )
    sb.add_argument(
        "--profile", action="store_true", help="also print each mode's top operators (profiler)"
    )
    sb.set_defaults(func=cmd_serve_bench)
    presets = sub.add_parser("presets", help="list the training presets")
    presets.set_defaults(func=cmd_presets)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
