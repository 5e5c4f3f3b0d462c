"""Data-free DearKD: synthesise a labelled image dataset from a BatchNorm CNN teacher (DeepInversion + BPID)."""

from .config import InversionConfig
from .generator import DeepInversionGenerator, InversionBatch
from .writer import ShardWriter, inversion_features, mean_loss_terms, write_dataset

__all__ = [
    "DeepInversionGenerator",
    "InversionBatch",
    "InversionConfig",
    "ShardWriter",
    "inversion_features",
    "mean_loss_terms",
    "write_dataset",
]
