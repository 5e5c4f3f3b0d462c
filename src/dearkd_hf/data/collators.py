"""Batch collators: plain stacking, mixup/cutmix soft targets, and separate evaluation batches for a Trainer.

The core needs these (the trainer evaluates with a collator that never mixes); the data-loading side
(:mod:`dearkd_hf.data.loading`) only chooses which one the command-line flags ask for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

Collator = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed examples into a batch with integer class labels (images alone where there are none)."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
    return batch


class MixupCollator:
    """`collate_fn` followed by timm's Mixup/CutMix: labels become float soft targets of shape (B, num_classes).

    The soft targets are one probability distribution per example (rows sum to 1); train on them with soft-target
    cross-entropy, never as multi-label targets (transformers' default loss would pick BCE for float labels).
    Use it for training batches only: its `evaluation_collator` (`collate_fn`) is what evaluation batches go through,
    which :class:`~dearkd_hf.base_trainer.BaseTrainer` picks up by default. With both alphas 0 it only applies
    label smoothing.
    """

    evaluation_collator: Collator = staticmethod(collate_fn)

    def __init__(self, mixup: float, cutmix: float, num_classes: int, label_smoothing: float = 0.0):
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        mixing = mixup > 0 or cutmix > 0
        self.mixup_fn = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=1.0 if mixing else 0.0,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate_fn(examples)
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        even = len(labels) - len(labels) % 2  # timm mixes pairs; an odd last example stays unmixed
        mixed, soft = self.mixup_fn(pixel_values[:even], labels[:even])
        if even < len(labels):
            rest = mixup_target(labels[even:], self.num_classes, smoothing=self.label_smoothing)
            mixed, soft = torch.cat([mixed, pixel_values[even:]]), torch.cat([soft, rest])
        return {"pixel_values": mixed, "labels": soft}


def evaluation_collator_for(data_collator: Collator | None) -> Collator | None:
    """The collator of evaluation batches when none is given: a training-only collator's `evaluation_collator`
    (mixup must never touch evaluation data), else the training collator itself."""
    return getattr(data_collator, "evaluation_collator", data_collator)
