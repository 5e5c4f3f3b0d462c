"""Data-free DearKD: synthesise a labelled image dataset from a BatchNorm CNN teacher (METHOD.md section 5):
DeepInversion or the amortised ``fast`` generator, each with the BPID loss."""

from .config import METHODS, InversionConfig
from .fast import FastInversionGenerator, ImageGenerator, create_generator
from .generator import DeepInversionGenerator, InversionBatch
from .writer import ShardWriter, inversion_features, mean_loss_terms, write_dataset

__all__ = [
    "METHODS",
    "DeepInversionGenerator",
    "FastInversionGenerator",
    "ImageGenerator",
    "InversionBatch",
    "InversionConfig",
    "ShardWriter",
    "create_generator",
    "inversion_features",
    "mean_loss_terms",
    "write_dataset",
]
