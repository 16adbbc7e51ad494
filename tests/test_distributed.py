"""Data-parallel training: balanced == unbalanced == one process (same global batch), exact
multi-rank resume, and the pieces that make it so (hashed negatives, global loss normalizer,
straggler statistics, sharded evaluation)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from multiprocess import load_run_model, run_train

from freescale.balance.report import StragglerStats
from freescale.balance.timing import StepTimer
from freescale.metrics import RankingMetrics
from freescale.models import ModelConfig
from freescale.models.embeddings import ItemEmbedding
from freescale.models.loss import SampledSoftmaxLoss
from freescale.models.negatives import hashed_negatives, mix_salt
from freescale.runlog import read_log
from freescale.train import flops_cost_model

DATA = "synthetic:num_users=600,num_items=300,num_topics=6,mean_len=40,max_len=160,seed=9"
# dropout 0: dropout masks are per-rank random streams, the only randomness that is not keyed by
# the sample; everything else must make the runs agree to rounding.
TRAIN_ARGS = [
    f"--data={DATA}",
    "--model=hstu",
    "--dim=32",
    "--blocks=2",
    "--heads=2",
    "--dqk=16",
    "--dv=16",
    "--max-len=80",
    "--dropout=0",
    "--batch-size=48",
    "--negatives=24",
    "--device=cpu",
    "--eval-every=-1",
    "--log-every=4",
    "--progress=off",
    "--seed=4",
]


# -- hashed negatives ---------------------------------------------------------------------------
def test_hashed_negatives_depend_only_on_key_salt_and_column():
    keys = torch.tensor([5, 17, 2**40 + 3, 0, 17])
    a = hashed_negatives(keys, salt=11, num_negatives=16, num_items=50)
    assert a.shape == (5, 16) and a.dtype == torch.int64
    assert int(a.min()) >= 1 and int(a.max()) <= 50
    torch.testing.assert_close(a[1], a[4], rtol=0, atol=0)  # same key, same negatives
    # Any subset or order of the keys (another rank, another batch layout) gives the same rows.
    perm = torch.tensor([3, 0, 4, 2])
    torch.testing.assert_close(hashed_negatives(keys[perm], 11, 16, 50), a[perm], rtol=0, atol=0)
    assert not torch.equal(a, hashed_negatives(keys, 12, 16, 50))  # the salt (step) matters
    assert not torch.equal(a[0], a[2])


def test_hashed_negatives_are_uniform():
    ids = hashed_negatives(torch.arange(20000), mix_salt(3, 7), 64, 97).flatten()
    counts = torch.bincount(ids, minlength=98)[1:].double()
    expected = ids.numel() / 97
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 96 + 6 * (2 * 96) ** 0.5, chi2  # ~6 sigma over 96 degrees of freedom


def test_hashed_negatives_reject_bad_input():
    with pytest.raises(TypeError, match="int64"):
        hashed_negatives(torch.arange(3, dtype=torch.int32), 0, 4, 10)
    with pytest.raises(ValueError, match="num_items"):
        hashed_negatives(torch.arange(3), 0, 4, 0)


def test_mix_salt_separates_steps_and_seeds():
    salts = {mix_salt(seed, step) for seed in range(4) for step in range(200)}
    assert len(salts) == 800


# -- the loss under data parallelism -----------------------------------------------------------
def test_loss_shards_sum_to_the_global_mean():
    torch.manual_seed(0)
    items = ItemEmbedding(40, 8)
    loss_fn = SampledSoftmaxLoss(40, num_negatives=10)
    users = torch.nn.functional.normalize(torch.randn(30, 8, dtype=torch.float64), dim=-1)
    targets = torch.randint(1, 41, (30,))
    keys = torch.arange(100, 130)
    whole = loss_fn(users, targets, items, negative_keys=keys, salt=5)
    shards = [torch.arange(0, 7), torch.arange(7, 19), torch.arange(19, 30)]
    summed = sum(
        loss_fn(users[s], targets[s], items, negative_keys=keys[s], salt=5, normalizer=30)
        for s in shards
    )
    torch.testing.assert_close(summed, whole)


def test_loss_rejects_mismatched_keys():
    loss_fn = SampledSoftmaxLoss(10, num_negatives=4)
    with pytest.raises(ValueError, match="negative_keys"):
        loss_fn(
            torch.randn(3, 4),
            torch.tensor([1, 2, 3]),
            ItemEmbedding(10, 4),
            negative_keys=torch.arange(2),
        )


# -- measurement pieces --------------------------------------------------------------------------
def test_straggler_stats():
    compute = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]])  # [rank, step]
    stats = StragglerStats(compute, np.zeros_like(compute))
    np.testing.assert_allclose(stats.wait, [[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(stats.bubble_per_step, [1 - 2 / 3, 0.0])
    summary = stats.summary()
    assert summary["steps"] == 2
    assert summary["wait_ms"] == pytest.approx(1000 * 3 / 6)
    assert summary["imbalance"] == pytest.approx((1.5 + 1.0) / 2)
    with pytest.raises(ValueError):
        StragglerStats(compute, np.zeros((3, 3)))


def test_step_timer_on_cpu():
    timer = StepTimer(torch.device("cpu"))
    for _ in range(3):
        timer.start()
        time.sleep(0.03)  # "compute"
        timer.compute_done()
        time.sleep(0.005)  # "all-reduce"
        timer.reduce_done()
    assert len(timer) == 3
    compute, reduce = timer.collect()
    assert compute.shape == reduce.shape == (3,)
    assert (compute >= 0.03).all() and (reduce >= 0.005).all() and (reduce < 0.03).all()
    assert len(timer) == 0
    with pytest.raises(RuntimeError, match="order"):
        timer.start()
        timer.reduce_done()


def test_ranking_metrics_vector_roundtrip():
    a, b, whole = RankingMetrics(), RankingMetrics(), RankingMetrics()
    ranks = torch.tensor([1, 3, 12, 60, 400, 2])
    a.update(ranks[:2])
    b.update(ranks[2:])
    whole.update(ranks)
    merged = RankingMetrics()
    merged.load_vector([x + y for x, y in zip(a.to_vector(), b.to_vector(), strict=True)])
    assert merged.compute() == pytest.approx(whole.compute())


def test_flops_cost_model_prior():
    hstu = ModelConfig(kind="hstu", dim=50, num_blocks=8, num_heads=2, dim_qk=25, dim_v=25)
    prior = flops_cost_model(hstu, num_negatives=128)
    # By hand, per layer: 2 * H * (dqk + dv) = 200 FLOPs per pair, over L^2 / 2 pairs -> 100 per
    # L^2; per token 2 * 50 * (2 * 2 * 50 + 2 * 25) = 25,000, plus 2 * 50 * 129 for the scores.
    assert prior.a == 1.0 and prior.c0 == 0.0
    assert prior.b == pytest.approx((8 * 25_000 + 2 * 50 * 129) / (8 * 100))
    wider = flops_cost_model(
        ModelConfig(kind="hstu", dim=200, num_blocks=8, num_heads=2, dim_qk=25, dim_v=25), 128
    )
    assert wider.b > prior.b  # wider projections: more per-token work per attention pair


# -- multi-process training (torchrun, gloo) -----------------------------------------------------
@pytest.mark.slow
def test_balanced_equals_unbalanced_equals_one_process(tmp_path):
    # 13 steps an epoch (12 full global batches, then 24 rows: one for each rank), so 15 steps
    # cross an epoch end and its partial batch.
    steps = ["--max-steps=15"]
    run_train([*TRAIN_ARGS, *steps, f"--run-dir={tmp_path / 'one'}"], 0, tmp_path)
    run_train([*TRAIN_ARGS, *steps, "--balance", f"--run-dir={tmp_path / 'bal'}"], 2, tmp_path)
    run_train([*TRAIN_ARGS, *steps, "--no-balance", f"--run-dir={tmp_path / 'plain'}"], 2, tmp_path)
    one = load_run_model(tmp_path / "one")
    for name in ("bal", "plain"):
        other = load_run_model(tmp_path / name)
        for key, value in one.items():
            torch.testing.assert_close(
                other[key], value, rtol=1e-4, atol=2e-5, msg=lambda m, key=key: f"{key}: {m}"
            )

    balanced = [r for r in read_log(tmp_path / "bal" / "metrics.jsonl") if r["kind"] == "balance"]
    plain = [r for r in read_log(tmp_path / "plain" / "metrics.jsonl") if r["kind"] == "balance"]
    assert len(balanced) == len(plain) == 4  # at steps 4, 8, 12 and the epoch's end (13)
    for record in balanced + plain:
        assert record["world_size"] == 2
        assert np.array(record["step_compute_ms"]).shape[0] == 2
        assert 0.0 <= record["bubble"] < 1.0 and record["wait_ms"] >= 0.0
    # The partition moved samples: predicted imbalance is lower than the contiguous split's.
    assert np.mean([r["predicted_imbalance"] for r in balanced]) < np.mean(
        [r["predicted_imbalance"] for r in plain]
    )


@pytest.mark.slow
def test_multi_rank_resume_is_exact(tmp_path):
    common = [*TRAIN_ARGS, "--no-fit-cost", "--checkpoint-every=5"]
    run_train([*common, "--max-steps=9", f"--run-dir={tmp_path / 'straight'}"], 2, tmp_path)
    run_train([*common, "--max-steps=5", f"--run-dir={tmp_path / 'cut'}"], 2, tmp_path)
    run_train(["--resume", str(tmp_path / "cut"), "--max-steps=9"], 2, tmp_path)
    straight, resumed = load_run_model(tmp_path / "straight"), load_run_model(tmp_path / "cut")
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.multi_gpu
def test_balanced_equals_one_process_on_gpus(tmp_path):
    """The same agreement on 2 GPUs (NCCL), in fp32 (no autocast, no TF32)."""
    args = [a for a in TRAIN_ARGS if not a.startswith("--device")]
    args += ["--device=cuda", "--amp=none", "--no-tf32", "--max-steps=8"]
    run_train([*args, f"--run-dir={tmp_path / 'one'}"], 0, tmp_path)
    run_train([*args, "--balance", f"--run-dir={tmp_path / 'bal'}"], 2, tmp_path)
    one, bal = load_run_model(tmp_path / "one"), load_run_model(tmp_path / "bal")
    for key, value in one.items():
        torch.testing.assert_close(
            bal[key], value, rtol=1e-4, atol=2e-5, msg=lambda m, key=key: f"{key}: {m}"
        )
