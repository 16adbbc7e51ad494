"""Host-side planning of the SM-free communication runtime: every rank's copies, applied to
rank-encoded byte buffers, reproduce torch's all_to_all_single layout exactly; issue order and
cutting follow DESIGN §6; priorities order the issue queue."""

from __future__ import annotations

import numpy as np
import pytest

from freescale_ext import comm


def random_splits(rng, world: int, zero_share: float = 0.3, high: int = 5000) -> np.ndarray:
    splits = rng.integers(0, high, (world, world))
    splits[rng.random((world, world)) < zero_share] = 0
    return splits.astype(np.int64)


def rank_encoded_send(splits: np.ndarray, src: int) -> np.ndarray:
    """src's send buffer: chunk d holds bytes (src * 31 + d * 7 + i) % 251."""
    parts = [(src * 31 + d * 7 + np.arange(n)) % 251 for d, n in enumerate(splits[src])]
    return np.concatenate(parts).astype(np.uint8) if parts else np.zeros(0, np.uint8)


def expected_recv(splits: np.ndarray, dst: int) -> np.ndarray:
    parts = [(s * 31 + dst * 7 + np.arange(splits[s, dst])) % 251 for s in range(len(splits))]
    return np.concatenate(parts).astype(np.uint8)


def apply(copies: np.ndarray, send: list[np.ndarray], recv: list[np.ndarray]) -> None:
    for src, dst, src_off, dst_off, n in copies:
        assert recv[dst][dst_off : dst_off + n].size == n, "copy runs past the receive buffer"
        recv[dst][dst_off : dst_off + n] = send[src][src_off : src_off + n]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("max_piece,align", [(0, 1), (1000, 16), (7, 4), (1, 1)])
def test_copies_reproduce_all_to_all_single_exactly(world, mode, max_piece, align):
    rng = np.random.default_rng(world * 100 + max_piece)
    for _ in range(5):  # fresh splits, zeros included
        # Byte-sized pieces: smaller chunks keep the copy count (a Python loop here) down.
        splits = random_splits(rng, world, high=300 if max_piece < 8 else 5000)
        send = [rank_encoded_send(splits, s) for s in range(world)]
        recv = [np.full(splits[:, d].sum(), 255, np.uint8) for d in range(world)]  # poisoned
        covered = [np.zeros(splits[:, d].sum(), np.int64) for d in range(world)]
        plan = comm.pull_copies if mode == "pull" else comm.push_copies
        for rank in range(world):
            copies = plan(world, splits, rank, max_piece, align)
            assert (copies[:, 0 if mode == "push" else 1] == rank).all()  # its own side
            apply(copies, send, recv)
            for _, dst, _, dst_off, n in copies:
                covered[dst][dst_off : dst_off + n] += 1
        for d in range(world):
            np.testing.assert_array_equal(recv[d], expected_recv(splits, d))
            assert (covered[d] == 1).all(), "every received byte is written exactly once"


def test_issue_order_starts_at_the_next_rank_and_ends_with_the_own_chunk():
    world, rank = 4, 1
    splits = np.full((world, world), 100, np.int64)
    peers = comm.pull_copies(world, splits, rank)[:, 0].tolist()
    assert peers == [2, 3, 0, 1]
    splits[3, rank] = 0  # an empty chunk is skipped
    assert comm.pull_copies(world, splits, rank)[:, 0].tolist() == [2, 0, 1]
    assert comm.push_copies(world, splits, 3)[:, 1].tolist() == [0, 2, 3]


def test_pieces_are_aligned_and_bounded():
    splits = np.array([[0, 1000], [10, 0]], np.int64)
    copies = comm.push_copies(2, splits, 0, max_piece=300, align=64)
    assert copies[:, 4].tolist() == [256, 256, 256, 232]  # 300 rounded down to 4 x 64
    assert (copies[:-1, 2] % 64 == 0).all() and copies[:, 4].sum() == 1000
    tiny = comm.push_copies(2, splits, 1, max_piece=3, align=8)  # a piece is never below align
    assert tiny[:, 4].tolist() == [8, 2]


def test_offsets_follow_the_all_to_all_single_layout():
    splits = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.int64)
    send, recv = comm.all_to_all_offsets(3, splits)
    assert send.tolist() == [[0, 1, 3], [0, 4, 9], [0, 7, 15]]
    assert recv.tolist() == [[0, 1, 5], [0, 2, 7], [0, 3, 9]]  # recv[d, s]


def test_bad_plans_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[world, world\]"):
        comm.pull_copies(3, np.zeros((2, 2), np.int64), 0)
    with pytest.raises(ValueError, match=">= 0"):
        comm.pull_copies(2, np.array([[0, -1], [0, 0]]), 0)
    with pytest.raises(ValueError, match="rank out of range"):
        comm.push_copies(2, np.zeros((2, 2), np.int64), 2)
    with pytest.raises(ValueError, match="align >= 1"):
        comm.push_copies(2, np.ones((2, 2), np.int64), 0, max_piece=4, align=0)


def _fallback_worker(rank: int, world: int, init_file: str) -> None:
    import torch
    import torch.distributed as dist

    from freescale_ext import cuda_compiled
    from freescale_ext.comm import CommRuntime

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    runtime = CommRuntime(recv_bytes=1 << 20)
    # (A CPU-only build has no copy-engine runtime to decline for the backend.)
    reason = "backend is gloo, not nccl" if cuda_compiled() else "built without CUDA"
    assert not runtime.uses_copy_engines and reason in runtime.description
    rng = np.random.default_rng(3)
    for call in range(5):
        splits = random_splits(rng, world, high=20)
        x = torch.tensor(
            [[rank, d, i, call] for d in range(world) for i in range(splits[rank, d])],
            dtype=torch.int64,
        ).reshape(-1, 4)
        got = runtime.all_to_all_v(x, splits)
        want = torch.tensor(
            [[s, rank, i, call] for s in range(world) for i in range(splits[s, rank])],
            dtype=torch.int64,
        ).reshape(-1, 4)
        assert torch.equal(got, want)
        gathered = runtime.all_gather(torch.full((2, 3), rank * 10 + call))
        assert gathered[:, 0, 0].tolist() == [r * 10 + call for r in range(world)]
    runtime.check()
    runtime.close()
    dist.destroy_process_group()


def test_runtime_falls_back_to_torch_distributed_without_gpus(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fallback_worker, args=(3, str(tmp_path / "init")), nprocs=3, join=True)
