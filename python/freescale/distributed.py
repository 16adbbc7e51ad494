"""Process-group setup for `torchrun` and the few collectives the trainer needs.

One process drives one GPU (NCCL) or one CPU worker (gloo). Dense parameters are replicated:
gradients are summed with one all-reduce over a flat buffer after backward, so the update is the
single-process update of the global batch (the loss is normalized by the global target count).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = 600.0  # of the group's collectives (groups made later use it too)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str, timeout_s: float = 600.0) -> DistEnv:
    """Joins the `torchrun` group when WORLD_SIZE > 1: NCCL when the device is a GPU, gloo
    otherwise. A single process gets the trivial environment and no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        kwargs = {}
        if use_cuda:
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError("process group disagrees with RANK/WORLD_SIZE")
    return DistEnv(rank, world, local_rank, backend, timeout_s)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_local_prefixes(module: torch.nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the submodules whose state differs per rank by design (the
    shards of a sharded embedding table: `rank_local_state = True`)."""
    return tuple(
        f"{name}." for name, m in module.named_modules() if getattr(m, "rank_local_state", False)
    )


def broadcast_parameters(module: torch.nn.Module, env: DistEnv) -> None:
    """Every rank starts from rank 0's weights (initialization is seeded alike, but a rank
    that drew one extra random number would silently diverge). Rank-local state (shards) is
    left alone."""
    if env.enabled:
        local = rank_local_prefixes(module)
        for key, tensor in module.state_dict().items():
            if not (local and key.startswith(local)):
                dist.broadcast(tensor, src=0)


def all_reduce_gradients(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    """Sums gradients over ranks with one all-reduce of a flat buffer (missing grads count as
    zero, so every rank reduces the same layout). Unlike one process, a parameter that got no
    gradient on any rank then gets zeros, which AdamW decays; telling the two apart would need a
    host sync per step. Every parameter of freescale's models gets a gradient every step (PerSRec's
    tokens too: zeros when no sample has history to compress)."""
    if not env.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n


def all_gather_array(values: np.ndarray, env: DistEnv, device: torch.device) -> np.ndarray:
    """[world, *values.shape] float64: every rank's `values` (same shape on every rank)."""
    values = np.asarray(values, dtype=np.float64)
    if not env.enabled:
        return values[None]
    local = torch.from_numpy(values).to(device)
    out = [torch.empty_like(local) for _ in range(env.world_size)]
    dist.all_gather(out, local)
    return torch.stack(out).cpu().numpy()


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return value


def broadcast_from_main(values: list[float], env: DistEnv) -> list[float]:
    """Rank 0's `values` on every rank (small host lists: pickled through the group)."""
    if not env.enabled:
        return list(values)
    box = [list(values)]
    dist.broadcast_object_list(box, src=0)
    return box[0]
