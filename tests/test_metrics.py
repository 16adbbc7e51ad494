import math

import pytest
import torch

from freescale.metrics import RankingMetrics, rank_targets


def csr(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([i for row in rows for i in row], dtype=torch.long)
    offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    return ids, offsets


def test_rank_counts_only_strictly_higher_unseen_items():
    # items 1..5; column 0 is padding and must never rank, even with the highest score
    scores = torch.tensor(
        [
            [9.0, 0.5, 0.9, 0.1, 0.7, 0.3],  # target 4 (0.7): item 2 (0.9) is above it
            [9.0, 0.5, 0.9, 0.1, 0.7, 0.3],  # same, but item 2 was seen: rank 1
            [9.0, 0.5, 0.9, 0.1, 0.7, 0.3],  # target 3 (0.1), itself seen: never filtered; 5 is
            [0.0, 0.4, 0.4, 0.4, 0.4, 0.4],  # ties count against the target
        ]
    )
    targets = torch.tensor([4, 4, 3, 5])
    seen_ids, seen_offsets = csr([[1], [2, 1], [3, 5], []])
    ranks = rank_targets(scores, targets, seen_ids, seen_offsets)
    assert ranks.tolist() == [2, 1, 4, 5]
    assert scores[0, 0] == 9.0  # the caller's scores are not modified


def test_nan_scores_never_help_the_target():
    scores = torch.tensor([[0.0, float("nan"), 0.5, 0.2], [0.0, 0.1, float("nan"), 0.3]])
    none_seen = torch.tensor([], dtype=torch.long), torch.tensor([0, 0, 0])
    ranks = rank_targets(scores, torch.tensor([2, 2]), *none_seen)
    assert ranks.tolist() == [2, 3]  # a NaN competitor ranks above; a NaN target ranks last
    collapsed = torch.zeros(3, 6)
    assert rank_targets(collapsed, torch.tensor([1, 3, 5]), *csr([[], [], []])).tolist() == [5] * 3


def test_ranking_metrics_match_hand_computation():
    metrics = RankingMetrics(ks=(10, 50))
    metrics.update(torch.tensor([1, 5]))
    metrics.update(torch.tensor([20, 300]))
    out = metrics.compute()
    assert out["num_users"] == 4
    assert out["hr@10"] == pytest.approx(0.5)
    assert out["hr@50"] == pytest.approx(0.75)
    assert out["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(6)) / 4)
    assert out["ndcg@50"] == pytest.approx((1.0 + 1.0 / math.log2(6) + 1.0 / math.log2(21)) / 4)
    assert out["mrr"] == pytest.approx((1 + 1 / 5 + 1 / 20 + 1 / 300) / 4)
    assert list(out)[:4] == ["hr@10", "hr@50", "ndcg@10", "ndcg@50"]
