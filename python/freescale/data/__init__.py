"""Data layer: readers, synthetic data, leave-one-out splits, jagged batches, samplers."""

from freescale.data.batch import EvalBatch, JaggedBatch, make_eval_batch, make_train_batch
from freescale.data.readers import (
    FORMATS,
    REGISTERED_DATASETS,
    data_root,
    detect_format,
    load_dataset,
    read_interactions,
)
from freescale.data.sampler import EpochBatchSampler
from freescale.data.sequences import SequenceData, from_interactions
from freescale.data.split import LeaveOneOut, leave_one_out
from freescale.data.synthetic import SyntheticConfig, make_synthetic
from freescale.data.table import read_table

__all__ = [
    "FORMATS",
    "REGISTERED_DATASETS",
    "EpochBatchSampler",
    "EvalBatch",
    "JaggedBatch",
    "LeaveOneOut",
    "SequenceData",
    "SyntheticConfig",
    "data_root",
    "detect_format",
    "from_interactions",
    "leave_one_out",
    "load_dataset",
    "make_eval_batch",
    "make_synthetic",
    "make_train_batch",
    "read_interactions",
    "read_table",
]
