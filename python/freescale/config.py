"""Training configuration and the named presets (the published ML-1M configs among them)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from freescale.models import ModelConfig


@dataclass
class TrainConfig:
    data: str = (
        "synthetic"  # a path, PATH:FORMAT, a dataset name (ml-1m, ...) or synthetic[:k=v,...]
    )
    protocol: str = "published"  # leave-one-out protocol, see freescale.data.leave_one_out
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    max_steps: int = 0  # stop after this many optimizer steps in total (0: no limit)
    batch_size: int = 128  # global: split over the ranks of a torchrun job
    eval_batch_size: int = 512
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    num_negatives: int = 128
    temperature: float = 0.05
    in_batch_negatives: bool = False
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU) | bf16 | none
    tf32: bool = True  # TF32 tensor cores for fp32 matmuls on GPU
    eval_every: int = 1  # epochs between evaluations (0: only at the end, -1: never)
    log_every: int = 50  # steps between train-loss log records
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: end of each epoch only)
    keep_checkpoints: int = 2
    run_dir: str = ""  # default: runs/<preset or model>-<timestamp>
    progress: str = "auto"  # auto (when stderr is a terminal) | on | off
    preset: str = ""
    # Data parallelism (torchrun): balanced sampling (DESIGN §8)
    balance: bool = True  # capacity-LPT partition of each global batch (else contiguous slices)
    cost: tuple[float, ...] = ()  # (a, b, c0) of a*L^2 + b*L + c0; empty: from the model's FLOPs
    fit_cost: bool = True  # refit (a, b, c0) online from measured per-rank step times
    cost_tile: int = 32  # the attention kernels' tile: L^2 counted in whole causal tiles
    micro_batches: int = 1  # gradient accumulation: balanced micro-batches per rank and step
    # Embeddings (DESIGN §7): "dense" (a replicated nn.Parameter under AdamW) or "sharded" (the
    # item table row-wise over the ranks, all-to-all lookups, a sparse optimizer on the owners)
    embeddings: str = "dense"
    embedding_optimizer: str = "adam"  # sharded only: adam (lazy, SparseAdam's) | rowwise_adagrad
    embedding_lr: float = 0.0  # sharded only; 0: lr
    # sharded only: fetch the next step's rows during this one. Off by default: on 4 GPUs it
    # still made steps slower in every measured run (docs/benchmarks.md).
    embedding_prefetch: bool = False
    # sharded, with embedding_prefetch: semi-synchronous, not exact: the prefetched rows skip
    # this step's sparse update (one step stale), which then runs beside the next backward
    embedding_stale: bool = False
    # sharded only: "nccl" (torch.distributed all-to-all) or "ce" (copy engines and stream
    # memory operations inside a host, freescale_ext.comm; torch.distributed where it cannot)
    embedding_exchange: str = "nccl"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["cost"] = list(self.cost)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        raw = dict(raw)
        model = ModelConfig(**raw.pop("model", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        for name in ("betas", "cost"):
            if name in raw:
                raw[name] = tuple(raw[name])
        return cls(model=model, **raw)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(path.read_text()))


# The ML-1M presets follow the HSTU repo's frozen configs (configs/ml-1m/*.gin): dim 50, 200
# items of history, batch 128, 128 uniform negatives, temperature 0.05, AdamW lr 1e-3,
# betas (0.9, 0.98), no weight decay, dropout 0.2, 101 epochs.
_ML1M = dict(data="ml-1m", epochs=101, batch_size=128, num_negatives=128, temperature=0.05, lr=1e-3)

PRESETS: dict[str, tuple[str, dict]] = {
    "quickstart": (
        "HSTU on the synthetic default data; a minute on a laptop CPU",
        dict(
            data="synthetic",
            epochs=4,
            batch_size=128,
            num_negatives=64,
            model=dict(
                kind="hstu",
                dim=64,
                num_blocks=2,
                num_heads=2,
                dim_qk=32,
                dim_v=32,
                max_len=100,
                dropout=0.1,
            ),
        ),
    ),
    "ml-1m-sasrec": (
        "SASRec on ML-1M, the published sampled-softmax baseline (HR@10 0.2853)",
        dict(
            _ML1M,
            model=dict(
                kind="sasrec",
                dim=50,
                num_blocks=2,
                num_heads=1,
                ffn_hidden=50,
                max_len=200,
                dropout=0.2,
            ),
        ),
    ),
    "ml-1m-hstu": (
        "HSTU on ML-1M, 2 blocks x 1 head (published HR@10 0.3097)",
        dict(
            _ML1M,
            model=dict(
                kind="hstu",
                dim=50,
                num_blocks=2,
                num_heads=1,
                dim_qk=50,
                dim_v=50,
                max_len=200,
                dropout=0.2,
            ),
        ),
    ),
    "ml-1m-hstu-large": (
        "HSTU-large on ML-1M, 8 blocks x 2 heads (published HR@10 0.3294)",
        dict(
            _ML1M,
            model=dict(
                kind="hstu",
                dim=50,
                num_blocks=8,
                num_heads=2,
                dim_qk=25,
                dim_v=25,
                max_len=200,
                dropout=0.2,
            ),
        ),
    ),
}


# PerSRec (DESIGN §5): the last 50 items stay, the older history is compressed into one group of
# 8 learnable tokens. The comparisons the issue asks for: the same model on the whole history
# ("ml-1m-hstu-large", "beauty-hstu-full") and on only the last 50 items ("-last50").
_HSTU_LARGE = dict(
    kind="hstu", dim=50, num_blocks=8, num_heads=2, dim_qk=25, dim_v=25, max_len=200, dropout=0.2
)
_PERSREC = dict(persrec_tokens=8, persrec_segment=0, persrec_recent=50)
# Beauty histories are short (mean 8.9 items, 0.6% of users above 51), so with 50 recent items
# PerSRec compresses little there; the presets follow the R = 50 all the same.
_BEAUTY = dict(
    data="amazon-beauty", epochs=100, batch_size=128, num_negatives=128, temperature=0.05, lr=1e-3
)
_BEAUTY_MODEL = dict(
    kind="hstu", dim=64, num_blocks=4, num_heads=2, dim_qk=32, dim_v=32, max_len=200, dropout=0.5
)
PRESETS.update(
    {
        "ml-1m-hstu-persrec": (
            "HSTU-large on ML-1M, history before the last 50 items compressed into 8 tokens",
            dict(_ML1M, model=dict(_HSTU_LARGE, **_PERSREC)),
        ),
        "ml-1m-hstu-last50": (
            "HSTU-large on ML-1M, only the last 50 items (the PerSRec lower comparison)",
            dict(_ML1M, model=dict(_HSTU_LARGE, max_len=50)),
        ),
        "beauty-hstu-full": (
            "HSTU on Amazon Beauty, whole history (the PerSRec comparison)",
            dict(_BEAUTY, model=dict(_BEAUTY_MODEL)),
        ),
        "beauty-hstu-last50": (
            "HSTU on Amazon Beauty, only the last 50 items (the PerSRec lower comparison)",
            dict(_BEAUTY, model=dict(_BEAUTY_MODEL, max_len=50)),
        ),
        "beauty-hstu-persrec": (
            "HSTU on Amazon Beauty, history before the last 50 items compressed into 8 tokens",
            dict(_BEAUTY, model=dict(_BEAUTY_MODEL, **_PERSREC)),
        ),
    }
)


def preset_config(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    raw = dict(PRESETS[name][1])
    raw["preset"] = name
    return TrainConfig.from_dict(raw)
