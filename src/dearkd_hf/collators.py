"""Batch collators: plain stacking, mixup/cutmix soft targets, and separate evaluation batches for a Trainer.

The core needs these (the trainer evaluates with a collator that never mixes); the data-loading side
(:mod:`dearkd_hf.data`) only chooses which one the command-line flags ask for.
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
    which trainers built on :class:`EvaluationCollatorMixin` pick up by default. With both alphas 0 it only applies
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


class EvaluationCollatorMixin:
    """For a ``transformers.Trainer`` subclass: evaluation and prediction batches use ``self.eval_data_collator``.

    ``eval_data_collator = None`` means :func:`evaluation_collator_for` the training collator: ``collate_fn`` for a
    :class:`MixupCollator`, else the training collator itself (the Trainer's behaviour). The Trainer builds every
    dataloader from ``self.data_collator``, so evaluation and test dataloaders are built with the training collator
    set aside for that one call.
    """

    eval_data_collator: Collator | None = None

    def get_eval_dataloader(self, eval_dataset: Any = None):
        """The Trainer's evaluation dataloader, batched by ``eval_data_collator``."""
        return self._with_eval_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset: Any):
        """The Trainer's prediction dataloader, batched by ``eval_data_collator``."""
        return self._with_eval_collator(super().get_test_dataloader, test_dataset)

    def _with_eval_collator(self, build: Callable[[Any], Any], dataset: Any):
        collator = self.eval_data_collator or evaluation_collator_for(self.data_collator)
        if collator is self.data_collator:
            return build(dataset)
        train_collator, self.data_collator = self.data_collator, collator
        try:
            return build(dataset)
        finally:
            self.data_collator = train_collator
