"""Sharded embedding steps on one GPU: a prefetched step never stalls the host (its only host
read, the plan's split counts, sits in prefetch_step on a side stream), the checks of its
lookups raise a step late instead of syncing, and the pipelined path trains like the plain one.
Multi-GPU exactness is in test_sharded_training.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from freescale.embeddings import ShardedEmbedding, SparseOptimizerConfig

pytestmark = pytest.mark.gpu

NUM_ROWS, DIM, STEPS = 5000, 16, 6


def _step_ids(step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    # A long tail plus a shared head, so consecutive steps share rows (late rows exist).
    tail = torch.randint(0, NUM_ROWS, (3000,), generator=gen)
    head = torch.randint(0, 50, (1000,), generator=gen)
    return torch.cat([tail, head]).cuda()


def _one_step(table: ShardedEmbedding, step: int, *, prefetch: bool, next_ids=None) -> None:
    ids = next_ids if next_ids is not None else _step_ids(step)
    upcoming = _step_ids(step + 1)  # before begin_step: the prefetch plans after begin_step only
    table.zero_grad()
    table.begin_step(ids)
    rows = table(ids)
    loss = (rows.sum(dim=1) * torch.linspace(-1, 1, ids.numel(), device="cuda")).pow(2).sum()
    loss.backward()
    if prefetch:
        table.prefetch_step(upcoming)
    table.end_step()
    table.step()


@pytest.mark.parametrize("kind", ["rowwise_adagrad", "adam"])
def test_pipelined_steps_equal_plain_steps(kind):
    opt = SparseOptimizerConfig(kind, lr=0.05)
    plain = ShardedEmbedding(NUM_ROWS, DIM, optimizer=opt, dtype=torch.float64, device="cuda")
    piped = ShardedEmbedding(NUM_ROWS, DIM, optimizer=opt, dtype=torch.float64, device="cuda")
    for step in range(STEPS):
        _one_step(plain, step, prefetch=False)
        _one_step(piped, step, prefetch=step + 1 < STEPS)
    piped.cancel_prefetch()
    initial = ShardedEmbedding(NUM_ROWS, DIM, dtype=torch.float64, device="cuda").weight
    assert not torch.equal(plain.weight, initial)
    torch.testing.assert_close(piped.weight, plain.weight, rtol=0, atol=1e-12)
    early, late = piped.prefetch_counts
    assert early > 0 and late > 0


def test_stale_steps_apply_every_update_once():
    """Stale prefetching defers each update to the next prefetch's side stream; at the end the
    table holds every step's update (against one-process semi-synchronous steps on the CPU)."""
    opt = SparseOptimizerConfig("adam", lr=0.05)
    gpu = ShardedEmbedding(NUM_ROWS, DIM, optimizer=opt, dtype=torch.float64, device="cuda")
    cpu = ShardedEmbedding(NUM_ROWS, DIM, optimizer=opt, dtype=torch.float64)
    gpu.weight.copy_(cpu.weight)  # initial rows are drawn per device type
    for table in (gpu, cpu):
        for step in range(STEPS):
            ids = _step_ids(step).to(table.weight.device)
            upcoming = _step_ids(step + 1).to(ids.device)  # ready before begin_step
            table.zero_grad()
            table.begin_step(ids)
            rows = table(ids)
            weights = torch.linspace(-1, 1, ids.numel(), device=ids.device, dtype=rows.dtype)
            (rows.sum(dim=1) * weights).pow(2).sum().backward()
            if step + 1 < STEPS:
                table.prefetch_step(upcoming, stale=True)
            table.end_step()
            table.step()
    torch.testing.assert_close(gpu.full_table().cpu(), cpu.full_table(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("stale", [False, True], ids=["exact", "stale"])
def test_prefetched_step_does_not_sync_the_host(stale):
    """begin_step (completing the prefetch), the lookups, end_step and step() under
    torch's sync debug mode: any synchronizing CUDA call in them raises. (It cannot see waits
    on events, which read only what is long done, nor a driver's wait in a copy from pageable
    memory.)"""
    table = ShardedEmbedding(NUM_ROWS, DIM, device="cuda")
    table.begin_step(_step_ids(0))
    table.prefetch_step(_step_ids(1), stale=stale)
    table.end_step()
    table.step()
    # From step 2 on: step 1's prefetch still applies step 0's update, which a plain fetch
    # planned, so its rows are grouped with torch.unique (one more read).
    for step in range(1, 5):
        checked = step >= 2
        ids = _step_ids(step)
        table.zero_grad()
        torch.cuda.set_sync_debug_mode("error" if checked else "default")
        try:
            table.begin_step(ids)
            rows = table(ids)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        rows.square().sum().backward()  # autograd's own kernels: not this module's code
        # Its one host read, the plan's split counts, on the side stream: one sync warning.
        next_ids = _step_ids(step + 1)  # (a copy from pageable memory syncs: made outside)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                table.prefetch_step(next_ids, stale=stale)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == 1 or not checked, [str(w.message) for w in syncs]
        torch.cuda.set_sync_debug_mode("error" if checked else "default")
        try:
            table.end_step()
            table.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    table.cancel_prefetch()


def test_lookup_of_unfetched_ids_raises_a_step_later():
    table = ShardedEmbedding(12, DIM, device="cuda")
    table.begin_step(torch.tensor([3, 5], device="cuda"))
    table(torch.tensor([3, 4], device="cuda"))  # 4 was not fetched: flagged on the device
    table.end_step()
    table.step()
    table.begin_step(torch.tensor([3], device="cuda"))
    table(torch.tensor([3], device="cuda"))
    with pytest.raises(ValueError, match="step 1: lookup of ids that begin_step did not fetch"):
        table.end_step()


def test_mismatched_prefetch_raises_a_step_later():
    table = ShardedEmbedding(12, DIM, device="cuda")
    table.begin_step(torch.tensor([3, 5], device="cuda"))
    table.prefetch_step(torch.tensor([5, 7], device="cuda"))
    table.end_step()
    table.step()
    table.begin_step(torch.tensor([7, 5], device="cuda"))  # same rows, another order
    table.end_step()  # step 2's flags gathered, not read
    table.step()
    table.begin_step(torch.tensor([1], device="cuda"))
    with pytest.raises(ValueError, match=r"step 2: begin_step ids differ .* \(rank\(s\) \[0\]\)"):
        table.end_step()
    # cancel_prefetch (end of training) reads the flags of the step under way.
    table = ShardedEmbedding(12, DIM, device="cuda")
    table.begin_step(torch.tensor([3, 5], device="cuda"))
    table(torch.tensor([4], device="cuda"))
    with pytest.raises(ValueError, match="step 1: lookup of ids that begin_step did not fetch"):
        table.cancel_prefetch()
