"""Leave-one-out evaluation with full-catalog ranking (DESIGN §9)."""

from __future__ import annotations

import numpy as np
import torch

from freescale.data import LeaveOneOut, SequenceData, make_eval_batch
from freescale.data.persrec_batch import make_persrec_eval_batch
from freescale.distributed import DistEnv, all_reduce_sum
from freescale.metrics import DEFAULT_KS, RankingMetrics, rank_targets
from freescale.models import SequentialRecommender
from freescale.models.jagged import last_positions
from freescale.models.persrec import PerSRec, persrec_shape
from freescale.profiling import nvtx_range


def _row_chunks(num_rows: int, batch_size: int, env: DistEnv | None = None):
    """Batches of row indices; with a data-parallel `env`, only this rank's contiguous share."""
    rows = np.arange(num_rows)
    if env is not None and env.enabled:
        rows = np.array_split(rows, env.world_size)[env.rank]
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


@torch.no_grad()
def evaluate(
    model: SequentialRecommender | PerSRec,
    split: LeaveOneOut,
    *,
    device: torch.device,
    batch_size: int = 256,
    ks: tuple[int, ...] = DEFAULT_KS,
    amp_dtype: torch.dtype | None = None,
    env: DistEnv | None = None,
) -> dict[str, float]:
    """HR@K, NDCG@K and MRR of the held-out items, ranked against the whole catalog. With a
    data-parallel `env`, every rank ranks its share of the users and all get the totals."""
    was_training = model.training
    model.eval()
    metrics = RankingMetrics(ks)
    max_len = model.config.max_len
    shape = persrec_shape(model.config) if isinstance(model, PerSRec) else None
    with nvtx_range("evaluate"):
        item_table = model.items.normalized().float()
        for rows in _row_chunks(len(split.eval_targets), batch_size, env):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if shape is not None:
                    batch = make_persrec_eval_batch(split, rows, shape).to(device)
                    users = model.encode(batch.input_ids, batch.layout)
                    query = users[batch.last_rows].float()
                else:
                    batch = make_eval_batch(split, rows, max_len).to(device, non_blocking=True)
                    users = model.encode(
                        batch.input_ids, batch.seq_offsets, batch.max_len, batch.timestamps
                    )
                    query = users[last_positions(batch.seq_offsets)].float()
            scores = query @ item_table.T
            metrics.update(rank_targets(scores, batch.targets, batch.seen_ids, batch.seen_offsets))
        if env is not None and env.enabled:
            local = torch.tensor(metrics.to_vector(), dtype=torch.float64, device=device)
            metrics.load_vector(all_reduce_sum(local, env).tolist())
    model.train(was_training)
    return metrics.compute()


def item_popularity(train: SequenceData) -> torch.Tensor:
    """Interaction counts per item id (index 0 = padding), the popularity baseline's scores."""
    counts = np.bincount(train.item_ids, minlength=train.num_items + 1).astype(np.float64)
    return torch.from_numpy(counts)


def evaluate_popularity(
    split: LeaveOneOut, *, batch_size: int = 1024, ks: tuple[int, ...] = DEFAULT_KS
) -> dict[str, float]:
    """The same metrics for "recommend the most popular unseen items"."""
    popularity = item_popularity(split.train)
    metrics = RankingMetrics(ks)
    for rows in _row_chunks(len(split.eval_targets), batch_size):
        batch = make_eval_batch(split, rows, max_len=1)
        scores = popularity.expand(len(rows), -1)
        metrics.update(rank_targets(scores, batch.targets, batch.seen_ids, batch.seen_offsets))
    return metrics.compute()
