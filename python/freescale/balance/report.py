"""Measured straggler statistics from every rank's per-step compute times (DESIGN §8).

All ranks meet at the gradient all-reduce, so a step's critical path is the slowest rank's
compute; every other rank waits max - own. The bubble fraction, 1 - mean/max per step, is the
share of rank-time spent waiting, the quantity `freescale simulate` predicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StragglerStats:
    compute: np.ndarray  # [world, steps] seconds from step start to end of backward
    reduce: np.ndarray  # [world, steps] seconds from end of backward to end of the all-reduce

    def __post_init__(self) -> None:
        self.compute = np.atleast_2d(np.asarray(self.compute, dtype=np.float64))
        self.reduce = np.atleast_2d(np.asarray(self.reduce, dtype=np.float64))
        if self.compute.shape != self.reduce.shape:
            raise ValueError(f"compute {self.compute.shape} vs reduce {self.reduce.shape}")

    @property
    def wait(self) -> np.ndarray:
        """[world, steps] straggler wait of every rank."""
        return self.compute.max(axis=0, keepdims=True) - self.compute

    @property
    def bubble_per_step(self) -> np.ndarray:
        top = self.compute.max(axis=0)
        return np.where(top > 0, 1.0 - self.compute.mean(axis=0) / np.maximum(top, 1e-30), 0.0)

    def summary(self) -> dict[str, float]:
        if self.compute.size == 0:
            return {}
        top = self.compute.max(axis=0)
        return {
            "steps": int(self.compute.shape[1]),
            "bubble": float(self.bubble_per_step.mean()),
            "wait_ms": float(self.wait.mean() * 1e3),  # per rank and step
            "max_compute_ms": float(top.mean() * 1e3),
            "mean_compute_ms": float(self.compute.mean() * 1e3),
            "imbalance": float((top / np.maximum(self.compute.mean(axis=0), 1e-30)).mean()),
            "reduce_ms": float(self.reduce.mean() * 1e3),
        }

    @classmethod
    def concat(cls, parts: list[StragglerStats]) -> StragglerStats:
        return cls(
            np.concatenate([p.compute for p in parts], axis=1),
            np.concatenate([p.reduce for p in parts], axis=1),
        )
