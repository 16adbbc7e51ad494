"""`freescale train --embeddings sharded`: the item table row-wise over gloo ranks trains like the
same configuration on one process, prefetching the next step's rows changes nothing, and runs
resume from per-rank shard checkpoints exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from multiprocess import load_run_model, run_train
from test_distributed import TRAIN_ARGS

from freescale.checkpoint import load_checkpoint, resolve_checkpoint
from freescale.config import TrainConfig
from freescale.data import load_dataset
from freescale.models import SequentialRecommender
from freescale.runlog import read_log
from freescale_ext import cuda_compiled

# A catalog large enough that consecutive steps touch different rows (prefetching then moves
# most rows ahead of the update; with a 300-item catalog every row is touched every step).
DATA = "synthetic:num_users=600,num_items=20000,num_topics=6,mean_len=40,max_len=160,seed=9"
SHARDED = [
    *TRAIN_ARGS,
    f"--data={DATA}",
    "--negatives=4",
    "--embeddings=sharded",
    "--embedding-optimizer=adam",
    "--embedding-prefetch",  # off by default; these runs check it is exact
    "--max-steps=9",
]


def load_sharded_run(run_dir) -> dict[str, torch.Tensor]:
    """Dense weights (DCP) and the item table assembled from the per-rank shard files."""
    config = TrainConfig.load(run_dir / "config.json")
    model = SequentialRecommender(load_dataset(config.data).num_items, config.model)
    model.items = nn.Module()  # the table is not in the DCP checkpoint
    load_checkpoint(run_dir, model, restore_rng=False)
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = resolve_checkpoint(run_dir)
    shards = sorted(ckpt.glob("local-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    states = [torch.load(p, weights_only=True, map_location="cpu")["state"] for p in shards]
    for name in ("weight", "exp_avg", "exp_avg_sq"):
        out[f"items.{name}"] = torch.cat([s[f"items.table.{name}"] for s in states])
    out["items.steps"] = torch.tensor([s["items.table._extra_state"]["steps"] for s in states])
    return out


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_prefetch_changes_nothing(tmp_path):
    # Without the online cost fit, partitions (and so summation orders) do not follow timings.
    args = [*SHARDED, "--no-fit-cost"]
    run_train([*args, f"--run-dir={tmp_path / 'one'}"], 0, tmp_path)
    run_train([*args, f"--run-dir={tmp_path / 'two'}"], 2, tmp_path)
    run_train([*args, "--no-embedding-prefetch", f"--run-dir={tmp_path / 'sync'}"], 2, tmp_path)
    one, two = load_sharded_run(tmp_path / "one"), load_sharded_run(tmp_path / "two")
    sync = load_sharded_run(tmp_path / "sync")
    for key, value in two.items():  # prefetching is exact: bit for bit
        torch.testing.assert_close(sync[key], value, rtol=0, atol=0, msg=key)
    last = {
        name: [r for r in read_log(tmp_path / name / "metrics.jsonl") if r["kind"] == "train"][-1]
        for name in ("two", "sync")
    }
    assert last["two"]["prefetched_rows_early"] > 0 and last["two"]["prefetched_rows_late"] > 0
    assert last["two"]["updated_rows_in_step"] > 0 and last["two"]["updated_rows_deferred"] > 0
    assert last["sync"]["updated_rows_in_step"] == last["sync"]["updated_rows_deferred"] == 0
    assert last["sync"]["prefetched_rows_early"] == last["sync"]["prefetched_rows_late"] == 0
    for record in last.values():  # every exchange stage was timed (the prefetch one if used)
        assert record["embedding_fetch_ms"] > 0 and record["embedding_grads_ms"] > 0
        assert record["embedding_update_ms"] > 0
    assert last["two"]["embedding_prefetch_ms"] > 0 and last["sync"]["embedding_prefetch_ms"] == 0
    assert two.pop("items.steps").tolist() == [9, 9] and one.pop("items.steps").tolist() == [9]
    assert len(list(resolve_checkpoint(tmp_path / "two").glob("local-*.pt"))) == 2
    # A plain model (evaluation, export) reads the sharded checkpoint with the whole table.
    plain = load_run_model(tmp_path / "two")
    torch.testing.assert_close(plain["items.weight"], two["items.weight"], rtol=0, atol=0)
    for key, value in one.items():
        torch.testing.assert_close(
            two[key].to(value.dtype), value, rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}"
        )


@pytest.mark.slow
def test_copy_engine_exchange_trains_like_torch_distributed(tmp_path):
    """--embedding-exchange ce: on CPUs its runtime falls back to torch.distributed, so the run
    is bit for bit the default one (the split gathering and checks run all the same); with
    --embedding-stale it is semi-synchronous."""
    args = [*SHARDED, "--no-fit-cost", "--max-steps=4"]
    run_train([*args, f"--run-dir={tmp_path / 'nccl'}"], 2, tmp_path)
    ce = run_train([*args, "--embedding-exchange=ce", f"--run-dir={tmp_path / 'ce'}"], 2, tmp_path)
    # (A CPU-only build has no copy-engine runtime to decline for the backend.)
    reason = "the process group's backend is gloo" if cuda_compiled() else "freescale_ext was built"
    assert f"embedding exchange: torch.distributed fallback ({reason}" in ce.stdout
    want, got = load_sharded_run(tmp_path / "nccl"), load_sharded_run(tmp_path / "ce")
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    # Semi-synchronous (--embedding-stale): every prefetched row skips the step's update, and
    # training differs from the exact run, a little.
    stale_args = [*args, "--embedding-exchange=ce", "--embedding-stale"]
    run_train([*stale_args, f"--run-dir={tmp_path / 'stale'}"], 2, tmp_path)
    run_train([*stale_args, f"--run-dir={tmp_path / 'stale1'}"], 0, tmp_path)
    stale, stale_one = load_sharded_run(tmp_path / "stale"), load_sharded_run(tmp_path / "stale1")
    assert not torch.equal(stale["items.weight"], want["items.weight"])
    # Two ranks train like one process, semi-synchronously as well.
    torch.testing.assert_close(
        stale["items.weight"], stale_one["items.weight"], rtol=1e-4, atol=2e-5
    )
    log = [r for r in read_log(tmp_path / "stale" / "metrics.jsonl") if r["kind"] == "train"]
    assert log[-1]["prefetched_rows_early"] > 0 and log[-1]["prefetched_rows_late"] == 0


@pytest.mark.slow
def test_two_rank_resume_is_exact(tmp_path):
    common = [*SHARDED, "--no-fit-cost", "--checkpoint-every=5"]
    run_train([*common, f"--run-dir={tmp_path / 'straight'}"], 2, tmp_path)
    run_train([*common, "--max-steps=5", f"--run-dir={tmp_path / 'cut'}"], 2, tmp_path)
    run_train(["--resume", str(tmp_path / "cut"), "--max-steps=9"], 2, tmp_path)
    straight, resumed = load_sharded_run(tmp_path / "straight"), load_sharded_run(tmp_path / "cut")
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(AssertionError, match="resharding is not supported"):
        run_train(["--resume", str(tmp_path / "cut"), "--max-steps=10"], 0, tmp_path)


@pytest.mark.multi_gpu
@pytest.mark.parametrize("world", [2, 4])
def test_sharded_on_gpus_equals_one_gpu_and_prefetch_is_exact(tmp_path, world):
    """The same agreements on GPUs: NCCL all-to-alls, the fused sparse Adam kernel, fp32 (no
    autocast, no TF32)."""
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs, found {torch.cuda.device_count()}")
    args = [a for a in SHARDED if not a.startswith("--device")]
    args += ["--device=cuda", "--amp=none", "--no-tf32", "--no-fit-cost"]
    run_train([*args, f"--run-dir={tmp_path / 'one'}"], 0, tmp_path)
    run_train([*args, f"--run-dir={tmp_path / 'many'}"], world, tmp_path)
    run_train([*args, "--no-embedding-prefetch", f"--run-dir={tmp_path / 'sync'}"], world, tmp_path)
    ce = [*args, "--embedding-exchange=ce", f"--run-dir={tmp_path / 'ce'}"]
    assert "embedding exchange: copy engines" in run_train(ce, world, tmp_path).stdout
    one, many = load_sharded_run(tmp_path / "one"), load_sharded_run(tmp_path / "many")
    sync = load_sharded_run(tmp_path / "sync")
    copy_engines = load_sharded_run(tmp_path / "ce")
    for key, value in many.items():  # the same exchange by other means: to rounding
        torch.testing.assert_close(
            copy_engines[key], value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}"
        )
    # On GPUs, CUDA's index_add_ (gradient coalescing, the gather's backward) sums with atomics
    # in no fixed order, so two runs agree to rounding, not bit for bit (bitwise on CPUs above).
    for key, value in many.items():
        torch.testing.assert_close(
            sync[key].to(value.dtype), value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}"
        )
    assert many.pop("items.steps").tolist() == [9] * world
    one.pop("items.steps")
    for key, value in one.items():
        torch.testing.assert_close(
            many[key].to(value.dtype), value, rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}"
        )
