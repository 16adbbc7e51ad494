"""Single-process training (CPU or one GPU): next-item prediction with sampled softmax,
leave-one-out evaluation every epoch, JSONL/TensorBoard logs and atomic, resumable
checkpoints (DESIGN §9)."""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import freescale_ext
from freescale.checkpoint import load_checkpoint, save_checkpoint
from freescale.config import TrainConfig
from freescale.data import EpochBatchSampler, leave_one_out, load_dataset, make_train_batch
from freescale.evaluate import evaluate
from freescale.models import SampledSoftmaxLoss, SequentialRecommender
from freescale.profiling import nvtx_range
from freescale.runlog import RunLogger

# No fp16: without a GradScaler its gradients underflow, and bf16 needs none.
AMP_DTYPES = {"bf16": torch.bfloat16, "none": None}


def resolve_device(name: str) -> torch.device:
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
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        seed_everything(config.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
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

        self.model = SequentialRecommender(self.dataset.num_items, config.model).to(self.device)
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
        self.sampler = EpochBatchSampler(
            len(self.train_rows), config.batch_size, seed=config.seed, shuffle=True
        )
        self.state = TrainState()
        self._saved_step: int | None = None
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        else:
            config.save(run_dir / "config.json")
        self.logger = RunLogger(run_dir)

    # -- checkpoints ---------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {
            "step": self.state.step,
            "epoch": self.epochs_done,
            "history": self.state.history,
            "train_seconds": self.state.train_seconds,
            "tokens": self.state.tokens,
            "sampler": self.sampler.state_dict(),
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
            )

    def _resume(self) -> None:
        saved = load_checkpoint(self.run_dir, self.model, self.optimizer)
        self.sampler.load_state_dict(saved["sampler"])
        self.state = TrainState(
            step=saved["step"],
            history=saved["history"],
            train_seconds=saved["train_seconds"],
            tokens=saved["tokens"],
        )
        print(
            f"resumed from {saved['checkpoint']} (epoch {self.epochs_done}, step {self.state.step})"
        )

    # -- training ------------------------------------------------------------------------------
    def _batch(self, rows: np.ndarray):
        with nvtx_range("data/batch"):
            batch = make_train_batch(
                self.split.train, self.train_rows[rows], self.config.model.max_len
            )
            # Validated once here on the host, so the attention op skips its device-side check.
            freescale_ext.check_seq_offsets(
                batch.seq_offsets, batch.num_tokens, self.config.model.max_len
            )
            return batch.to(self.device, non_blocking=True)

    def train_step(self, rows: np.ndarray) -> torch.Tensor:
        batch = self._batch(rows)
        use_time = self.config.model.time_bias
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            with nvtx_range("forward"):
                users = self.model.encode(
                    batch.input_ids,
                    batch.seq_offsets,
                    batch.max_len,
                    batch.timestamps if use_time else None,
                )
                loss = self.loss_fn(users, batch.target_ids, self.model.items)
        with nvtx_range("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with nvtx_range("optimizer"):
            self.optimizer.step()
        self.state.step += 1
        self.state.tokens += batch.num_tokens
        return loss.detach()

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
        return evaluate(
            self.model,
            self.split,
            device=self.device,
            batch_size=self.config.eval_batch_size,
            amp_dtype=self.amp_dtype,
        )

    def fit(self) -> dict:
        """Trains until `epochs` or `max_steps`, evaluating and checkpointing after each epoch."""
        cfg = self.config
        while not self._done():
            self._train_epoch()
            if self.sampler.position == 0:  # the epoch ran to its end
                done = self.epochs_done
                if done >= cfg.epochs or (cfg.eval_every and done % cfg.eval_every == 0):
                    self._evaluate_and_log()
                self.save()
        if not self.state.history or self.state.history[-1]["step"] != self.state.step:
            self._evaluate_and_log()
            self.save()
        summary = self.summary()
        self.logger.log(
            "summary", self.state.step, **{k: v for k, v in summary.items() if k != "final"}
        )
        self.logger.close()
        return summary

    def _train_epoch(self) -> None:
        cfg = self.config
        epoch = self.sampler.epoch
        self.model.train()
        bar = tqdm(
            total=len(self.sampler),
            initial=self.sampler.position,
            desc=f"epoch {epoch}",
            disable=not self._show_progress(),
            leave=False,
        )
        loss_sum, loss_count, start = None, 0, time.perf_counter()
        for rows in self.sampler:
            loss = self.train_step(rows)
            loss_sum = loss if loss_sum is None else loss_sum + loss
            loss_count += 1
            bar.update(1)
            end_of_epoch = self.sampler.position == len(self.sampler)
            if self.state.step % cfg.log_every == 0 or end_of_epoch:
                mean_loss = (loss_sum / loss_count).item()  # the only host sync per interval
                elapsed = time.perf_counter() - start
                self.state.train_seconds += elapsed
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss became {mean_loss} at step {self.state.step}")
                self.logger.log(
                    "train",
                    self.state.step,
                    epoch=epoch,
                    loss=mean_loss,
                    steps_per_s=loss_count / max(elapsed, 1e-9),
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
        self.logger.log(
            f"eval/{self.split.stage}", self.state.step, epoch=self.epochs_done, **metrics
        )
        hr, ndcg = metrics.get("hr@10", float("nan")), metrics.get("ndcg@10", float("nan"))
        print(
            f"epoch {self.epochs_done:4d} step {self.state.step:7d}  HR@10 {hr:.4f}  NDCG@10 {ndcg:.4f}",
            flush=True,
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
            "num_parameters": self.model.num_parameters(),
        }
