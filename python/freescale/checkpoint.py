"""Atomic, resumable checkpoints (DESIGN §9).

A checkpoint is a directory `step-00001234/` holding the model and optimizer through
torch.distributed.checkpoint (sharding-ready, no pickled Python objects) plus `trainer.json`
(epoch, step, sampler position, metrics so far) and `rng.pt` (tensors only, loaded with
weights_only=True). It is written under a temporary name and
renamed into place, and `latest` (also replaced atomically) names the newest complete one, so a
crash mid-write never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

LATEST = "latest"


def _rng_state() -> dict[str, torch.Tensor]:
    """CPU and current-device generators: one process drives one GPU, and touching the others
    would create a CUDA context on every visible device."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    keep: int = 2,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(root / LATEST, final.name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(path: Path) -> bool:
    return (path / "trainer.json").exists() and (path / "rng.pt").exists()


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run/checkpoints directory: the one `latest` names, else
    (a crash between writes) the newest complete `step-*`."""
    if _complete(path):
        return path
    for root in (path, path / "checkpoints"):
        if (root / LATEST).exists():
            named = root / (root / LATEST).read_text().strip()
            if _complete(named):
                return named
        complete = [p for p in sorted(root.glob("step-*")) if _complete(p)]
        if complete:
            return complete[-1]
    raise FileNotFoundError(f"no complete checkpoint at {path}")


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict:
    """Loads model (and optimizer, RNG) state in place; returns the trainer state."""
    path = resolve_checkpoint(path)
    model_state, optim_state = get_state_dict(model, optimizer if optimizer else [])
    state: dict = {"model": model_state}
    if optimizer is not None:
        state["optim"] = optim_state
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, checkpoint_id=str(path))
    if optimizer is not None:
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
    else:
        model.load_state_dict(state["model"])
    if restore_rng:
        _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    trainer_state = json.loads((path / "trainer.json").read_text())
    trainer_state["checkpoint"] = str(path)
    return trainer_state
