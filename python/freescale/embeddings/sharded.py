"""A row-wise sharded embedding table whose lookups and gradients travel by all-to-all.

Forward (every rank, collectively): deduplicate the ids, send each owner the ids it holds, owners
gather their rows and send them back, expand to the requested order. Backward: sum the gradient
of each unique id, send it to the owner (the reverse all-to-all), which queues (row, gradient)
pairs; `step()` coalesces the queue and applies the sparse optimizer to the touched rows only.
The table is not an nn.Parameter: no dense optimizer or gradient all-reduce ever sees it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from freescale.embeddings.checks import DeferredChecks
from freescale.embeddings.exchange import Exchange, LocalExchange
from freescale.embeddings.grad_split import GradSplit, plan_grad_split
from freescale.embeddings.sharding import (
    LookupPlan,
    RowWiseSharding,
    SortedGroups,
    first_half,
    member,
    plan_lookup,
    segment_sums,
)
from freescale.embeddings.timing import StageTimer
from freescale_ext.sparse_optim import coalesce_rows, rowwise_adagrad_, sparse_adam_

OPTIMIZERS = ("rowwise_adagrad", "adam")


@dataclass(frozen=True)
class SparseOptimizerConfig:
    kind: str = "rowwise_adagrad"  # or "adam" (torch.optim.SparseAdam's lazy update)
    lr: float = 0.01
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"sparse optimizer must be one of {OPTIMIZERS}, got {self.kind!r}")


INIT_BLOCK = 4096


def initial_rows(
    start: int,
    stop: int,
    dim: int,
    seed: int,
    *,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[stop - start, dim] rows [start, stop) of a table, scale * standard normal: each block
    of INIT_BLOCK rows draws (in float64) from its own generator on `device` (seeded by seed and
    block), so a row's initial value depends on the seed, the row and the device type only,
    never on how the table is sharded. Generated block by block on the device: a shard of
    millions of rows initializes in well under a second on a GPU."""
    device = torch.device(device)
    out = torch.empty(stop - start, dim, dtype=dtype, device=device)
    for block in range(start // INIT_BLOCK, -(-stop // INIT_BLOCK)):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + block)
        rows = torch.randn(INIT_BLOCK, dim, generator=gen, dtype=torch.float64, device=device)
        lo, hi = max(start - block * INIT_BLOCK, 0), min(stop - block * INIT_BLOCK, INIT_BLOCK)
        first = block * INIT_BLOCK + lo - start
        out[first : first + hi - lo] = (rows[lo:hi] * scale).to(dtype)
    return out


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, ids, table: ShardedEmbedding):
        plan, rows = table._fetch(ids)
        ctx.plan, ctx.table = plan, table
        return rows[plan.inverse]

    @staticmethod
    def backward(ctx, grad):
        plan: LookupPlan = ctx.plan
        table: ShardedEmbedding = ctx.table
        per_unique = grad.new_zeros((plan.unique_ids.numel(), grad.shape[1]))
        per_unique.index_add_(0, plan.inverse, grad)
        table._send_grads(plan, per_unique)
        return None, None, None


@dataclass
class OwnerRows:
    """The rows of this shard a lookup's plan asked for (plan.local_rows, from every rank),
    grouped without a host sync: step() sums their gradients per row with it, and the next
    step's prefetch finds in it the rows this step updates."""

    groups: SortedGroups
    count: int  # how many distinct rows (read on the host with the prefetch's late counts)


@dataclass
class _Pending:
    """One lookup's gradients on their way to this owner, queued for an update."""

    rows: torch.Tensor  # [R] local rows of this shard
    grads: torch.Tensor  # [R, dim] their gradients, valid once `work` is waited for
    work: object  # the exchange bringing them (None: already here)
    owner: OwnerRows | None  # the rows grouped, where a prefetch planned them
    # What this rank sent in that exchange: kept until the exchange is waited for on the
    # stream of the update (torch.distributed holds it only until wait(), and the update may
    # run on the side stream while the memory would go back to the compute stream's pool)
    sent: torch.Tensor | None = None

    def wait(self) -> None:
        if self.work is not None:
            self.work.wait()


@dataclass
class StepRows:
    """The rows one training step looks up, fetched in one exchange (`begin_step`)."""

    ids: torch.Tensor  # [U] int64 ascending: every id the step may look up
    rows: torch.Tensor  # [U, dim] a leaf: the step's lookups gather from it, grads land in it
    plan: LookupPlan
    owner: OwnerRows | None = None  # where a prefetch planned the step
    split: GradSplit | None = None  # where an exact prefetch of the next step split its grads


@dataclass
class _Prefetch:
    """The next step's rows in flight (`prefetch_step`). Nothing of it is read on the host
    before the next begin_step: the late rows' counts travel to pinned memory meanwhile."""

    ids: torch.Tensor  # what prefetch_step got; begin_step must get the same
    stale: bool  # every row read now, before this step's update (no late rows)
    plan: LookupPlan
    owner: SortedGroups  # owner side: plan.local_rows grouped
    late_first: torch.Tensor  # owner side: positions in plan.local_rows, the late rows first
    counts: torch.Tensor  # [world * world + 1] on the host: late matrix | distinct owner rows
    counted: torch.cuda.Event | None  # on a GPU: `counts` has landed
    updated: bool  # exact: the step's update ran (another would change rows read early)
    payload: torch.Tensor  # requester side [U, dim + 1]: early rows | 1.0 where the row is late
    sent: torch.Tensor  # what this rank sent: kept until waited for (see _Pending.sent)
    work: object  # the early exchange's handle (None: already complete)
    planned: torch.cuda.Event | None  # on a GPU: the side stream's planning and reads are done


class ShardedEmbedding(nn.Module):
    """A [num_rows, dim] table sharded row-wise over `exchange`'s ranks (rank p holds rows
    [p R, (p+1) R), R = ceil(num_rows / world)). With a LocalExchange it is the unsharded table
    with the same optimizer. Lookups and backward passes are collective: every rank runs the same
    sequence of them (a rank with no ids passes an empty tensor)."""

    # Its buffers hold this rank's shard: checkpoints keep them per rank, broadcasts skip them.
    rank_local_state = True

    def __init__(
        self,
        num_rows: int,
        dim: int,
        exchange: Exchange | None = None,
        optimizer: SparseOptimizerConfig | None = None,
        *,
        init_std: float = 0.02,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.exchange = exchange or LocalExchange()
        self.sharding = RowWiseSharding(num_rows, self.exchange.world_size)
        self.optimizer = optimizer or SparseOptimizerConfig()
        self.dim = dim
        self.start, self.stop = self.sharding.shard_range(self.exchange.rank)
        weight = initial_rows(
            self.start, self.stop, dim, seed, scale=init_std, dtype=dtype, device=device
        )
        self.register_buffer("weight", weight)
        if self.optimizer.kind == "rowwise_adagrad":
            self.register_buffer("sum_sq", torch.zeros(weight.shape[0], dtype=dtype, device=device))
        else:
            self.register_buffer("exp_avg", torch.zeros_like(self.weight))
            self.register_buffer("exp_avg_sq", torch.zeros_like(self.weight))
        self.steps = 0
        self.pending: list[_Pending] = []  # per lookup since the last step()
        self._step_rows: StepRows | None = None
        self._prefetch: _Prefetch | None = None
        # On a GPU the prefetch is planned on a stream of its own, of high priority: its one
        # host sync (the split counts) then waits for its own small kernels only, which the GPU
        # runs as soon as an SM frees up instead of behind the step's queued backward.
        # `_step_ready` marks begin_step's results on the compute stream.
        self._prefetch_stream: torch.cuda.Stream | None = None
        self._step_ready: torch.cuda.Event | None = None
        # A deferred update (its queued gradients and its optimizer step number): a stale
        # prefetch's whole step, or an exact one's cold half. The next prefetch_step applies it
        # on the side stream, beside the next backward, or anything that reads the table first
        # applies it on the compute stream.
        self._deferred: tuple[list[_Pending], int] | None = None
        self._side_updated: torch.cuda.Event | None = None  # the last update on the side stream
        self.register_state_dict_pre_hook(lambda module, *_: module._weight_on_compute())
        self.register_load_state_dict_pre_hook(lambda module, *_: module._drop_in_flight())
        # Rows this owner served ahead of the update / after it (prefetch_step's overlap).
        self.prefetch_counts = [0, 0]
        # Rows this owner updated in step() / beside the next backward (exact prefetching)
        self.split_counts = [0, 0]
        # The cold half of an exact prefetching step's gradients, for step() to issue
        self._cold: tuple | None = None
        self.timer = StageTimer()  # exposed time per exchange stage (begin/prefetch/end/step)
        self.checks = DeferredChecks(self.exchange)  # unfetched lookups, a mismatched prefetch
        # Autograd calls a Function's backward only if an input needs a gradient.
        self._anchor = torch.zeros(0, requires_grad=True)

    def get_extra_state(self) -> dict:
        return {"steps": self.steps}  # Adam's bias correction continues after a resume

    def set_extra_state(self, state: dict) -> None:
        self.steps = int(state["steps"])

    @property
    def num_rows(self) -> int:
        return self.sharding.num_rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """[*ids.shape, dim] rows of `ids` (int64 in [0, num_rows)): a collective lookup, or
        between begin_step and end_step a local gather from the step's rows."""
        if self._step_rows is not None:
            return self._gather_step_rows(ids)
        anchor = self._anchor if torch.is_grad_enabled() else self._anchor.detach()
        rows = _ShardedLookup.apply(anchor, ids, self)
        return rows.view(*ids.shape, self.dim)

    def begin_step(self, ids: torch.Tensor) -> None:
        """Fetches, in one exchange (collective), every row a training step will look up: the
        union of its lookups (inputs, positives, negatives) deduplicated once. Until end_step,
        lookups are local gathers, differentiable into the step's rows."""
        if self._step_rows is not None:
            raise RuntimeError("begin_step called twice without end_step")
        with self.timer.stage("fetch", self.weight.device):
            if self._prefetch is not None:
                self._step_rows = self._complete_prefetch(ids)
                self._mark_step_ready()
                return
            plan, rows = self._fetch(ids)
            self._step_rows = StepRows(plan.unique_ids, rows.detach().requires_grad_(), plan)
        self._mark_step_ready()

    def _mark_step_ready(self) -> None:
        if self.weight.device.type == "cuda":
            self._step_ready = torch.cuda.Event()
            self._step_ready.record()

    def prefetch_step(self, ids: torch.Tensor, *, stale: bool = False) -> None:
        """Starts fetching the next step's rows during this step, without changing what
        training computes (collective). Rows this step will not update (none of its lookups
        asked for them) travel now, asynchronously, overlapping this step's compute; the rows it
        does update wait for step() and travel in the next begin_step. This step's gradients
        are split the same way (grad_split.py). Call between begin_step and end_step, best
        after the backward is launched: on a GPU the planning runs on a stream of its own,
        beside the queued backward, and reads one thing on the host (the plan's split counts).

        ids: what the next begin_step will get, the same values in the same order (a mismatch
        raises on every rank at that step's end_step; on a GPU one end_step later). On a GPU
        they must be ready before begin_step: the planning waits for begin_step, not for later
        work on the compute stream.

        stale=True (semi-synchronous, like torchrec's TrainPipelineSemiSync; not exact; the same
        on every rank): every row travels now, so the next step sees the rows this step updates
        as they were before its update; this step's update then waits for nothing in the next
        begin_step and is deferred to the next prefetch_step, where it runs beside the next
        backward. A step without a prefetched one before it (an epoch's first, the first after
        a resume) reads the current table."""
        if self._step_rows is None or self._prefetch is not None:
            raise RuntimeError("prefetch_step belongs between begin_step and end_step, once")
        side = self._side_stream()
        compute = torch.cuda.current_stream() if side is not None else None
        step = self._step_rows
        # The stage's marks stay on the compute stream: it counts only what the step waits for.
        with self.timer.stage("prefetch", self.weight.device):
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                if side is not None:
                    side.wait_event(self._step_ready)  # ids and this step's plan are ready
                    ids.record_stream(side)  # the compute stream's tensors, read here
                    step.plan.local_rows.record_stream(side)
                plan = plan_lookup(ids, self.sharding, self.exchange)
                owner = SortedGroups.of(plan.local_rows)
                if stale:
                    late = torch.zeros_like(plan.local_rows, dtype=torch.bool)
                else:
                    updated = (
                        step.owner.groups
                        if step.owner is not None
                        else SortedGroups.of(step.plan.local_rows)
                    )
                    # rows this step's update changes
                    late = member(plan.local_rows, updated.values)
                    # This step's gradients, the rows the next step asks for first.
                    step.split = plan_grad_split(
                        self.exchange, step.plan, updated, owner.values, pinned=side is not None
                    )
                late_first = first_half(late)
                # Every owner's late count per requester, and how many distinct rows this plan
                # asks of this shard: read on the host at the next begin_step, long landed.
                world = self.exchange.world_size
                late_matrix = (
                    plan.local_rows.new_zeros((world, world))
                    if stale
                    else self.exchange.all_gather_rows(
                        segment_sums(late, plan.matrix_device[:, self.exchange.rank])
                    )
                )
                counts = torch.cat([late_matrix.reshape(-1), owner.before[-1:]])
                counted = None
                if side is not None:
                    host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
                    counts = host.copy_(counts, non_blocking=True)
                    counted = torch.cuda.Event()
                    counted.record()
                # A deferred update (the last step's cold rows, or a stale step's) before the
                # reads, after this planning's urgent calls, which must not queue behind its
                # bulk exchange on this stream.
                self._apply_deferred(side)
                early = torch.where(late[:, None], 0.0, self.weight[plan.local_rows])
                outgoing = torch.cat([early, late[:, None].to(early.dtype)], dim=1)
                buffer, work = self.exchange.all_to_all_async(
                    outgoing, plan.recv, plan.send, matrix=plan.matrix_back()
                )
                planned = None
                if side is not None:
                    planned = torch.cuda.Event()
                    planned.record()
                    used_later = [plan.unique_ids, plan.inverse, plan.local_rows, late_first]
                    used_later += [owner.values, owner.order, owner.group, buffer]
                    used_later += step.split.tensors() if step.split is not None else ()
                    for t in used_later:
                        t.record_stream(compute)  # allocated here, used on the compute stream
            self._prefetch = _Prefetch(
                ids=ids,
                stale=stale,
                plan=plan,
                owner=owner,
                late_first=late_first,
                counts=counts,
                counted=counted,
                updated=False,
                payload=buffer,
                sent=outgoing,
                work=work,
                planned=planned,
            )

    def _side_stream(self) -> torch.cuda.Stream | None:
        if self.weight.device.type != "cuda":
            return None
        if self._prefetch_stream is None:
            self._prefetch_stream = torch.cuda.Stream(self.weight.device, priority=-1)
        return self._prefetch_stream

    def cancel_prefetch(self) -> None:
        """Drops a prefetch whose step will not run, applies a deferred update and reads every
        pending check of the steps' lookups (collective: every rank calls it at the same point,
        before evaluation and at the end of training; an error path calls abandon())."""
        self._drop_prefetch()
        self._weight_on_compute()
        self.checks.flush(self.steps + 1, self.weight.device)

    def abandon(self) -> None:
        """Drops everything in flight without waiting for it or running a collective (an error
        path, where other ranks may never join): the table must not be used afterwards, other
        than to be freed."""
        self._prefetch = self._deferred = self._cold = self._step_rows = None
        self.pending = []
        self.checks = DeferredChecks(self.exchange)

    def _drop_in_flight(self) -> None:
        """Before a load_state_dict: the prefetch and a deferred update belong to the state
        being replaced (their transfers are waited for, on this rank's streams, and dropped)."""
        self._drop_prefetch()
        if self._deferred is not None:
            for entry in self._deferred[0]:
                entry.wait()
            self._deferred = None
        self._cold = None
        self._wait_side_update()

    def _drop_prefetch(self) -> None:
        """Drops the prefetch in flight once the current stream has waited for its planning
        and its exchange."""
        pf, self._prefetch = self._prefetch, None
        if pf is not None:
            self._wait_planned(pf)
            self._wait_prefetch_exchange(pf)

    @staticmethod
    def _wait_prefetch_exchange(pf: _Prefetch) -> None:
        """The current stream waits for the early rows; what the side stream sent is recorded
        on it, so its memory is not reused (when the prefetch is dropped) before the exchange
        has read it."""
        if pf.work is not None:
            pf.work.wait()
            if pf.sent.is_cuda:
                pf.sent.record_stream(torch.cuda.current_stream())

    @staticmethod
    def _wait_planned(pf: _Prefetch) -> None:
        if pf.planned is not None:
            torch.cuda.current_stream().wait_event(pf.planned)

    def _complete_prefetch(self, ids: torch.Tensor) -> StepRows:
        pf, self._prefetch = self._prefetch, None
        self._wait_planned(pf)
        if ids is not pf.ids:
            differ = (
                ids.to(pf.ids.device) != pf.ids
                if ids.shape == pf.ids.shape
                else torch.ones((), dtype=torch.bool, device=pf.ids.device)
            )
            self.checks.add("prefetch", differ)
        self._wait_prefetch_exchange(pf)
        if pf.counted is not None:
            pf.counted.synchronize()  # recorded during the last step: normally long passed
        world, rank, plan = self.exchange.world_size, self.exchange.rank, pf.plan
        counts = pf.counts.tolist()
        late_matrix = np.array(counts[:-1], dtype=np.int64).reshape(world, world)
        late_send, late_recv = late_matrix[rank].tolist(), late_matrix[:, rank].tolist()
        late_rows = plan.local_rows[pf.late_first[: sum(late_send)]]  # in the order asked
        rows, late = pf.payload[:, : self.dim].clone(), pf.payload[:, self.dim] > 0.5
        if not pf.stale:
            # An update on the side stream waited for; a deferred one (the last step's cold
            # rows, none of which is late) stays deferred, beside the next backward.
            self._wait_side_update()
            # The updated rows, now current: owners send them in the order they were asked.
            fresh = self.exchange.all_to_all(
                self.weight[late_rows], late_send, late_recv, matrix=late_matrix
            )
            # Late rows in order, without a host sync (a boolean index would count them first).
            rows.masked_scatter_(late[:, None], fresh.to(rows.dtype))
        self.prefetch_counts[0] += len(pf.late_first) - len(late_rows)
        self.prefetch_counts[1] += len(late_rows)
        owner = OwnerRows(pf.owner, counts[-1])
        return StepRows(plan.unique_ids, rows.requires_grad_(), plan, owner)

    def end_step(self) -> None:
        """Sends the step's row gradients to their owners (collective), where step() applies
        them. Call after backward. Raises if a check of the previous step's lookups failed
        (on a GPU they are read a step late, without a host sync)."""
        step, self._step_rows = self._step_rows, None
        if step is None:
            raise RuntimeError("end_step without begin_step")
        self.checks.end_step(self.steps + 1, self.weight.device)
        grad = step.rows.grad if step.rows.grad is not None else torch.zeros_like(step.rows)
        with self.timer.stage("grads", self.weight.device):  # its launch; step() its wait
            if step.split is not None:
                self._send_grads_split(step, grad.detach())
            else:
                self._send_grads(step.plan, grad.detach(), step.owner)

    def _send_grads_split(self, step: StepRows, grad: torch.Tensor) -> None:
        """The hot half of the step's gradients now, urgent; the cold half is issued by step()
        (grad_split.py)."""
        world, rank, plan = self.exchange.world_size, self.exchange.rank, step.plan
        # (read() waited for the split's event, after which its tensors were all made)
        hot_matrix, distinct_hot, distinct = step.split.read(world)
        cold_matrix = plan.matrix - hot_matrix
        hot_send, hot_recv = hot_matrix[rank].tolist(), hot_matrix[:, rank].tolist()
        order = first_half(step.split.hot_requested)  # per owner: hot ids first, then cold
        hot_grads, cold_grads = grad[order[: sum(hot_send)]], grad[order[sum(hot_send) :]]
        owner_order = step.split.hot_first  # this shard's rows of the plan, hot first
        hot_rows = plan.local_rows[owner_order[: sum(hot_recv)]]
        cold_rows = plan.local_rows[owner_order[sum(hot_recv) :]]
        to_owner, work = self.exchange.all_to_all_async(
            hot_grads, hot_send, hot_recv, matrix=hot_matrix, urgent=True
        )
        hot_owner = OwnerRows(SortedGroups.of(hot_rows), distinct_hot)
        self.pending.append(_Pending(hot_rows, to_owner, work, hot_owner, hot_grads))
        cold = OwnerRows(SortedGroups.of(cold_rows), distinct - distinct_hot)
        self._cold = (cold_grads, cold_matrix, cold_rows, cold)
        self.split_counts[0] += distinct_hot
        self.split_counts[1] += distinct - distinct_hot

    def _send_cold_grads(self) -> None:
        """Issues the cold half of an exact prefetching step's gradients (bulk, after the dense
        all-reduce the trainer issued before step()) and defers its update beside the next
        backward: the next step reads none of its rows."""
        grads, matrix, rows, owner = self._cold
        self._cold = None
        rank = self.exchange.rank
        send, recv = matrix[rank].tolist(), matrix[:, rank].tolist()
        to_owner, work = self.exchange.all_to_all_async(grads, send, recv, matrix=matrix)
        self._deferred = ([_Pending(rows, to_owner, work, owner, grads)], self.steps)

    def _fetch(self, ids: torch.Tensor) -> tuple[LookupPlan, torch.Tensor]:
        """(plan, rows of its unique ids in plan order): the two exchanges of a lookup."""
        self._weight_on_compute()
        plan = plan_lookup(ids, self.sharding, self.exchange)
        rows = self.exchange.all_to_all(
            self.weight[plan.local_rows], plan.recv, plan.send, matrix=plan.matrix_back()
        )
        return plan, rows

    def _send_grads(
        self, plan: LookupPlan, per_unique: torch.Tensor, owner: OwnerRows | None = None
    ) -> None:
        """Starts sending each unique id's summed gradient to its owner, which queues it for
        step(): the exchange is urgent and asynchronous, so on the copy-engine exchange it runs
        ahead of, and beside, the dense gradients' all-reduce that follows the backward (NCCL
        runs them in issue order); step() waits for it."""
        to_owner, work = self.exchange.all_to_all_async(
            per_unique, plan.send, plan.recv, matrix=plan.matrix, urgent=True
        )
        self.pending.append(_Pending(plan.local_rows, to_owner, work, owner, per_unique))

    def _wait_pending(self) -> None:
        for entry in self.pending:
            entry.wait()

    def _gather_step_rows(self, ids: torch.Tensor) -> torch.Tensor:
        step = self._step_rows
        flat = ids.reshape(-1).long()
        if flat.numel() and step.ids.numel() == 0:  # it fetched none
            self.checks.add("unfetched", torch.ones((), dtype=torch.bool, device=flat.device))
            return step.rows.new_zeros((*ids.shape, self.dim))
        pos = torch.searchsorted(step.ids, flat).clamp_(max=max(step.ids.numel() - 1, 0))
        if flat.numel():
            self.checks.add("unfetched", step.ids[pos] != flat)
        return step.rows[pos].view(*ids.shape, self.dim)

    def zero_grad(self) -> None:
        """Drops the queued gradients (and an unfinished step's rows; a prefetch stays); their
        exchanges, collective, are waited for first (stream-ordered on a GPU)."""
        self._wait_pending()
        self.pending.clear()
        self._step_rows = None
        self._cold = None  # (every rank drops it: its exchange was never issued)

    @torch.no_grad()
    def step(self) -> None:
        """Applies the queued gradients of every lookup since the last step (one optimizer step,
        also when no row of this shard was touched, so that steps agree across ranks)."""
        self.steps += 1
        self._weight_on_compute()  # an earlier step's deferred update that no prefetch applied
        if self._cold is not None:
            self._send_cold_grads()
        if not self.pending:
            return
        exact = self._prefetch if self._prefetch is not None and not self._prefetch.stale else None
        if exact is not None:
            if exact.updated or len(self.pending) > 1:
                raise RuntimeError(
                    "updates after prefetch_step other than its step's (lookups outside "
                    "begin_step/end_step, or a second step()): the prefetch may have read "
                    "their rows before them"
                )
            exact.updated = True
        if self._prefetch is not None and self._prefetch.stale:
            # The next step's rows are all read: nothing waits for this update until the next
            # prefetch_step (its gradients still in flight are waited for there).
            self._deferred, self.pending = (self.pending, self.steps), []
            return
        if any(entry.work is not None for entry in self.pending):
            with self.timer.stage("grads", self.weight.device):  # what end_step left in flight
                self._wait_pending()
        with self.timer.stage("update", self.weight.device):
            if self._prefetch is not None:
                self._wait_planned(self._prefetch)  # its early rows were read before the update
            self._apply_pending(self.pending, self.steps)
        self.pending = []

    def _apply_deferred(self, side: torch.cuda.Stream | None = None) -> None:
        """Applies a deferred update (a stale step's, or an exact step's cold half) on the
        current stream (the side stream when prefetch_step calls it)."""
        if self._deferred is None:
            return
        pending, step = self._deferred
        self._deferred = None
        for entry in pending:
            entry.wait()  # stream-ordered: the current stream waits for the exchange
            if side is not None:  # the compute stream's tensors, used (or sent) until here
                owner = entry.owner.groups.tensors() if entry.owner else ()
                for t in (entry.rows, entry.grads, entry.sent, *owner):
                    if t is not None:
                        t.record_stream(side)
        self._apply_pending(pending, step)
        if side is not None:
            self._side_updated = torch.cuda.Event()
            self._side_updated.record()

    def _weight_on_compute(self) -> None:
        """Makes the table current for the compute stream: an update applied on the side
        stream waited for, a deferred one applied here (after a prefetch in flight has read
        its rows, and before the next prefetch reads any)."""
        self._wait_side_update()
        if self._deferred is None:
            return
        if self._prefetch is not None:
            self._wait_planned(self._prefetch)  # its reads were of the table before the update
        self._apply_deferred()
        if self._step_rows is not None:
            self._mark_step_ready()  # a prefetch_step of this step plans after the update

    def _wait_side_update(self) -> None:
        if self._side_updated is not None:
            torch.cuda.current_stream().wait_event(self._side_updated)
            self._side_updated = None

    def _apply_pending(self, pending: list[_Pending], step: int) -> None:
        if len(pending) == 1 and pending[0].owner is not None:
            # A prefetched step: its rows were grouped during the last step (no host sync).
            grads, owner = pending[0].grads, pending[0].owner
            rows = owner.groups.distinct(owner.count)
            grads = grads.to(self.weight.dtype)
            summed = grads.new_zeros((owner.count, self.dim))
            summed.index_add_(0, owner.groups.group, grads[owner.groups.order])
            grads = summed
        else:
            rows, grads = coalesce_rows(
                torch.cat([entry.rows for entry in pending]),
                torch.cat([entry.grads for entry in pending]).to(self.weight.dtype),
            )
        opt = self.optimizer
        # Coalesced rows are unique, and the owner split put them inside this shard: no
        # validation (it would read them on the host).
        if opt.kind == "rowwise_adagrad":
            rowwise_adagrad_(
                self.weight, self.sum_sq, rows, grads, lr=opt.lr, eps=opt.eps, validate=False
            )
        else:
            sparse_adam_(
                self.weight,
                self.exp_avg,
                self.exp_avg_sq,
                rows,
                grads,
                step=step,
                lr=opt.lr,
                betas=opt.betas,
                eps=opt.eps,
                validate=False,
            )

    @torch.no_grad()
    def full_table(self) -> torch.Tensor:
        """[num_rows, dim]: every shard gathered on every rank (collective; for tests and
        export, not for the training loop)."""
        self._weight_on_compute()
        if self.exchange.world_size == 1:
            return self.weight.clone()
        per_rank = self.sharding.rows_per_rank
        padded = self.weight.new_zeros((per_rank, self.dim))
        padded[: self.weight.shape[0]] = self.weight
        parts = [torch.empty_like(padded) for _ in range(self.exchange.world_size)]
        dist.all_gather(parts, padded, group=getattr(self.exchange, "group", None))
        return torch.cat(parts)[: self.num_rows]
