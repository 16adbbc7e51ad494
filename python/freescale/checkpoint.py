"""Atomic, resumable checkpoints (DESIGN §9).

A checkpoint is a directory `step-00001234/` holding the model and optimizer through
torch.distributed.checkpoint (sharding-ready, no pickled Python objects) plus `trainer.json`
(epoch, step, sampler position, metrics so far) and `rng.pt` (tensors only, loaded with
weights_only=True; rank r > 0 of a torchrun job adds `rng-r.pt`); sharded embedding tables add
`local-r.pt` per rank (their shards and sparse optimizer state). It is written under a
temporary name and renamed into place, and `latest` (also replaced atomically) names the newest
complete one, so a crash mid-write never leaves a checkpoint that looks complete. With ranks,
every rank writes its part (DCP stores a replicated tensor once) and rank 0 renames after a
barrier.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from freescale.distributed import DistEnv, rank_local_prefixes

LATEST = "latest"
RNG_FILE = "rng.pt"


def _rng_file(rank: int) -> str:
    return RNG_FILE if rank == 0 else f"rng-{rank}.pt"


def _local_file(rank: int) -> str:
    return f"local-{rank}.pt"


def _split_rank_local(model: torch.nn.Module, model_state: dict) -> dict:
    """Removes and returns the rank-local entries (sharded tables) of a model state dict: DCP
    would take same-named tensors of different ranks for replicas."""
    prefixes = rank_local_prefixes(model)
    if not prefixes:
        return {}
    return {k: model_state.pop(k) for k in [k for k in model_state if k.startswith(prefixes)]}


def _barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


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
    env: DistEnv | None = None,
) -> Path:
    env = env or DistEnv()
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(env)
    model_state, optim_state = get_state_dict(model, optimizer)
    local = _split_rank_local(model, model_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    torch.save(_rng_state(), tmp / _rng_file(env.rank))
    if local:
        torch.save({"world_size": env.world_size, "state": local}, tmp / _local_file(env.rank))
    _barrier(env)
    if env.is_main:
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _atomic_write_text(root / LATEST, final.name + "\n")
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(env)
    return final


def load_rank_local(path: Path, env: DistEnv) -> dict:
    """This rank's rank-local state (its table shards) of a checkpoint directory."""
    own = path / _local_file(env.rank)
    if not own.exists():
        raise FileNotFoundError(
            f"{own} missing: sharded tables resume on the ranks that wrote them"
        )
    # On the CPU: load_state_dict copies into the parameters wherever they live, and a shard
    # saved from cuda:<rank> must not land on that device of another process (or machine).
    saved = torch.load(own, weights_only=True, map_location="cpu")
    if saved["world_size"] != env.world_size:
        raise ValueError(
            f"{path} holds tables sharded over {saved['world_size']} ranks; this job has "
            f"{env.world_size} (resharding is not supported)"
        )
    return saved["state"]


def gather_tables(path: Path) -> dict[str, torch.Tensor]:
    """The whole tables of a checkpoint's sharded embeddings, named as a model with a plain
    table names them (every rank's `items.table.weight` -> `items.weight`); {} if none."""
    files = sorted(path.glob("local-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        return {}
    states = [torch.load(f, weights_only=True, map_location="cpu")["state"] for f in files]
    suffix = ".table.weight"
    return {
        key.removesuffix(suffix) + ".weight": torch.cat([s[key] for s in states])
        for key in states[0]
        if key.endswith(suffix)
    }


def _complete(path: Path) -> bool:
    return (path / "trainer.json").exists() and (path / RNG_FILE).exists()


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
    env: DistEnv | None = None,
) -> dict:
    """Loads model (and optimizer, RNG) state in place; returns the trainer state. With ranks,
    every rank must pass the same `path` (rank 0 resolves `latest` for all)."""
    env = env or DistEnv()
    path = resolve_checkpoint(path)
    if env.enabled:  # a checkpoint completed between two ranks' lookups must not split them
        chosen = [str(path)]
        dist.broadcast_object_list(chosen, src=0)
        path = Path(chosen[0])
    model_state, optim_state = get_state_dict(model, optimizer if optimizer else [])
    has_local = bool(_split_rank_local(model, model_state))
    # A model with plain tables reading a sharded run's checkpoint (evaluation, export): the
    # tables come whole from the shards.
    tables = {} if has_local else {k: v for k, v in gather_tables(path).items() if k in model_state}
    for key in tables:
        model_state.pop(key)
    state: dict = {"model": model_state}
    if optimizer is not None:
        state["optim"] = optim_state
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, checkpoint_id=str(path))
    if optimizer is not None:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=StateDictOptions(strict=not has_local),
        )
    else:
        model.load_state_dict(state["model"], strict=not (has_local or tables))
    if tables:
        model.load_state_dict(tables, strict=False)
    if has_local:
        model.load_state_dict(load_rank_local(path, env), strict=False)
    if restore_rng:
        own = path / _rng_file(env.rank)
        if not own.exists():
            raise FileNotFoundError(f"{own} missing: was the checkpoint written by fewer ranks?")
        _set_rng_state(torch.load(own, weights_only=True, map_location="cpu"))
    trainer_state = json.loads((path / "trainer.json").read_text())
    trainer_state["checkpoint"] = str(path)
    return trainer_state
