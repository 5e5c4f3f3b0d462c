"""One view of any supported ViT student: its geometry and its (class, distillation) logits.

Supported: transformers ``ViTForImageClassification``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher`` and the DearKD ViT. They differ only in whether a distillation head exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StudentGeometry:
    """What alignment and validation need to know about the student, read from its config."""

    num_blocks: int
    hidden_size: int
    grid: tuple[int, int]
    image_size: int
    num_channels: int
    num_labels: int
    id2label: dict[int, str]


@dataclass
class StudentOutput:
    """Class-token logits and distillation-token logits (None without a distillation head)."""

    logits: torch.Tensor
    cls_logits: torch.Tensor
    distillation_logits: torch.Tensor | None


def student_geometry(model: nn.Module) -> StudentGeometry:
    """Read the student's depth, width and patch grid from its config, failing clearly on a non-square grid."""
    config = getattr(model, "config", None)
    missing = [
        key
        for key in ("num_hidden_layers", "hidden_size", "image_size", "patch_size")
        if getattr(config, key, None) is None
    ]
    if missing:
        raise ValueError(
            f"model: the student's config lacks {missing}; DearKDTrainer needs a ViT-style student "
            "(ViT, DeiT or DearKD ViT from transformers/dearkd_hf)."
        )
    image_size, patch_size = square_side(config.image_size), square_side(config.patch_size)
    if image_size is None or patch_size is None or image_size % patch_size:
        raise ValueError(
            f"model: the student's tokens do not form a square patch grid (image_size={config.image_size}, "
            f"patch_size={config.patch_size}); use a square image_size that is a multiple of patch_size."
        )
    side = image_size // patch_size
    return StudentGeometry(
        num_blocks=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        grid=(side, side),
        image_size=image_size,
        num_channels=getattr(config, "num_channels", 3),
        num_labels=config.num_labels,
        id2label={int(k): v for k, v in config.id2label.items()},
    )


def student_outputs(outputs) -> StudentOutput:
    """Normalise a student's forward output; transformers ViT has only ``logits`` (the class head)."""
    cls_logits = getattr(outputs, "cls_logits", None)
    if cls_logits is None:
        cls_logits = outputs.logits
    return StudentOutput(
        logits=outputs.logits,
        cls_logits=cls_logits,
        distillation_logits=getattr(outputs, "distillation_logits", None),
    )


def square_side(value: int | list | tuple) -> int | None:
    """The side of a square size given as ``n``, ``(n, n)`` or ``[n, n]``; None when the size is not square.

    The DearKD ViT's modeling file holds a copy (self-contained for ``trust_remote_code``); tests check they agree.
    """
    if isinstance(value, int):
        return value
    return int(value[0]) if len(value) > 0 and len(set(value)) == 1 else None
