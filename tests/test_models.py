"""Model-level properties on CPU: causality, sequence independence, gradients, the loss."""

import pytest
import torch
import torch.nn.functional as F

from freescale.models import ModelConfig, SampledSoftmaxLoss, SequentialRecommender
from freescale.models.embeddings import ItemEmbedding
from freescale.models.jagged import jagged_positions, jagged_to_padded, padded_to_jagged

NUM_ITEMS = 50


def make_model(kind: str, **overrides) -> SequentialRecommender:
    config = ModelConfig(
        kind=kind,
        dim=16,
        num_blocks=2,
        num_heads=2,
        dim_qk=8,
        dim_v=8,
        ffn_hidden=16,
        dropout=0.0,
        max_len=12,
        **overrides,
    )
    torch.manual_seed(0)
    return SequentialRecommender(NUM_ITEMS, config).double()


def jagged_batch(lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, NUM_ITEMS + 1, (sum(lengths),), generator=gen)
    offsets = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    timestamps = torch.randint(1, 10**5, (sum(lengths),), generator=gen).cumsum(0)
    return ids, offsets, timestamps


@pytest.mark.parametrize("kind", ["hstu", "stu", "sasrec"])
def test_outputs_are_causal_and_sequences_independent(kind):
    model = make_model(kind).eval()
    lengths = [5, 0, 12, 1, 7]
    ids, offsets, _ = jagged_batch(lengths)
    out = model.encode(ids, offsets, max(lengths))
    assert out.shape == (sum(lengths), 16)
    assert torch.allclose(out.norm(dim=-1), torch.ones(len(ids), dtype=out.dtype))

    # Change token 3 of the third sequence (global index 5 + 3): earlier tokens of that
    # sequence and every other sequence must not move; later tokens must.
    changed = ids.clone()
    pos = 5 + 3
    changed[pos] = changed[pos] % NUM_ITEMS + 1
    out2 = model.encode(changed, offsets, max(lengths))
    same = torch.ones(len(ids), dtype=torch.bool)
    same[pos:17] = False
    assert torch.equal(out[same], out2[same])
    assert not torch.allclose(out[pos:17], out2[pos:17])


@pytest.mark.parametrize("kind", ["hstu", "stu", "sasrec"])
def test_every_parameter_gets_a_gradient(kind):
    model = make_model(kind, time_bias=kind != "sasrec").train()
    ids, offsets, timestamps = jagged_batch([6, 9, 3])
    out = model.encode(ids, offsets, 9, timestamps)
    loss_fn = SampledSoftmaxLoss(NUM_ITEMS, num_negatives=8)
    loss = loss_fn(out, torch.roll(ids, -1), model.items)
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    # the padding row of position embeddings beyond max length aside, everything must learn
    assert missing == [], missing


def test_time_bias_changes_outputs_only_when_timestamps_are_given():
    model = make_model("hstu", time_bias=True).eval()
    ids, offsets, timestamps = jagged_batch([6, 9])
    with_ts = model.encode(ids, offsets, 9, timestamps)
    without = model.encode(ids, offsets, 9, None)
    assert not torch.allclose(with_ts, without)


def test_encode_rejects_sequences_longer_than_max_len():
    model = make_model("hstu")
    ids, offsets, _ = jagged_batch([13])
    with pytest.raises(ValueError, match="max_len=12"):
        model.encode(ids, offsets, 13)


def test_jagged_padded_round_trip():
    lengths = [3, 0, 4]
    offsets = torch.tensor([0, 3, 3, 7], dtype=torch.int32)
    values = torch.arange(7 * 2, dtype=torch.float64).view(7, 2)
    b, p = jagged_positions(offsets, 7)
    assert b.tolist() == [0, 0, 0, 2, 2, 2, 2] and p.tolist() == [0, 1, 2, 0, 1, 2, 3]
    padded = jagged_to_padded(values, b, p, 3, max(lengths))
    assert padded.shape == (3, 4, 2)
    assert torch.equal(padded[1], torch.zeros(4, 2, dtype=torch.float64))
    assert torch.equal(padded_to_jagged(padded, b, p), values)


def test_sampled_softmax_matches_a_direct_computation():
    torch.manual_seed(0)
    items = ItemEmbedding(NUM_ITEMS, 8).double()
    users = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    targets = torch.tensor([3, 0, 7, 7, 50])  # 0 = no target at that position
    loss_fn = SampledSoftmaxLoss(NUM_ITEMS, num_negatives=6, temperature=0.1)
    loss = loss_fn(users, targets, items, generator=torch.Generator().manual_seed(1))

    # one row of negatives per position, the target-less position included (and then ignored)
    negatives = torch.randint(1, NUM_ITEMS + 1, (5, 6), generator=torch.Generator().manual_seed(1))
    table = F.normalize(items.weight, dim=-1)
    expected = []
    for row in (0, 2, 3, 4):
        q, t = users[row], targets[row]
        logits = [q @ table[t]] + [q @ table[n] for n in negatives[row] if n != t]
        expected.append(-torch.log_softmax(torch.stack(logits) / 0.1, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-12)


def test_in_batch_negatives_add_the_other_positives():
    torch.manual_seed(0)
    items = ItemEmbedding(NUM_ITEMS, 8).double()
    users = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    targets = torch.tensor([3, 9, 3])
    with_batch = SampledSoftmaxLoss(NUM_ITEMS, num_negatives=4, temperature=0.1, in_batch=True)
    loss = with_batch(users, targets, items, generator=torch.Generator().manual_seed(2))

    negatives = torch.randint(1, NUM_ITEMS + 1, (3, 4), generator=torch.Generator().manual_seed(2))
    table = F.normalize(items.weight, dim=-1)
    expected = []
    for row in range(3):
        q, t = users[row], int(targets[row])
        logits = [q @ table[t]] + [q @ table[n] for n in negatives[row] if n != t]
        logits += [q @ table[b] for b in (3, 9) if b != t]  # the batch's other positives
        expected.append(-torch.log_softmax(torch.stack(logits) / 0.1, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-12)


def test_negative_logits_catalog_and_gather_routes_agree():
    torch.manual_seed(0)
    items = ItemEmbedding(NUM_ITEMS, 8).double()
    query = F.normalize(torch.randn(20, 8, dtype=torch.float64), dim=-1)
    few = torch.randint(1, NUM_ITEMS + 1, (20, 3))  # 51 rows > 3 * 8: gathers embeddings
    many = torch.randint(1, NUM_ITEMS + 1, (20, 9))  # 51 rows <= 9 * 8: scores the catalog
    table = F.normalize(items.weight, dim=-1)
    for ids in (few, many):
        got = SampledSoftmaxLoss._negative_logits(query, ids, items)
        assert torch.allclose(got, (table[ids] * query[:, None, :]).sum(-1), atol=1e-14)
