"""End-to-end training on CPU: learning happens, resume is exact, the CLI works."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from freescale.cli import main as cli_main
from freescale.config import PRESETS, TrainConfig, preset_config
from freescale.evaluate import evaluate_popularity
from freescale.models import ModelConfig
from freescale.runlog import read_log
from freescale.train import Trainer

SMALL_DATA = "synthetic:num_users=1200,num_items=400,num_topics=8,mean_len=30,max_len=120,seed=5"


def small_config(**overrides) -> TrainConfig:
    model = ModelConfig(
        kind="hstu", dim=32, num_blocks=2, num_heads=2, dim_qk=16, dim_v=16, max_len=60, dropout=0.1
    )
    base = dict(
        data=SMALL_DATA,
        model=model,
        epochs=2,
        batch_size=64,
        num_negatives=32,
        eval_batch_size=512,
        log_every=5,
        device="cpu",
        progress="off",
        seed=3,
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.slow
def test_training_learns_and_beats_popularity(tmp_path):
    trainer = Trainer(small_config(epochs=16), tmp_path / "run")  # ~300 steps
    summary = trainer.fit()
    assert summary["steps"] >= 250
    losses = [
        r["loss"] for r in read_log(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"
    ]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:3]) / 3
    popularity = evaluate_popularity(trainer.split)
    final = summary["final"]
    assert final["hr@10"] > 1.5 * popularity["hr@10"], (final, popularity)
    assert final["ndcg@10"] > 1.5 * popularity["ndcg@10"]


def test_resume_mid_epoch_is_exact(tmp_path):
    straight = Trainer(small_config(), tmp_path / "a")
    straight.fit()

    # Stop mid-epoch (the checkpoint lands on step 13 of an epoch of 19), then resume.
    interrupted = Trainer(small_config(max_steps=13, checkpoint_every=13), tmp_path / "b")
    interrupted.fit()
    assert interrupted.state.step == 13 and interrupted.sampler.position != 0
    config = TrainConfig.load(tmp_path / "b" / "config.json")
    config.max_steps = 0
    resumed = Trainer(config, tmp_path / "b", resume=True)
    resumed.fit()

    assert resumed.state.step == straight.state.step
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.state.history[-1]["hr@10"] == straight.state.history[-1]["hr@10"]


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    trainer = Trainer(small_config(epochs=3, keep_checkpoints=2), tmp_path / "run")
    trainer.fit()
    ckpts = tmp_path / "run" / "checkpoints"
    kept = sorted(p.name for p in ckpts.glob("step-*"))
    assert len(kept) == 2
    assert (ckpts / "latest").read_text().strip() == kept[-1]
    assert not list(ckpts.glob(".*.tmp"))
    state = json.loads((ckpts / kept[-1] / "trainer.json").read_text())
    assert state["step"] == trainer.state.step and state["epoch"] == 3


def test_presets_resolve():
    for name in PRESETS:
        config = preset_config(name)
        assert config.preset == name
    large = preset_config("ml-1m-hstu-large").model
    assert (large.num_blocks, large.num_heads, large.dim_qk, large.dim) == (8, 2, 25, 50)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("nope")


def test_cli_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    rc = cli_main(
        [
            "train",
            "--preset",
            "quickstart",
            "--data",
            SMALL_DATA,
            "--epochs",
            "1",
            "--max-len",
            "40",
            "--device",
            "cpu",
            "--run-dir",
            str(run),
            "--progress",
            "off",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "hr@10 (test)" in out and "popularity" in out
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["summary"]["final"]["hr@10"] <= 1.0

    rc = cli_main(
        ["eval", "--run-dir", str(run), "--device", "cpu", "--json", str(tmp_path / "m.json")]
    )
    assert rc == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["hr@10"] == pytest.approx(summary["summary"]["final"]["hr@10"])


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    trainer = Trainer(small_config(epochs=2), tmp_path / "run")
    trainer.fit()
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "latest").write_text("step-99999999\n")  # as if a crash hit between two writes
    (ckpts / "step-99999999").mkdir()  # and left an incomplete directory behind
    resumed = Trainer(TrainConfig.load(tmp_path / "run" / "config.json"), tmp_path / "run", True)
    assert resumed.state.step == trainer.state.step


def test_fp16_autocast_is_refused():
    with pytest.raises(ValueError, match="amp must be one of"):
        Trainer(small_config(amp="fp16"), Path("/nonexistent"))


def test_bad_sharded_embedding_options_are_refused(tmp_path):
    sharded = dict(embeddings="sharded", num_negatives=4)
    with pytest.raises(ValueError, match="embedding_stale needs embedding_prefetch"):
        Trainer(small_config(**sharded, embedding_stale=True), tmp_path / "a")
    with pytest.raises(ValueError, match="embedding_exchange must be 'nccl' or 'ce'"):
        Trainer(small_config(**sharded, embedding_exchange="shm"), tmp_path / "b")
    with pytest.raises(ValueError, match="micro_batches=1"):
        Trainer(small_config(**sharded, micro_batches=2), tmp_path / "c")


def test_gradient_accumulation_equals_one_batch(tmp_path):
    """Balanced micro-batches (loss normalized by the whole step's targets) give the update of
    the whole batch, to rounding; dropout off, since its masks follow the batch layout."""
    model = ModelConfig(
        kind="hstu", dim=32, num_blocks=2, num_heads=2, dim_qk=16, dim_v=16, max_len=60, dropout=0
    )
    whole = Trainer(small_config(model=model, max_steps=6, eval_every=-1), tmp_path / "a")
    whole.fit()
    micro = Trainer(
        small_config(model=model, max_steps=6, eval_every=-1, micro_batches=3), tmp_path / "b"
    )
    plan = micro.sampler.plan(np.arange(64))
    assert len(micro._host_batches(plan)) == 3
    micro.fit()
    for (name, a), (_, b) in zip(
        whole.model.named_parameters(), micro.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")
    untrained = Trainer(small_config(model=model, eval_every=-1), tmp_path / "c").model
    moved = [
        (a - b).abs().max().item()
        for a, b in zip(untrained.parameters(), micro.model.parameters(), strict=True)
    ]
    assert max(moved) > 1e-3  # six steps really changed the weights
