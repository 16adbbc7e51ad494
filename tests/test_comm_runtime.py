"""The copy-engine all-to-all-v (freescale_ext.comm.CommRuntime) on 2 and 4 GPUs: exact against
NCCL's all_to_all_single on rank-encoded rows, random splits with zeros, many calls reusing the
receive region, back-to-back calls with skewed ranks, both ways of issuing the copies; priority
classes interleaved on two streams, the bulk class cut into pieces; put/get/signal/wait/barrier;
a peer that never signals becomes an error, not a hang."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.multi_gpu
ROW = 6  # int32 values per row


def _encoded_rows(rank: int, splits: np.ndarray, call: int) -> torch.Tensor:
    """Rank `rank`'s rows for each destination: (src, dst, index, call, ...) as int32."""
    parts = []
    for dst, n in enumerate(splits[rank]):
        rows = torch.zeros(int(n), ROW, dtype=torch.int32)
        rows[:, 0], rows[:, 1], rows[:, 3] = rank, dst, call
        rows[:, 2] = torch.arange(int(n))
        rows[:, 4:] = torch.randint(0, 2**30, (int(n), ROW - 4), generator=_gen(rank, call))
        parts.append(rows)
    return torch.cat(parts).cuda()


def _gen(rank: int, call: int) -> torch.Generator:
    return torch.Generator().manual_seed(rank * 100_003 + call)


def _nccl_all_to_all(x: torch.Tensor, splits: np.ndarray, rank: int) -> torch.Tensor:
    want = x.new_empty((int(splits[:, rank].sum()), *x.shape[1:]))
    dist.all_to_all_single(want, x, splits[:, rank].tolist(), splits[rank].tolist())
    return want


def _exact_worker(rank: int, world: int, init_file: str, calls: int, options: dict) -> None:
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    runtime = CommRuntime(recv_bytes=world * 4000 * ROW * 4, timeout_s=30.0, **options)
    assert runtime.uses_copy_engines, runtime.description
    rng = np.random.default_rng(7)  # the same split matrices on every rank
    for call in range(calls):
        splits = rng.integers(0, 4000, (world, world))
        splits[rng.random((world, world)) < 0.25] = 0
        x = _encoded_rows(rank, splits, call)
        got = runtime.all_to_all_v(x, splits).clone()
        want = _nccl_all_to_all(x, splits, rank)
        torch.cuda.synchronize()
        assert torch.equal(got, want), f"rank {rank}, call {call}"
        # The own chunk in place: every other slot exact, the own one untouched (poisoned).
        runtime.all_to_all_v(torch.full_like(x, -7), splits)  # fills the own slot with -7
        peers_only = runtime.all_to_all_v(x, splits, own_chunk=False).clone()
        own = slice(int(splits[:rank, rank].sum()), int(splits[: rank + 1, rank].sum()))
        torch.cuda.synchronize()
        assert bool((peers_only[own] == -7).all()), f"own slot written: rank {rank}, call {call}"
        peers_only[own] = want[own]
        assert torch.equal(peers_only, want), f"own chunk in place: rank {rank}, call {call}"
        block = torch.full((50, ROW), rank * 1000 + call, dtype=torch.int32, device="cuda")
        gathered = runtime.all_gather(block).clone()
        expect = torch.empty_like(gathered)
        dist.all_gather_into_tensor(expect, block)
        torch.cuda.synchronize()
        assert torch.equal(gathered, expect), f"all_gather: rank {rank}, call {call}"
    _refuses_bad_input(runtime, rank, world)
    # A refused call issued nothing: the runtime still works.
    splits = np.full((world, world), 3)
    x = _encoded_rows(rank, splits, calls)
    got = runtime.all_to_all_v(x, splits).clone()
    assert torch.equal(got, _nccl_all_to_all(x, splits, rank))
    runtime.check()
    runtime.close()
    dist.destroy_process_group()


def _refuses_bad_input(runtime, rank: int, world: int) -> None:
    splits = np.full((world, world), 2)
    x = torch.zeros(2 * world, ROW, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=rf"x has {2 * world - 1} rows, split_rows"):
        runtime.all_to_all_v(x[:-1], splits)
    with pytest.raises(ValueError, match=r"split_rows must be \["):
        runtime.all_to_all_v(x, splits[:, :1])
    negative = splits.copy()
    negative[0, 0] = -2
    negative[0, 1] = 6  # rank 0's rows still add up
    with pytest.raises(ValueError, match=">= 0"):
        runtime.all_to_all_v(x, negative)
    huge = np.full((world, world), 4000 * world)  # every rank would receive world x too much
    with pytest.raises(ValueError, match="would receive"):
        runtime.all_to_all_v(torch.zeros(4000 * world * world, ROW, device="cuda"), huge)
    with pytest.raises(ValueError, match="must be on cuda"):
        runtime.all_to_all_v(x.cpu(), splits)
    with pytest.raises(ValueError, match="priority -1 out of"):
        runtime.all_to_all_v(x, splits, priority=-1)
    with pytest.raises(ValueError, match="does not fit"):  # world x (the region + 4 B)
        runtime.all_gather(torch.zeros(4000 * ROW + 1, dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError, match="priority 1 out of"):
        runtime.all_gather(x, priority=1)


def _back_to_back_worker(rank: int, world: int, init_file: str, calls: int, options: dict) -> None:
    """Calls queued without any host sync, ranks skewed by random GPU sleeps before each call
    and before each consumer: a fast rank's epoch e+1 meets a slow rank's epoch e."""
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    runtime = CommRuntime(recv_bytes=world * 2000 * ROW * 4, timeout_s=60.0, **options)
    assert runtime.uses_copy_engines, runtime.description
    rng, skew = np.random.default_rng(11), np.random.default_rng(rank)
    cases = []
    for call in range(calls):
        splits = rng.integers(0, 2000, (world, world))
        splits[rng.random((world, world)) < 0.25] = 0
        cases.append((splits, _encoded_rows(rank, splits, call)))
    torch.cuda.synchronize()
    got = []
    for splits, x in cases:
        torch.cuda._sleep(int(skew.integers(0, 3_000_000)))
        out = runtime.all_to_all_v(x, splits)
        torch.cuda._sleep(int(skew.integers(0, 3_000_000)))  # a slow consumer of the result
        got.append(out.clone())
    torch.cuda.synchronize()
    runtime.check()
    for call, (splits, x) in enumerate(cases):
        want = _nccl_all_to_all(x, splits, rank)
        torch.cuda.synchronize()
        assert torch.equal(got[call], want), f"rank {rank}, call {call}"
    runtime.close()
    dist.destroy_process_group()


def _priority_worker(rank: int, world: int, init_file: str, calls: int, options: dict) -> None:
    """An urgent class (0) and a bulk class (1) on two streams, interleaved without host syncs
    and skewed by GPU sleeps; the bulk copies cut into odd-sized pieces that straddle rows."""
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    urgent_rows, bulk_rows = 300, 5000
    runtime = CommRuntime(
        recv_bytes=[world * urgent_rows * ROW * 4, world * bulk_rows * ROW * 4],
        piece_bytes=4096 + 20,
        timeout_s=60.0,
        **options,
    )
    assert runtime.uses_copy_engines, runtime.description
    rng, skew = np.random.default_rng(13), np.random.default_rng(rank)
    cases = []
    for call in range(calls):
        per_class = []
        for cap in (urgent_rows, bulk_rows):
            splits = rng.integers(0, cap, (world, world))
            splits[rng.random((world, world)) < 0.2] = 0
            per_class.append((splits, _encoded_rows(rank, splits, 2 * call + len(per_class))))
        cases.append(per_class)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    torch.cuda.synchronize()
    got: list[list[torch.Tensor]] = [[], []]
    for per_class in cases:
        for cls in (1, 0):  # the bulk call first, the urgent one right behind it
            splits, x = per_class[cls]
            with torch.cuda.stream(streams[cls]):
                torch.cuda._sleep(int(skew.integers(0, 1_000_000)))
                got[cls].append(runtime.all_to_all_v(x, splits, priority=cls).clone())
    torch.cuda.synchronize()
    runtime.check()
    for call, per_class in enumerate(cases):
        for cls, (splits, x) in enumerate(per_class):
            want = _nccl_all_to_all(x, splits, rank)
            torch.cuda.synchronize()
            assert torch.equal(got[cls][call], want), f"rank {rank}, call {call}, class {cls}"
    with pytest.raises(ValueError, match="priority 2 out of"):
        runtime.all_to_all_v(cases[0][0][1], cases[0][0][0], priority=2)
    runtime.close()
    dist.destroy_process_group()


def _one_sided_worker(rank: int, world: int, init_file: str, calls: int) -> None:
    """put + signal / wait, get, barrier: each rank puts a rank-encoded block into the next
    rank's heap and signals it; the next rank waits, reads its heap, and gets the block back
    from the sender's own heap after a barrier."""
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = 1000  # int32 values per block
    runtime = CommRuntime(recv_bytes=2 * world * n * 4, timeout_s=30.0)
    assert runtime.uses_copy_engines, runtime.description
    nxt, prev = (rank + 1) % world, (rank - 1) % world
    own = world * n * 4  # second half of the heap: each rank's own copy of what it sent
    skew = np.random.default_rng(rank)  # GPU sleeps: ranks out of step, as in real use
    for call in range(1, calls + 1):
        block = torch.arange(n, dtype=torch.int32, device="cuda") + rank * 1_000_000 + call
        torch.cuda._sleep(int(skew.integers(0, 2_000_000)))
        runtime.put(rank, own, block)  # keep a copy in this rank's own heap
        runtime.put(nxt, rank * n * 4, block)
        runtime.signal(nxt, 0, call)
        runtime.signal(rank, 1, call)  # to itself: a wait on it passes at once
        runtime.wait(1, call)
        runtime.wait(0, call)
        torch.cuda._sleep(int(skew.integers(0, 2_000_000)))
        got = runtime.heap()[prev * n * 4 : (prev + 1) * n * 4].view(torch.int32).clone()
        runtime.barrier()  # every put of this call has landed everywhere
        back = torch.empty(n, dtype=torch.int32, device="cuda")
        runtime.get(prev, own, back)
        runtime.barrier()  # nobody overwrites a heap another rank still reads
        want = torch.arange(n, dtype=torch.int32, device="cuda") + prev * 1_000_000 + call
        torch.cuda.synchronize()
        assert torch.equal(got, want) and torch.equal(back, want), f"rank {rank}, call {call}"
    runtime.check()
    runtime.close()
    dist.destroy_process_group()


def _stalled_peer_worker(rank: int, world: int, init_file: str, calls: int) -> None:
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    runtime = CommRuntime(recv_bytes=1 << 20, timeout_s=2.0)
    assert runtime.uses_copy_engines, runtime.description  # NCCL would hang here instead
    splits = np.full((world, world), 16)
    if rank == 0:  # rank 1 never joins this call
        runtime.all_to_all_v(torch.ones(16 * world, 4, device="cuda"), splits)
        torch.cuda.synchronize()  # returns once the watchdog released the waits
        with pytest.raises(
            RuntimeError, match="all-to-all class 0 epoch 1 not satisfied.*ready of peer 1"
        ):
            runtime.check()
        with pytest.raises(RuntimeError, match="not satisfied"):  # sticky
            runtime.all_to_all_v(torch.ones(16 * world, 4, device="cuda"), splits)
    dist.barrier()
    runtime.close()
    dist.destroy_process_group()


def _killed_peer_worker(rank: int, world: int, init_file: str, calls: int) -> None:
    """Rank 1's process dies (no cleanup) after a few good calls; rank 0's next call must turn
    into the watchdog's error, not a hang."""
    from freescale_ext.comm import CommRuntime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    runtime = CommRuntime(recv_bytes=1 << 20, timeout_s=2.0)
    splits = np.full((world, world), 16)
    x = torch.full((16 * world, 4), float(rank), device="cuda")
    for _ in range(3):
        runtime.all_to_all_v(x, splits)
    torch.cuda.synchronize()
    dist.barrier()
    if rank == 1:
        os._exit(0)  # killed: no close(), no NCCL teardown
    time.sleep(1.0)  # the peer is gone
    runtime.all_to_all_v(x, splits)
    torch.cuda.synchronize()  # returns once the watchdog released the waits
    with pytest.raises(RuntimeError, match="class 0 epoch 4 not satisfied.*peer 1"):
        runtime.check()
    runtime._native.close()  # not the collective close(): there is nobody to agree with
    os._exit(0)  # no NCCL teardown with a dead peer


def _spawn(worker, world: int, tmp_path, calls: int = 0, *extra) -> None:
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs, found {torch.cuda.device_count()}")
    mp.spawn(worker, args=(world, str(tmp_path / "init"), calls, *extra), nprocs=world, join=True)


# Every way of issuing copies and of signalling peers (CommRuntime's issue and signal).
WAYS = [
    {"issue": "streams", "signal": "fenced-write"},
    {"issue": "streams", "signal": "copy"},
    {"issue": "batch", "signal": "fenced-write"},
    {"issue": "batch", "signal": "copy"},
]
WAY_IDS = [f"{w['issue']}-{w['signal']}" for w in WAYS]


@pytest.mark.parametrize("options", WAYS, ids=WAY_IDS)
@pytest.mark.parametrize("world", [2, 4])
def test_all_to_all_v_equals_nccl_exactly(world, options, tmp_path):
    _spawn(_exact_worker, world, tmp_path, 40, options)


@pytest.mark.parametrize("options", WAYS, ids=WAY_IDS)
@pytest.mark.parametrize("world", [2, 4])
def test_back_to_back_calls_with_skewed_ranks_stay_exact(world, options, tmp_path):
    _spawn(_back_to_back_worker, world, tmp_path, 30, options)


@pytest.mark.parametrize("options", WAYS, ids=WAY_IDS)
@pytest.mark.parametrize("world", [2, 4])
def test_priority_classes_interleaved_stay_exact(world, options, tmp_path):
    _spawn(_priority_worker, world, tmp_path, 20, options)


@pytest.mark.parametrize("world", [2, 4])
def test_put_get_signal_wait_barrier(world, tmp_path):
    _spawn(_one_sided_worker, world, tmp_path, calls=20)


def test_a_peer_that_never_signals_is_an_error_not_a_hang(tmp_path):
    _spawn(_stalled_peer_worker, 2, tmp_path)


def test_a_killed_peer_is_an_error_not_a_hang(tmp_path):
    _spawn(_killed_peer_worker, 2, tmp_path)
