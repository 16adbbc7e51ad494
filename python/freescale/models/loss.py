"""Sampled softmax over L2-normalized embeddings (DESIGN §9)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from freescale.models.embeddings import ItemEmbedding
from freescale.models.negatives import hashed_negatives


class SampledSoftmaxLoss(nn.Module):
    """-log softmax of the positive among `num_negatives` uniform negatives per position.

    Negatives are drawn independently for every position from items 1..num_items; a negative
    that equals the positive is masked out. With `negative_keys` (one non-negative int64 per
    position naming it in the dataset) they are a hash of (salt, key), the same on any rank and
    in any batch layout (see freescale.models.negatives); without, they come from `generator`.
    With `in_batch`, the batch's distinct positives are extra negatives shared by every position.

    The loss is the mean over positions with a target, or, with `normalizer`, their sum divided
    by it: data-parallel ranks pass the global target count, so that summing their gradients
    gives the gradient of the global batch's mean.
    """

    def __init__(
        self,
        num_items: int,
        num_negatives: int = 128,
        temperature: float = 0.05,
        in_batch: bool = False,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.in_batch = in_batch

    def forward(
        self,
        user_embeddings: torch.Tensor,
        target_ids: torch.Tensor,
        items: ItemEmbedding,
        generator: torch.Generator | None = None,
        *,
        negative_keys: torch.Tensor | None = None,
        salt: int = 0,
        normalizer: float | None = None,
    ) -> torch.Tensor:
        # Positions without a target (id 0) are weighted out rather than dropped: boolean-mask
        # indexing would wait for the device to learn how many rows remain.
        weights = (target_ids > 0).to(user_embeddings.dtype)
        query, targets = user_embeddings, target_ids.clamp(min=1)
        positive = (query * items.normalized(targets).to(query.dtype)).sum(-1, keepdim=True)

        if negative_keys is not None:
            if negative_keys.shape != targets.shape:
                raise ValueError(
                    f"negative_keys {tuple(negative_keys.shape)} must match targets "
                    f"{tuple(targets.shape)}"
                )
            negative_ids = hashed_negatives(negative_keys, salt, self.num_negatives, self.num_items)
        else:
            negative_ids = torch.randint(
                1,
                self.num_items + 1,
                (targets.numel(), self.num_negatives),
                device=targets.device,
                generator=generator,
            )
        negative_logits = self._negative_logits(query, negative_ids, items)
        logits = [
            positive,
            negative_logits.masked_fill(negative_ids == targets[:, None], -torch.inf),
        ]
        if self.in_batch:
            batch_ids = torch.unique(targets)
            batch_logits = query @ items.normalized(batch_ids).to(query.dtype).T
            logits.append(
                batch_logits.masked_fill(batch_ids[None, :] == targets[:, None], -torch.inf)
            )
        log_probs = F.log_softmax(torch.cat(logits, dim=1) / self.temperature, dim=1)
        total = -(log_probs[:, 0] * weights).sum()
        if normalizer is not None:
            return total / normalizer
        return total / weights.sum().clamp(min=1.0)

    def lookup_ids(self, target_ids: torch.Tensor, negative_keys: torch.Tensor, salt: int):
        """Every item id forward(...) with these targets and keys looks up (the positives and
        the hashed negatives), flat: what a sharded table fetches before the step."""
        targets = target_ids.clamp(min=1)
        negatives = hashed_negatives(negative_keys, salt, self.num_negatives, self.num_items)
        return torch.cat([targets.reshape(-1), negatives.reshape(-1)])

    @staticmethod
    def _negative_logits(
        query: torch.Tensor, negative_ids: torch.Tensor, items: ItemEmbedding
    ) -> torch.Tensor:
        """[N, R] dot products of each query with its own negatives.

        Gathering [N, R, D] negative embeddings moves N*R*D values; scoring the query against
        the whole (small) catalog and gathering [N, R] logits moves N*I. Take the cheaper one:
        the catalog route for ML-1M-sized catalogs, the gather route for large tables.
        """
        num_rows, dim = items.num_items + 1, items.dim
        # A sharded table has no local catalog to score (and must take part in every lookup).
        if not getattr(items, "lookup_only", False) and num_rows <= negative_ids.shape[1] * dim:
            all_logits = query @ items.normalized().to(query.dtype).T  # [N, I + 1]
            return all_logits.gather(1, negative_ids)
        negatives = items.normalized(negative_ids).to(query.dtype)  # [N, R, D]
        return torch.bmm(negatives, query.unsqueeze(-1)).squeeze(-1)
