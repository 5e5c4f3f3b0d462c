"""Data-free DearKD: synthesise a labelled image dataset from a BatchNorm CNN teacher (METHOD.md section 5):
DeepInversion or the amortised ``fast`` generator, each with the BPID loss."""

from __future__ import annotations

import torch
from torch import nn

from ..models.teachers import Teacher
from .config import METHODS, InversionConfig
from .deepinversion import DeepInversionGenerator, InversionBatch
from .fast import FastInversionGenerator, ImageGenerator
from .writer import (
    GENERATION_CONFIG_FILE,
    ShardWriter,
    inversion_features,
    mean_loss_terms,
    read_rounds,
    write_dataset,
)


def create_generator(
    teacher: str | nn.Module | Teacher,
    config: InversionConfig | None = None,
    student: str | nn.Module | Teacher | None = None,
    device: torch.device | str | None = None,
) -> DeepInversionGenerator:
    """The generator of ``config.method``: :class:`DeepInversionGenerator` or :class:`FastInversionGenerator`."""
    config = config or InversionConfig()
    cls = FastInversionGenerator if config.method == "fast" else DeepInversionGenerator
    return cls(teacher, config, student=student, device=device)


__all__ = [
    "GENERATION_CONFIG_FILE",
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
    "read_rounds",
    "write_dataset",
]
