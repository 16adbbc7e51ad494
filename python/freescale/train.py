"""Training: next-item prediction with sampled softmax, leave-one-out evaluation every epoch,
JSONL/TensorBoard logs and atomic, resumable checkpoints (DESIGN §9).

One process trains on the CPU or one GPU; under `torchrun` every rank takes a balanced share of
each global batch (DESIGN §8), dense gradients are summed with one all-reduce, and the update is
the single-process update of the same global batch up to summation order: the loss is
normalized by the global target count and the sampled negatives are a hash of the position in
the dataset, not of the rank that computes it.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import freescale_ext
from freescale.balance import (
    BalancedBatchSampler,
    BalancedStep,
    CostModel,
    OnlineCostFit,
    split_microbatches,
)
from freescale.balance.report import StragglerStats
from freescale.balance.timing import StepTimer
from freescale.checkpoint import load_checkpoint, save_checkpoint
from freescale.config import TrainConfig
from freescale.data import leave_one_out, load_dataset, make_train_batch
from freescale.data.persrec_batch import make_persrec_train_batch
from freescale.distributed import (
    DistEnv,
    all_gather_array,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_from_main,
    broadcast_parameters,
    destroy_distributed,
    init_distributed,
)
from freescale.embeddings import (
    CopyEngineExchange,
    LocalExchange,
    ProcessGroupExchange,
    SparseOptimizerConfig,
)
from freescale.evaluate import evaluate
from freescale.models import ModelConfig, SampledSoftmaxLoss
from freescale.models.negatives import mix_salt
from freescale.models.persrec import build_recommender, persrec_shape
from freescale.models.sharded_items import ShardedItemEmbedding
from freescale.profiling import nvtx_range
from freescale.runlog import RunLogger

# No fp16: without a GradScaler its gradients underflow, and bf16 needs none.
AMP_DTYPES = {"bf16": torch.bfloat16, "none": None}


def resolve_device(name: str, env: DistEnv | None = None) -> torch.device:
    if env is not None and env.backend == "nccl":
        return torch.device("cuda", env.local_rank)  # one GPU per rank
    if env is not None and env.backend == "gloo":
        return torch.device("cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_amp(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if name not in AMP_DTYPES:
        raise ValueError(f"amp must be one of auto, {', '.join(AMP_DTYPES)}; got {name!r}")
    return AMP_DTYPES[name]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def broadcast_cost_model(fit: OnlineCostFit, env: DistEnv) -> CostModel:
    """Rank 0's fit for everyone: every rank fits the same gathered data, but the partitions
    must agree bit for bit, and another node's BLAS may round the solve differently."""
    a, b, c0 = broadcast_from_main([fit.model.a, fit.model.b, fit.model.c0], env)
    fit.model = replace(fit.model, a=a, b=b, c0=c0)
    return fit.model


def flops_cost_model(model: ModelConfig, num_negatives: int) -> CostModel:
    """Prior per-sample cost a*L^2 + b*L from training FLOPs (forward + backward = 3x forward),
    scaled so that a = 1; the online fit replaces it with measured seconds.

    Per L^2 (causal: L^2 / 2 pairs): attention, 2 * H * (d_qk + d_v) FLOPs per pair and layer.
    Per token: the layer's projections and the sampled-softmax scores (num_negatives + 1 dots).
    """
    if model.kind == "sasrec":
        per_pair = 2 * 2 * model.dim
        per_token = 2 * (4 * model.dim * model.dim + 2 * model.dim * model.ffn_hidden)
    else:
        h = model.num_heads
        per_pair = 2 * h * (model.dim_qk + model.dim_v)
        per_token = 2 * model.dim * (2 * h * (model.dim_qk + model.dim_v) + h * model.dim_v)
    quad = model.num_blocks * per_pair / 2
    linear = model.num_blocks * per_token + 2 * model.dim * (num_negatives + 1)
    return CostModel(a=1.0, b=linear / quad, c0=0.0)


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)  # one record per evaluation
    train_seconds: float = 0.0
    tokens: int = 0


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool = False) -> None:
        self.config = config
        self.run_dir = run_dir
        self.env = init_distributed(config.device)
        try:
            self._setup(config, run_dir, resume)
        except BaseException:
            if self.env.enabled:  # do not leave the other ranks waiting in a collective
                destroy_distributed()
            raise

    def _setup(self, config: TrainConfig, run_dir: Path, resume: bool) -> None:
        self.device = resolve_device(config.device, self.env)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        if config.in_batch_negatives and self.env.enabled:
            raise ValueError(
                "in-batch negatives depend on which samples share a rank, so data-parallel "
                "training (and balancing) would change the update; use sampled negatives"
            )
        if config.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {config.micro_batches}")
        seed_everything(config.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.tf32
            torch.cuda.set_device(self.device)

        with nvtx_range("data/load"):
            self.dataset = load_dataset(config.data)
            self.split = leave_one_out(self.dataset, protocol=config.protocol)
        train = self.split.train
        self.train_rows = np.flatnonzero(train.lengths >= 2)
        if len(self.train_rows) == 0:
            raise ValueError(f"{config.data}: no user has 2+ training items")
        if config.model.time_bias and train.timestamps is None:
            raise ValueError(f"{config.data} has no timestamps: the time bias cannot be used")

        items = self._sharded_items(config)
        self.model = build_recommender(self.dataset.num_items, config.model, items)
        self.model.to(self.device)
        self.persrec = persrec_shape(config.model) if config.model.persrec_tokens > 0 else None
        self.sparse_tables = [items.table] if items is not None else []
        broadcast_parameters(self.model, self.env)
        if self.env.enabled:  # dropout masks: one stream per rank
            torch.manual_seed(config.seed + 1 + self.env.rank)
        self.loss_fn = SampledSoftmaxLoss(
            self.dataset.num_items,
            num_negatives=config.num_negatives,
            temperature=config.temperature,
            in_batch=config.in_batch_negatives,
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        # Inputs (= targets) per training sample: the cost model's L.
        self.sample_lengths = np.minimum(train.lengths[self.train_rows] - 1, config.model.max_len)
        prior = (
            CostModel(*config.cost)
            if config.cost
            else flops_cost_model(config.model, config.num_negatives)
        )
        prior.tile = config.cost_tile
        self.cost_fit = OnlineCostFit(prior)
        self.sampler = BalancedBatchSampler(
            self.sample_lengths,
            config.batch_size,
            self.env.world_size,
            self.env.rank,
            seed=config.seed,
            cost_model=prior,
            balance=config.balance,
            drop_last=False,  # the trailing partial batch runs if every rank gets a sample
            # Plan and build the next step's batches while this one computes (not on a lone
            # CPU process: there the thread would only compete with the compute for cores).
            prefetch=self.env.enabled or self.device.type == "cuda",
            prepare=self._host_batches,
        )
        self.timer = StepTimer(self.device) if self.env.enabled else None
        self._step_features: list[np.ndarray] = []  # this rank's (sum L^2, sum L, n) per step
        self._step_imbalance: list[tuple[float, float]] = []  # per step: predicted, bound
        self.state = TrainState()
        self._saved_step: int | None = None
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif self.env.is_main:
            config.save(run_dir / "config.json")
        self.logger = RunLogger(run_dir) if self.env.is_main else None

    def _sharded_items(self, config: TrainConfig) -> ShardedItemEmbedding | None:
        """With embeddings="sharded", the item table row-wise over the ranks (DESIGN §7); its
        sparse optimizer steps after the dense one."""
        if config.embeddings == "dense":
            return None
        if config.embeddings != "sharded":
            raise ValueError(f"embeddings must be 'dense' or 'sharded', got {config.embeddings!r}")
        if config.micro_batches != 1:
            raise ValueError("sharded embeddings need micro_batches=1 (lookups are collective)")
        if config.in_batch_negatives:
            raise ValueError("sharded embeddings use sampled negatives (in-batch ones are off)")
        if config.embedding_stale and not config.embedding_prefetch:
            raise ValueError("embedding_stale needs embedding_prefetch (it changes what it reads)")
        if config.embedding_exchange not in ("nccl", "ce"):
            raise ValueError(
                f"embedding_exchange must be 'nccl' or 'ce', got {config.embedding_exchange!r}"
            )
        if not self.env.enabled:
            exchange = LocalExchange()
        elif config.embedding_exchange == "ce":
            exchange = CopyEngineExchange(timeout_s=self.env.timeout_s)
            if self.env.is_main:
                print(f"embedding exchange: {exchange.description}", flush=True)
        else:
            timeout = timedelta(seconds=self.env.timeout_s)
            exchange = ProcessGroupExchange.over_own_groups(timeout=timeout)
        return ShardedItemEmbedding(
            self.dataset.num_items,
            config.model.dim,
            exchange,
            SparseOptimizerConfig(
                config.embedding_optimizer, lr=config.embedding_lr or config.lr, eps=1e-8
            ),
            seed=config.seed,
            device=self.device,
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {
            "step": self.state.step,
            "epoch": self.epochs_done,
            "history": self.state.history,
            "train_seconds": self.state.train_seconds,
            "tokens": self.state.tokens,
            "sampler": self.sampler.state_dict(),
            "cost_fit": self.cost_fit.state_dict(),
            "world_size": self.env.world_size,
        }

    def save(self) -> Path | None:
        if self._saved_step == self.state.step:  # e.g. a mid-epoch save on an epoch's last step
            return None
        self._saved_step = self.state.step
        with nvtx_range("checkpoint"):
            return save_checkpoint(
                self.run_dir / "checkpoints",
                self.state.step,
                self.model,
                self.optimizer,
                self._trainer_state(),
                keep=self.config.keep_checkpoints,
                env=self.env,
            )

    def _resume(self) -> None:
        saved = load_checkpoint(self.run_dir, self.model, self.optimizer, env=self.env)
        saved_world = saved.get("world_size", 1)
        if saved_world != self.env.world_size:
            raise ValueError(
                f"checkpoint was written by {saved_world} ranks, this job has "
                f"{self.env.world_size}: the per-rank batches would differ"
            )
        self.sampler.load_state_dict(saved["sampler"])
        if "cost_fit" in saved:
            self.cost_fit.load_state_dict(saved["cost_fit"])
            self.sampler.set_cost_model(self.cost_fit.model)
        self.state = TrainState(
            step=saved["step"],
            history=saved["history"],
            train_seconds=saved["train_seconds"],
            tokens=saved["tokens"],
        )
        self._print(
            f"resumed from {saved['checkpoint']} (epoch {self.epochs_done}, step {self.state.step})"
        )

    def _print(self, text: str) -> None:
        if self.env.is_main:
            print(text, flush=True)

    def _log(self, kind: str, step: int, **values) -> None:
        if self.logger is not None:
            self.logger.log(kind, step, **values)

    # -- training ------------------------------------------------------------------------------
    def _host_batches(self, plan: BalancedStep) -> list:
        """This rank's micro-batches of a step, built and validated on the host (in pinned
        memory on a GPU run). Runs on the sampler's planning thread, a step ahead."""
        cfg = self.config
        micro = [plan.rows]
        if cfg.micro_batches > 1 and len(plan.rows) > 1:
            # The plan's own model: the live one may be switched meanwhile by the main thread.
            costs = (plan.cost_model or self.sampler.cost_model)(self.sample_lengths[plan.rows])
            micro = split_microbatches(plan.rows, costs, min(cfg.micro_batches, len(plan.rows)))
        batches = []
        with nvtx_range("data/batch"):
            if self.persrec is not None:
                return [
                    make_persrec_train_batch(self.split.train, self.train_rows[rows], self.persrec)
                    for rows in micro
                ]
            for rows in micro:
                batch = make_train_batch(self.split.train, self.train_rows[rows], cfg.model.max_len)
                # Validated once here, so the attention op skips its device-side check.
                freescale_ext.check_seq_offsets(
                    batch.seq_offsets, batch.num_tokens, cfg.model.max_len
                )
                batches.append(batch.pin_memory() if self.device.type == "cuda" else batch)
        return batches

    def train_step(self, plan: BalancedStep | np.ndarray) -> torch.Tensor:
        """One optimizer step on this rank's share of a global batch (a plain array of rows is
        a whole batch on one process). Returns this rank's part of the global mean loss."""
        if not isinstance(plan, BalancedStep):
            plan = self.sampler.plan(np.asarray(plan, dtype=np.int64))
        cfg = self.config
        # Every rank knows the whole step's rows, so the global target count needs no collective.
        global_targets = max(int(self.sample_lengths[plan.global_rows].sum()), 1)
        salt = mix_salt(cfg.seed, self.state.step)
        host_batches = plan.prepared if plan.prepared is not None else self._host_batches(plan)
        self.optimizer.zero_grad(set_to_none=True)
        for table in self.sparse_tables:
            table.zero_grad()
        if self.timer is not None:
            self.timer.start()
        next_ids = self._next_step_ids() if self.sparse_tables and cfg.embedding_prefetch else None
        total = torch.zeros((), device=self.device)
        for host_batch in host_batches:
            batch = host_batch.to(self.device, non_blocking=True)
            total += self._forward_backward(batch, salt, global_targets, next_ids)
        if self.timer is not None:
            self.timer.compute_done()
        with nvtx_range("grad_all_reduce"):
            all_reduce_gradients(self._params, self.env)
        if self.timer is not None:
            self.timer.reduce_done()
            lengths = self.sample_lengths[plan.rows]
            quad = self.cost_fit.model.quadratic(lengths)
            self._step_features.append(
                np.append(OnlineCostFit.features(lengths, quad), lengths.max(initial=0))
            )
            self._step_imbalance.append((plan.stats.imbalance, plan.stats.bound))
        with nvtx_range("optimizer"):
            self.optimizer.step()
            for table in self.sparse_tables:
                table.step()
        self.state.step += 1
        self.state.tokens += global_targets
        return total

    def _embedding_log(self, steps: int) -> dict:
        """This rank's sharded-table figures for a train record: rows served ahead of the
        update / after it and rows updated in the step / deferred by prefetching (so far), and
        the mean ms per step of each exchange
        stage over the interval (what the step waited for; the prefetched rows' transfer itself
        overlaps compute and is in no stage)."""
        if not self.sparse_tables:
            return {}
        counts = np.sum([t.prefetch_counts + t.split_counts for t in self.sparse_tables], axis=0)
        out = {"prefetched_rows_early": int(counts[0]), "prefetched_rows_late": int(counts[1])}
        # Exact prefetching: rows updated in the step (the next one asks for them) / beside the
        # next backward.
        out["updated_rows_in_step"], out["updated_rows_deferred"] = int(counts[2]), int(counts[3])
        for table in self.sparse_tables:
            for stage, ms in table.timer.take().items():
                key = f"embedding_{stage}_ms"
                out[key] = out.get(key, 0.0) + ms / max(steps, 1)
        return out

    def _lookup_ids(self, batch, salt: int) -> torch.Tensor:
        """Every item id a step on `batch` looks up: inputs, positives, hashed negatives."""
        targets = self.loss_fn.lookup_ids(batch.target_ids, batch.target_keys, salt)
        return torch.cat([batch.input_ids.reshape(-1), targets])

    def _next_step_ids(self) -> torch.Tensor | None:
        """The lookup ids of the step after this one, if it is in this epoch (micro_batches is 1
        with sharded tables: one host batch)."""
        upcoming = self.sampler.peek_next()
        if upcoming is None:
            return None
        batches = upcoming.prepared or self._host_batches(upcoming)
        salt = mix_salt(self.config.seed, self.state.step + 1)
        # The pinned batch to the device first: a copy of the ids built on the host would come
        # from pageable memory, which waits for the compute stream (the hashing is the same).
        return self._lookup_ids(batches[0].to(self.device, non_blocking=True), salt)

    def _forward_backward(
        self, batch, salt: int, normalizer: int, next_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.sparse_tables:  # one exchange for all of the step's lookups
            ids = self._lookup_ids(batch, salt)
            with nvtx_range("embeddings/fetch"):
                for table in self.sparse_tables:
                    table.begin_step(ids)
        loss = self._model_forward_backward(batch, salt, normalizer)
        if next_ids is not None:
            # The next step's rows, planned and sent while the backward just launched runs (on
            # a GPU the planning's host syncs wait for a side stream only).
            for table in self.sparse_tables:
                table.prefetch_step(next_ids, stale=self.config.embedding_stale)
        with nvtx_range("embeddings/grads"):
            for table in self.sparse_tables:
                table.end_step()
        return loss

    def _model_forward_backward(self, batch, salt: int, normalizer: int) -> torch.Tensor:
        use_time = self.config.model.time_bias
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            with nvtx_range("forward"):
                if self.persrec is not None:
                    users = self.model.encode(batch.input_ids, batch.layout)
                else:
                    users = self.model.encode(
                        batch.input_ids,
                        batch.seq_offsets,
                        batch.max_len,
                        batch.timestamps if use_time else None,
                    )
                loss = self.loss_fn(
                    users,
                    batch.target_ids,
                    self.model.items,
                    negative_keys=batch.target_keys,
                    salt=salt,
                    normalizer=normalizer,
                )
        with nvtx_range("backward"):
            loss.backward()
        return loss.detach()

    @property
    def _params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def epochs_done(self) -> int:
        return self.sampler.epoch

    def _done(self) -> bool:
        max_steps = self.config.max_steps
        return self.epochs_done >= self.config.epochs or 0 < max_steps <= self.state.step

    def _show_progress(self) -> bool:
        mode = self.config.progress
        return mode == "on" or (mode == "auto" and sys.stderr.isatty())

    def evaluate(self) -> dict[str, float]:
        for table in self.sparse_tables:  # a prefetch for a step that will not run (max_steps)
            table.cancel_prefetch()
        return evaluate(
            self.model,
            self.split,
            device=self.device,
            batch_size=self.config.eval_batch_size,
            amp_dtype=self.amp_dtype,
            env=self.env,
        )

    def fit(self) -> dict:
        """Trains until `epochs` or `max_steps`, evaluating and checkpointing after each epoch."""
        cfg = self.config
        while not self._done():
            self._train_epoch()
            if self.sampler.position == 0:  # the epoch ran to its end
                done = self.epochs_done
                periodic = cfg.eval_every > 0 and done % cfg.eval_every == 0
                if cfg.eval_every >= 0 and (done >= cfg.epochs or periodic):
                    self._evaluate_and_log()
                self.save()
        evaluated = self.state.history and self.state.history[-1]["step"] == self.state.step
        if cfg.eval_every >= 0 and not evaluated:
            self._evaluate_and_log()
        for table in self.sparse_tables:  # collective: every rank ends here (a max_steps stop)
            table.cancel_prefetch()
        self.save()
        summary = self.summary()
        self._log("summary", self.state.step, **{k: v for k, v in summary.items() if k != "final"})
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        return summary

    def close(self) -> None:
        """Releases the logger, the sampler's planning thread and the process group. Runs on
        error paths too, where other ranks may be elsewhere: nothing collective here."""
        try:
            if self.logger is not None:
                self.logger.close()
                self.logger = None
            self.sampler.close()
            for table in self.sparse_tables:
                table.abandon()
        finally:
            if self.env.enabled:
                destroy_distributed()

    def _train_epoch(self) -> None:
        cfg = self.config
        epoch = self.sampler.epoch
        self.model.train()
        bar = tqdm(
            total=len(self.sampler),
            initial=self.sampler.position,
            desc=f"epoch {epoch}",
            disable=not (self.env.is_main and self._show_progress()),
            leave=False,
        )
        loss_sum, loss_count, start = None, 0, time.perf_counter()
        for plan in self.sampler:
            loss = self.train_step(plan)
            loss_sum = loss if loss_sum is None else loss_sum + loss
            loss_count += 1
            bar.update(1)
            end_of_epoch = self.sampler.position == len(self.sampler)
            if self.state.step % cfg.log_every == 0 or end_of_epoch:
                # The only host sync (and, with ranks, collective) per log interval.
                mean_loss = (all_reduce_sum(loss_sum, self.env) / loss_count).item()
                elapsed = time.perf_counter() - start
                self.state.train_seconds += elapsed
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss became {mean_loss} at step {self.state.step}")
                if self.timer is not None:
                    self._log_balance(epoch)
                self._log(
                    "train",
                    self.state.step,
                    epoch=epoch,
                    loss=mean_loss,
                    steps_per_s=loss_count / max(elapsed, 1e-9),
                    **self._embedding_log(loss_count),
                )
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                loss_sum, loss_count, start = None, 0, time.perf_counter()
            if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                self.save()
            if 0 < cfg.max_steps <= self.state.step and not end_of_epoch:
                break  # on an epoch's last step, let the epoch roll over first
        bar.close()
        if loss_count:
            self.state.train_seconds += time.perf_counter() - start

    def _evaluate_and_log(self) -> None:
        metrics = self.evaluate()
        record = {"epoch": self.epochs_done, "step": self.state.step, **metrics}
        self.state.history.append(record)
        self._log(f"eval/{self.split.stage}", self.state.step, epoch=self.epochs_done, **metrics)
        hr, ndcg = metrics.get("hr@10", float("nan")), metrics.get("ndcg@10", float("nan"))
        self._print(
            f"epoch {self.epochs_done:4d} step {self.state.step:7d}  HR@10 {hr:.4f}  NDCG@10 {ndcg:.4f}"
        )

    def _log_balance(self, epoch: int) -> None:
        """Gathers every rank's step times since the last call: logs the measured straggler
        wait and bubble beside the plan's predicted imbalance, and refits the cost model (the
        same gathered data on every rank gives the same fit, so partitions stay identical)."""
        compute, reduce = self.timer.collect()
        k = len(compute)
        # Per step: sum L^2, sum L, samples (the cost fit's features) and the longest sample.
        features = np.asarray(self._step_features, dtype=np.float64).reshape(k, 4)
        local = np.concatenate([compute, reduce, features.reshape(-1)])
        gathered = all_gather_array(local, self.env, self.device)
        stats = StragglerStats(gathered[:, :k], gathered[:, k : 2 * k])
        predicted, bound = np.mean(np.asarray(self._step_imbalance), axis=0)
        self._step_features, self._step_imbalance = [], []
        if self.config.fit_cost:  # without balancing the fit only orders samples in a part
            all_features = gathered[:, 2 * k :].reshape(-1, 4)[:, :3]
            self.cost_fit.update(all_features, stats.compute.reshape(-1))
            self.sampler.set_cost_model(broadcast_cost_model(self.cost_fit, self.env))
        model = self.sampler.cost_model
        per_rank = gathered[:, 2 * k :].reshape(self.env.world_size, k, 4)
        self._log(
            "balance",
            self.state.step,
            epoch=epoch,
            balance=self.config.balance,
            world_size=self.env.world_size,
            predicted_imbalance=float(predicted),  # max / mean predicted cost of the plans
            imbalance_bound=float(bound),  # what no plan can beat: the largest sample's share
            **stats.summary(),
            cost_a=model.a,
            cost_b=model.b,
            cost_c0=model.c0,
            cost_tile=model.tile,
            step_compute_ms=np.round(stats.compute * 1e3, 4).tolist(),  # [rank][step]
            step_reduce_ms=np.round(stats.reduce * 1e3, 4).tolist(),
            step_tokens=per_rank[:, :, 1].tolist(),
            step_max_len=per_rank[:, :, 3].tolist(),
        )

    def summary(self) -> dict:
        final = self.state.history[-1] if self.state.history else {}
        best = max(self.state.history, key=lambda r: r.get("ndcg@10", -1.0), default={})
        return {
            "final": final,
            "best_epoch_by_ndcg10": best.get("epoch"),
            "best_ndcg@10": best.get("ndcg@10"),
            "steps": self.state.step,
            "epochs": self.epochs_done,
            "train_seconds": round(self.state.train_seconds, 2),
            "tokens_per_s": round(self.state.tokens / max(self.state.train_seconds, 1e-9), 1),
            "device": str(self.device),
            "world_size": self.env.world_size,
            "num_parameters": self.model.num_parameters(),
        }
