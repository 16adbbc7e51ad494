"""Full-catalog ranking metrics for leave-one-out evaluation (DESIGN §9)."""

from __future__ import annotations

import math

import torch

DEFAULT_KS = (10, 50, 200)


def rank_targets(
    scores: torch.Tensor,
    targets: torch.Tensor,
    seen_ids: torch.Tensor,
    seen_offsets: torch.Tensor,
) -> torch.Tensor:
    """1-based rank of each target among all items, with the user's seen items filtered.

    scores: [B, num_items + 1] (column 0 is padding and never ranks); targets: [B];
    seen_ids/seen_offsets: each user's history in CSR form. The target itself is never filtered.
    Ties count against the target, and a NaN score ranks above it (a NaN target ranks last), so
    a collapsed model that scores everything alike cannot look perfect.
    """
    scores = scores.float().clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets]
    counts = (seen_offsets[1:] - seen_offsets[:-1]).long()
    scores[torch.repeat_interleave(rows, counts), seen_ids] = -torch.inf
    scores[:, 0] = -torch.inf
    scores[rows, targets] = -torch.inf  # the target does not compete with itself
    scores = torch.nan_to_num(scores, nan=torch.inf)
    beaten_by = (scores >= target_scores[:, None]).sum(dim=1)
    worst = scores.shape[1] - 1
    return torch.where(target_scores.isnan(), worst, 1 + beaten_by)


class RankingMetrics:
    """Accumulates HR@K, NDCG@K and MRR over batches of ranks."""

    def __init__(self, ks: tuple[int, ...] = DEFAULT_KS) -> None:
        self.ks = ks
        self.count = 0
        self.sums: dict[str, float] = {}

    def update(self, ranks: torch.Tensor) -> None:
        ranks = ranks.double()
        self.count += ranks.numel()
        values = {"mrr": (1.0 / ranks).sum().item()}
        gain = 1.0 / torch.log2(ranks + 1.0)
        for k in self.ks:
            hit = ranks <= k
            values[f"hr@{k}"] = hit.sum().item()
            values[f"ndcg@{k}"] = (gain * hit).sum().item()
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value

    def names(self) -> list[str]:
        return ["mrr"] + [f"{kind}@{k}" for k in self.ks for kind in ("hr", "ndcg")]

    def to_vector(self) -> list[float]:
        """[count, sums...] in names() order: what data-parallel ranks add up."""
        return [float(self.count)] + [self.sums.get(name, 0.0) for name in self.names()]

    def load_vector(self, vector: list[float]) -> None:
        self.count = int(round(vector[0]))
        self.sums = dict(zip(self.names(), (float(v) for v in vector[1:]), strict=True))

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        out = {name: value / self.count for name, value in self.sums.items()}
        out["num_users"] = self.count
        return dict(sorted(out.items(), key=lambda kv: _metric_order(kv[0])))


def _metric_order(name: str) -> tuple[int, float]:
    kind, _, k = name.partition("@")
    order = {"hr": 0, "ndcg": 1, "mrr": 2, "num_users": 3}[kind]
    return order, float(k) if k else math.inf
