"""Row-wise sharded embeddings (DESIGN §7) on CPU: lookup planning (dedup, splits, owners), the
sparse optimizers against torch.optim.SparseAdam and a hand-computed row-wise Adagrad, bad
input, and sharded training on 2 and 4 gloo processes equal to one unsharded table, float64."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from freescale.embeddings import (
    CopyEngineExchange,
    LocalExchange,
    ProcessGroupExchange,
    RowWiseSharding,
    ShardedEmbedding,
    SparseOptimizerConfig,
    plan_lookup,
)
from freescale.embeddings.sharded import initial_rows
from freescale.embeddings.sharding import SortedGroups
from freescale_ext.sparse_optim import coalesce_rows, rowwise_adagrad_, sparse_adam_

DIM = 6


def test_row_wise_sharding_ranges_and_owners():
    s = RowWiseSharding(37, 4)  # 10 rows per rank, the last shard 7
    assert s.rows_per_rank == 10
    assert [s.shard_range(r) for r in range(4)] == [(0, 10), (10, 20), (20, 30), (30, 37)]
    assert s.owner(torch.tensor([0, 9, 10, 29, 36])).tolist() == [0, 0, 1, 2, 3]
    tiny = RowWiseSharding(3, 4)  # more ranks than rows: the last rank holds nothing
    assert [tiny.shard_range(r) for r in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match=">= 1"):
        RowWiseSharding(0, 2)


def test_initial_rows_do_not_depend_on_the_sharding():
    full = initial_rows(0, 9000, 3, seed=7)
    parts = [initial_rows(a, b, 3, seed=7) for a, b in ((0, 10), (10, 4100), (4100, 9000))]
    torch.testing.assert_close(torch.cat(parts), full, rtol=0, atol=0)
    assert initial_rows(5, 5, 3, seed=7).shape == (0, 3)
    assert not torch.equal(initial_rows(0, 4, 3, seed=8), full[:4])


def test_lookup_plan_deduplicates_and_splits_by_owner():
    ids = torch.tensor([[5, 5, 0], [9, 0, 5]])
    plan = plan_lookup(ids, RowWiseSharding(10, 1), LocalExchange())
    assert plan.unique_ids.tolist() == [0, 5, 9]
    assert plan.unique_ids[plan.inverse].tolist() == ids.reshape(-1).tolist()
    assert plan.send == plan.recv == [3]
    assert plan.local_rows.tolist() == [0, 5, 9]
    empty = plan_lookup(torch.zeros(0, dtype=torch.int64), RowWiseSharding(10, 1), LocalExchange())
    assert empty.send == [0] and empty.local_rows.numel() == 0


@pytest.mark.parametrize("n, high", [(0, 5), (1, 5), (97, 7), (1000, 3000)])
def test_sorted_groups_equal_torch_unique(n, high):
    """The sync-free dedup behind lookup plans and owner-side gradient sums."""
    x = torch.randint(-2, high, (n,), generator=torch.Generator().manual_seed(n))
    unique, inverse = torch.unique(x, sorted=True, return_inverse=True)
    groups = SortedGroups.of(x)
    assert int(groups.before[-1]) == unique.numel()
    assert torch.equal(groups.distinct(unique.numel()), unique)
    assert torch.equal(groups.inverse(), inverse)
    assert torch.equal(groups.values, x[groups.order])


def test_lookup_plan_counts_per_owner_on_random_ids():
    gen = torch.Generator().manual_seed(3)
    for num_rows in (1, 7, 40):
        ids = torch.randint(0, num_rows, (5, 13), generator=gen)
        plan = plan_lookup(ids, RowWiseSharding(num_rows, 1), LocalExchange())
        assert torch.equal(plan.unique_ids, torch.unique(ids))
        assert torch.equal(plan.unique_ids[plan.inverse], ids.reshape(-1))
        assert plan.send == plan.recv == [plan.unique_ids.numel()]
        assert plan.matrix.tolist() == [plan.send]


class _OneOfFourRanks:
    """Rank `rank` of four, the others asking for nothing: plan_lookup's collectives, faked."""

    world_size = 4

    def __init__(self, rank: int, others_status: list[int] | None = None) -> None:
        self.rank = rank
        self.others_status = others_status  # a row every other rank "gathers", or zeros

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        other = torch.tensor(self.others_status) if self.others_status else torch.zeros_like(row)
        return torch.stack([row if r == self.rank else other for r in range(4)])

    def all_to_all(self, x, send, recv, matrix=None):
        assert matrix is not None and matrix[self.rank].tolist() == send
        start = sum(send[: self.rank])
        return x[start : start + send[self.rank]]  # what this rank sent itself


def test_lookup_plan_splits_by_owner_over_four_ranks():
    gen = torch.Generator().manual_seed(4)
    sharding = RowWiseSharding(37, 4)  # 10 rows per rank, the last holds 7
    for rank in range(4):
        ids = torch.randint(0, 37, (60,), generator=gen)
        plan = plan_lookup(ids, sharding, _OneOfFourRanks(rank))
        unique = torch.unique(ids)
        assert torch.equal(plan.unique_ids, unique)
        assert torch.equal(plan.unique_ids[plan.inverse], ids)
        assert plan.send == torch.bincount(sharding.owner(unique), minlength=4).tolist()
        assert plan.recv == [plan.send[rank] if r == rank else 0 for r in range(4)]
        start, _ = sharding.shard_range(rank)
        mine = unique[sharding.owner(unique) == rank]
        assert torch.equal(plan.local_rows, mine - start)
        assert torch.equal(plan.matrix_device[rank], torch.tensor(plan.send))
    # Another rank's ids out of range (its status row says one id outside): this one raises too.
    with pytest.raises(ValueError, match=r"ids of rank\(s\) \[0, 2, 3\] are outside \[0, 37\)"):
        plan_lookup(torch.tensor([1]), sharding, _OneOfFourRanks(1, [0, 0, 0, 0, 1, -3, 40]))
    with pytest.raises(ValueError, match=r"got min -3, max 40"):
        plan_lookup(torch.tensor([-3, 40]), sharding, _OneOfFourRanks(1))


def test_out_of_range_ids_raise():
    table = ShardedEmbedding(10, DIM)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 10\)"):
        table(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r"got min -1"):
        table(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="sparse optimizer must be one of"):
        SparseOptimizerConfig("sgd")


def test_sparse_adam_equals_torch_sparse_adam():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, DIM, sparse=True).double()
    table = emb.weight.detach().clone()
    m, v = torch.zeros_like(table), torch.zeros_like(table)
    opt = torch.optim.SparseAdam(emb.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for step in range(1, 8):
        ids = torch.randint(0, 20, (15,))
        weights = torch.randn(15, DIM, dtype=torch.float64)
        opt.zero_grad()
        (emb(ids) * weights).sum().backward()
        opt.step()
        rows, grads = coalesce_rows(ids, weights)
        sparse_adam_(table, m, v, rows, grads, step=step, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    torch.testing.assert_close(table, emb.weight.detach(), rtol=0, atol=1e-15)


def test_rowwise_adagrad_by_hand():
    table = torch.ones(4, 2, dtype=torch.float64)
    sum_sq = torch.zeros(4, dtype=torch.float64)
    rows = torch.tensor([1, 3])
    grads = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    rowwise_adagrad_(table, sum_sq, rows, grads, lr=0.5, eps=0.0)
    # row 1: G = (9 + 16) / 2 = 12.5, w = 1 - 0.5 * g / sqrt(12.5); row 3: G = 2
    assert sum_sq.tolist() == [0.0, 12.5, 0.0, 2.0]
    torch.testing.assert_close(table[1], 1 - 0.5 * grads[0] / 12.5**0.5)
    torch.testing.assert_close(table[3], 1 - 0.5 * grads[1] / 2**0.5)
    assert table[0].tolist() == table[2].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="grads"):
        rowwise_adagrad_(table, sum_sq, rows, grads[:1], lr=0.1)


# -- sharded training == one table -----------------------------------------------------------

STEPS, BATCH, HISTORY, NEGATIVES = 6, 12, 5, 4


def _step_ids(step: int, num_rows: int):
    """The global batch of one step: skewed ids (many duplicates), both table ends present."""
    gen = np.random.default_rng(step)
    history = np.minimum(gen.zipf(1.3, (BATCH, HISTORY)) - 1, num_rows - 1)
    negatives = gen.integers(0, num_rows, (BATCH, NEGATIVES))
    history[0, 0], negatives[-1, -1] = 0, num_rows - 1
    return torch.from_numpy(history), torch.from_numpy(negatives)


def _loss(hist_rows: torch.Tensor, neg_rows: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    user = torch.tanh(hist_rows.sum(dim=1) @ probe)  # [B, DIM]
    return (user[:, None, :] * neg_rows).sum(dim=-1).exp().sum() + (hist_rows**2).sum()


def _train(table: ShardedEmbedding, rank: int, world: int, mode: str = "lookups") -> None:
    """STEPS steps on this rank's samples. mode: "lookups" (an exchange per lookup), "step"
    (one begin_step exchange per step, local lookups), "pipelined" (the same, each step
    prefetching the next one's rows), "stale" (prefetching them semi-synchronously)."""
    probe = torch.linspace(-1, 1, DIM * DIM, dtype=torch.float64).view(DIM, DIM)
    mine = slice(rank, None, world)  # this rank's samples (rank 3 of 4 may get fewer)

    def step_ids(step):
        history, negatives = _step_ids(step, table.num_rows)
        return torch.cat([history[mine].reshape(-1), negatives[mine].reshape(-1)])

    for step in range(STEPS):
        history, negatives = _step_ids(step, table.num_rows)
        table.zero_grad()
        if mode != "lookups":
            table.begin_step(step_ids(step))
        if mode in ("pipelined", "stale") and step + 1 < STEPS:
            table.prefetch_step(step_ids(step + 1), stale=mode == "stale")
        _loss(table(history[mine]), table(negatives[mine]), probe).backward()
        if mode != "lookups":
            table.end_step()
        table.step()


def _reference_table(
    num_rows: int, optimizer: SparseOptimizerConfig, stale: bool = False
) -> torch.Tensor:
    """One process, one plain table, the whole batch: autograd on an indexed tensor. stale: step
    s > 0 computes with the table as it was before step s - 1's update (semi-synchronous)."""
    table = ShardedEmbedding(num_rows, DIM, dtype=torch.float64).weight.clone()
    state = (
        [torch.zeros(num_rows, dtype=torch.float64)]
        if optimizer.kind != "adam"
        else [
            torch.zeros_like(table),
            torch.zeros_like(table),
        ]
    )
    probe = torch.linspace(-1, 1, DIM * DIM, dtype=torch.float64).view(DIM, DIM)
    before_last_update = table.clone()
    for step in range(STEPS):
        history, negatives = _step_ids(step, num_rows)
        leaf = (before_last_update if stale else table).clone().requires_grad_()
        before_last_update = table.clone()
        _loss(leaf[history], leaf[negatives], probe).backward()
        rows = torch.unique(torch.cat([history.reshape(-1), negatives.reshape(-1)]))
        grads = leaf.grad[rows]
        if optimizer.kind == "adam":
            sparse_adam_(table, *state, rows, grads, step=step + 1, lr=optimizer.lr)
        else:
            rowwise_adagrad_(table, *state, rows, grads, lr=optimizer.lr)
    return table


def _worker(
    rank: int,
    world: int,
    init_file: str,
    num_rows: int,
    kind: str,
    mode: str,
    out: str,
    exchange: str = "pg",
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        optimizer = SparseOptimizerConfig(kind, lr=0.05)
        # "ce": the copy-engine exchange, which falls back to torch.distributed without GPUs
        # (its split gathering and checks still run).
        if exchange == "pg2":  # urgent and bulk calls on groups of their own (the trainer's)
            ex = ProcessGroupExchange.over_own_groups()
        else:
            ex = ProcessGroupExchange() if exchange == "pg" else CopyEngineExchange()
        table = ShardedEmbedding(num_rows, DIM, ex, optimizer, dtype=torch.float64)
        _train(table, rank, world, mode)
        if exchange == "ce":  # a split matrix that contradicts this rank's splits is refused
            send = [1] * world
            wrong = np.full((world, world), 2)
            with pytest.raises(ValueError, match="disagree with the given matrix"):
                ex.all_to_all(torch.zeros(world, DIM), send, send, matrix=wrong)
            with pytest.raises(ValueError, match=r"matrix must be \["):
                ex.all_to_all(torch.zeros(world, DIM), send, send, matrix=wrong[:1])
            # The plan's one split gathering serves a lookup's three exchanges (ids, rows,
            # gradients): none of them gathers on its own.
            gathers, gather, rows_gather = [], ex._gather, ex.all_gather_rows
            ex._gather = lambda send, device: gathers.append(send) or gather(send, device)
            ex.all_gather_rows = lambda row: gathers.append(row) or rows_gather(row)
            plan, rows = table._fetch(torch.tensor([0, 1, 2]))
            table._send_grads(plan, torch.zeros_like(rows))
            table.zero_grad()
            assert len(gathers) == 1, gathers
        # Ids outside the table on one rank: every rank raises (none waits in a collective).
        bad = torch.tensor([0, num_rows if rank == world - 1 else 1])
        want = "must be in" if rank == world - 1 else rf"rank\(s\) \[{world - 1}\] are outside"
        with pytest.raises(ValueError, match=want):
            plan_lookup(bad, table.sharding, ex)
        # A lookup of an id begin_step did not fetch, on one rank: every rank raises at end_step.
        table.zero_grad()
        table.begin_step(torch.tensor([0]))
        table(torch.tensor([0, 1]) if rank == world - 1 else torch.tensor([0]))
        with pytest.raises(ValueError, match=rf"did not fetch \(rank\(s\) \[{world - 1}\]\)"):
            table.end_step()
        full = table.full_table()
        counts = torch.tensor(table.prefetch_counts + table.split_counts)
        dist.all_reduce(counts)
        if rank == 0:
            torch.save({"table": full, "prefetch_counts": counts.tolist()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "world, num_rows, kind, mode, exchange",
    [
        (2, 37, "rowwise_adagrad", "lookups", "pg"),
        (4, 37, "adam", "lookups", "pg"),
        (4, 3, "rowwise_adagrad", "lookups", "pg"),
        (2, 37, "adam", "step", "pg"),
        (2, 37, "adam", "pipelined", "pg"),
        (4, 37, "rowwise_adagrad", "pipelined", "pg2"),
        (4, 3, "adam", "pipelined", "pg"),
        (2, 37, "adam", "pipelined", "ce"),
        (4, 3, "rowwise_adagrad", "lookups", "ce"),
        (2, 37, "adam", "stale", "pg"),
        (4, 37, "rowwise_adagrad", "stale", "ce"),
    ],
    ids=[
        "2 ranks, adagrad",
        "4 ranks, adam",
        "4 ranks, 3 rows (an empty shard)",
        "2 ranks, adam, step rows",
        "2 ranks, adam, pipelined",
        "4 ranks, adagrad, pipelined, own urgent and bulk groups",
        "4 ranks, 3 rows, pipelined",
        "2 ranks, adam, pipelined, copy-engine exchange",
        "4 ranks, 3 rows, copy-engine exchange",
        "2 ranks, adam, stale",
        "4 ranks, adagrad, stale, copy-engine exchange",
    ],
)
def test_sharded_training_equals_one_table(tmp_path, world, num_rows, kind, mode, exchange):
    out = str(tmp_path / "table.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(
        _worker,
        args=(world, str(tmp_path / "init"), num_rows, kind, mode, out, exchange),
        nprocs=world,
        join=True,
    )
    result = torch.load(out)
    want = _reference_table(num_rows, SparseOptimizerConfig(kind, lr=0.05), mode == "stale")
    initial = ShardedEmbedding(num_rows, DIM, dtype=torch.float64).weight
    assert not torch.allclose(want, initial)  # training moved the table
    torch.testing.assert_close(result["table"], want, rtol=0, atol=1e-12)
    early, late, hot, cold = result["prefetch_counts"]
    if mode == "pipelined" and num_rows > 3:
        assert early > 0 and late > 0  # both paths ran: rows ahead of the update and after it
        assert hot > 0 and cold > 0  # and both halves of the gradients: now and deferred
    elif mode == "stale":
        assert early > 0 and late == 0  # every row ahead of the update
    elif mode != "pipelined":
        assert early == late == 0


def test_pipelined_equals_step_rows_bit_for_bit_on_four_ranks(tmp_path):
    """Exact prefetching (late rows, the gradients split hot and cold) changes no bit: a row's
    gradients from several requesters are summed in the same order (a stable grouping)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tables = {}
    for mode in ("step", "pipelined"):
        out = str(tmp_path / f"{mode}.pt")
        init = str(tmp_path / f"init-{mode}")
        mp.spawn(_worker, args=(4, init, 37, "adam", mode, out, "pg2"), nprocs=4, join=True)
        tables[mode] = torch.load(out)["table"]
    torch.testing.assert_close(tables["pipelined"], tables["step"], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["lookups", "pipelined", "stale"])
def test_one_process_table_equals_the_reference(mode):
    """The LocalExchange path (world 1) trains exactly like the reference as well; the stale
    pipeline like the semi-synchronous reference, which differs from the exact one."""
    opt = SparseOptimizerConfig("adam", lr=0.05)
    table = ShardedEmbedding(37, DIM, optimizer=opt, dtype=torch.float64)
    _train(table, 0, 1, mode)
    want = _reference_table(37, opt, stale=mode == "stale")
    torch.testing.assert_close(table.full_table(), want, rtol=0, atol=1e-12)
    if mode == "stale":
        assert not torch.allclose(want, _reference_table(37, opt), rtol=0, atol=1e-6)


def test_stale_update_waits_in_the_checkpoint_and_applies_once():
    """A stale step's deferred update lands before anything reads the table: state_dict
    applies it (the checkpoint holds the table after the step), and it is not applied again."""
    opt = SparseOptimizerConfig("rowwise_adagrad", lr=0.5)
    table = ShardedEmbedding(12, DIM, optimizer=opt, dtype=torch.float64)
    before = table.weight.clone()
    table.begin_step(torch.tensor([1, 2]))
    table.prefetch_step(torch.tensor([2, 3]), stale=True)
    table(torch.tensor([1, 2])).sum().backward()
    table.end_step()
    table.step()
    assert torch.equal(table.weight, before)  # deferred: the next prefetch would apply it
    saved = table.state_dict()["weight"].clone()
    assert not torch.equal(saved[1:3], before[1:3]) and torch.equal(saved[3:], before[3:])
    table.step()  # no new gradients: nothing is applied twice
    assert torch.equal(table.weight, saved)
    table.begin_step(torch.tensor([2, 3]))
    torch.testing.assert_close(table(torch.tensor([2]))[0], before[2], rtol=0, atol=0)  # stale


def test_step_rows_refuse_misuse():
    table = ShardedEmbedding(12, DIM)
    table.begin_step(torch.tensor([3, 5]))
    with pytest.raises(ValueError, match="did not fetch"):
        table(torch.tensor([3, 4]))
    with pytest.raises(RuntimeError, match="twice"):
        table.begin_step(torch.tensor([1]))
    with pytest.raises(RuntimeError, match="between begin_step and end_step"):
        ShardedEmbedding(12, DIM).prefetch_step(torch.tensor([1]))
    table.prefetch_step(torch.tensor([5, 7]))
    table.end_step()
    with pytest.raises(RuntimeError, match="without begin_step"):
        table.end_step()
    with pytest.raises(ValueError, match="differ from the ids prefetch_step fetched"):
        table.begin_step(torch.tensor([5, 8]))
    # The same values in another order differ as well (the check is elementwise, sync-free).
    other = ShardedEmbedding(12, DIM)
    other.begin_step(torch.tensor([3]))
    other.prefetch_step(torch.tensor([5, 7]))
    other.end_step()
    with pytest.raises(ValueError, match="differ from the ids prefetch_step fetched"):
        other.begin_step(torch.tensor([7, 5]))
    empty = ShardedEmbedding(12, DIM)
    empty.begin_step(torch.zeros(0, dtype=torch.int64))
    assert empty(torch.zeros(0, dtype=torch.int64)).shape == (0, DIM)
    with pytest.raises(ValueError, match="did not fetch"):
        empty(torch.tensor([1]))


def test_exact_prefetch_defers_the_cold_rows_to_the_next_prefetch():
    """Rows a step updates that the next step does not ask for (cold) are updated by the next
    prefetch_step, beside the next backward, not in step() nor in the next begin_step."""
    table = ShardedEmbedding(12, DIM, optimizer=SparseOptimizerConfig("rowwise_adagrad", lr=0.5))
    before = table.weight.clone()
    table.begin_step(torch.tensor([1, 2]))
    table.prefetch_step(torch.tensor([2, 3]))  # row 2 is hot, row 1 cold
    table(torch.tensor([1, 2])).sum().backward()
    table.end_step()
    table.step()
    assert table.split_counts == [1, 1] and table._deferred is not None
    assert torch.equal(table.weight[1], before[1]) and not torch.equal(table.weight[2], before[2])
    table.begin_step(torch.tensor([2, 3]))
    assert table._deferred is not None and torch.equal(table.weight[1], before[1])
    table.prefetch_step(torch.tensor([3]))
    assert table._deferred is None and not torch.equal(table.weight[1], before[1])


def test_exact_prefetch_refuses_updates_it_did_not_plan_for():
    """Rows a prefetch read ahead of its step's update must not change otherwise: a second
    update (a lookup outside the step, then step() again) raises."""
    table = ShardedEmbedding(12, DIM)
    table.begin_step(torch.tensor([1, 2]))
    table.prefetch_step(torch.tensor([2, 3]))
    table(torch.tensor([1, 2])).sum().backward()
    table.end_step()
    table.step()
    table(torch.tensor([3])).sum().backward()  # row 3 was read ahead of the update
    with pytest.raises(RuntimeError, match="updates after prefetch_step other than its step's"):
        table.step()
    table.abandon()  # (an error path: drops what is in flight)
    assert table.pending == [] and table._prefetch is None


def test_stage_timer_counts_each_stage_once_per_call():
    table = ShardedEmbedding(12, DIM)
    for _ in range(2):
        table.zero_grad()
        table.begin_step(torch.tensor([1, 2]))
        table.prefetch_step(torch.tensor([1, 2]))  # the next step: the same rows
        table(torch.tensor([1, 2])).sum().backward()
        table.end_step()
        table.step()
    # fetch, prefetch, grads, update per step (the local exchange returns no handle, so step()
    # has no gradient exchange in flight to wait for, which would be a second "grads" mark)
    assert len(table.timer._marks) == 2 * 4
    ms = table.timer.take()
    assert set(ms) == {"fetch", "prefetch", "grads", "update"}
    assert all(v > 0 for v in ms.values())
    assert table.timer.take() == dict.fromkeys(ms, 0.0)  # take() resets


def test_state_dict_round_trip_keeps_the_adam_step():
    table = ShardedEmbedding(12, DIM, optimizer=SparseOptimizerConfig("adam"))
    table(torch.tensor([1, 2])).sum().backward()
    table.step()
    copy = ShardedEmbedding(12, DIM, optimizer=SparseOptimizerConfig("adam"), seed=5)
    copy.load_state_dict(table.state_dict())
    assert copy.steps == 1
    torch.testing.assert_close(copy.weight, table.weight, rtol=0, atol=0)
    torch.testing.assert_close(copy.exp_avg, table.exp_avg, rtol=0, atol=0)
