"""Runs `freescale train` under torchrun (gloo on CPU) for the multi-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from freescale.checkpoint import load_checkpoint
from freescale.config import TrainConfig
from freescale.data import load_dataset
from freescale.models import SequentialRecommender

TIMEOUT_S = 300


def run_train(args: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    """`freescale train ARGS` on `nproc` CPU processes (or one plain process if nproc == 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "freescale.cli"]
    if nproc:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "freescale.cli",
        ]
    result = subprocess.run(
        [*launcher, "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
            f"--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def load_run_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of a run's latest checkpoint."""
    config = TrainConfig.load(run_dir / "config.json")
    model = SequentialRecommender(load_dataset(config.data).num_items, config.model)
    load_checkpoint(run_dir, model, restore_rng=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
