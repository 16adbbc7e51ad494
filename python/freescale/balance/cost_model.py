"""Per-sample cost c(L) = a*L^2 + b*L + c0 and its online fit from measured step times
(DESIGN §8). The quadratic term is attention (computed pairs), the linear term everything
per token (projections, MLPs, embeddings), c0 the per-sample overhead."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class CostModel:
    a: float = 1.0  # per unit of the quadratic term
    b: float = 0.0  # per token
    c0: float = 0.0  # per sample
    # > 0: the quadratic term counts what a tiled causal kernel computes, T * (T + 1) * tile^2
    # with T = ceil(L / tile) (about L^2 for long samples; a short sample pays for whole tiles)
    tile: int = 0

    def quadratic(self, lengths: np.ndarray) -> np.ndarray:
        lengths = np.asarray(lengths, dtype=np.float64)
        if self.tile <= 0:
            return lengths * lengths
        tiles = np.ceil(lengths / self.tile)
        return tiles * (tiles + 1) * float(self.tile * self.tile)

    def __call__(self, lengths: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
        """Cost of each sample. `pairs` (computed attention pairs, e.g. from a compressed
        layout) replaces the quadratic term when given."""
        lengths = np.asarray(lengths, dtype=np.float64)
        quad = self.quadratic(lengths) if pairs is None else np.asarray(pairs, dtype=np.float64)
        return self.a * quad + self.b * lengths + self.c0


class OnlineCostFit:
    """Least-squares fit of (a, b, c0) from per-rank step times.

    Each observation is one rank's step: the sums of L^2 (or pairs), L and the sample count of
    the samples it processed, and the measured compute time. Old observations decay by
    `forgetting` per update so the fit follows changes (warm-up, clock changes). Coefficients
    are kept non-negative (a negative per-token cost would reward long samples).
    """

    def __init__(
        self, prior: CostModel | None = None, forgetting: float = 0.98, ridge: float = 1e-9
    ) -> None:
        self.model = prior or CostModel()
        self.forgetting = forgetting
        self.ridge = ridge
        self._gram = np.zeros((3, 3))
        self._rhs = np.zeros(3)
        self.observations = 0

    @staticmethod
    def features(lengths: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
        lengths = np.asarray(lengths, dtype=np.float64)
        quad = lengths * lengths if pairs is None else np.asarray(pairs, dtype=np.float64)
        return np.array([quad.sum(), lengths.sum(), float(lengths.size)])

    def update(self, features: np.ndarray, seconds: np.ndarray) -> CostModel:
        """Add one observation per row of `features` ([R, 3]) with times `seconds` ([R])."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        y = np.asarray(seconds, dtype=np.float64).reshape(-1)
        self._gram = self.forgetting * self._gram + x.T @ x
        self._rhs = self.forgetting * self._rhs + x.T @ y
        self.observations += len(y)
        if self.observations >= 3:
            coef = self._solve()
            self.model = replace(self.model, a=float(coef[0]), b=float(coef[1]), c0=float(coef[2]))
        return self.model

    def state_dict(self) -> dict:
        return {
            "model": [self.model.a, self.model.b, self.model.c0, self.model.tile],
            "gram": self._gram.tolist(),
            "rhs": self._rhs.tolist(),
            "observations": self.observations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model = CostModel(*state["model"])
        self._gram = np.array(state["gram"], dtype=np.float64).reshape(3, 3)
        self._rhs = np.array(state["rhs"], dtype=np.float64).reshape(3)
        self.observations = int(state["observations"])

    def _solve(self) -> np.ndarray:
        """Non-negative least squares on the 3x3 normal equations: Jacobi-scaled (L^2, L and
        counts differ by orders of magnitude), then a tiny active-set loop."""
        d = np.sqrt(np.maximum(np.diag(self._gram), 1e-300))
        gram = self._gram / np.outer(d, d) + self.ridge * np.eye(3)
        rhs = self._rhs / d
        active = [0, 1, 2]
        while active:
            sol = np.linalg.solve(gram[np.ix_(active, active)], rhs[active])
            if (sol >= 0).all():
                break
            active.pop(int(np.argmin(sol)))
        coef = np.zeros(3)
        if active:
            coef[active] = sol
        return coef / d
