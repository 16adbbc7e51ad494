"""Sequential recommenders: HSTU (research and STU variants) and SASRec."""

from freescale.models.loss import SampledSoftmaxLoss
from freescale.models.recommender import ModelConfig, SequentialRecommender

__all__ = ["ModelConfig", "SampledSoftmaxLoss", "SequentialRecommender"]
