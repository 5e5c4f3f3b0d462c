"""The teacher check (METHOD.md section 2, *Teacher check*): before stage 1, the teacher's accuracy on a sample of the
training images as stage 1 feeds them (augmented views; from a teacher cache, its stored logits), against the
majority-class rate of the same sample.

A teacher below the majority-class rate predicts the labels worse than always answering the most common class: its
argmax, which hard distillation teaches, carries less about the labels than a constant does. Such a teacher is
*weak*: the trainer says so in one warning and, by default (``weak_teacher="no_logit_kd"``), trains without logit
distillation (alpha 0 for the run); ``weak_teacher="warn"`` only warns. Above that floor a teacher can still be
worse than no teacher at all (the ViT on labels alone may do better); the check's accuracy is logged and written in
the model card so that a reader can see it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

WEAK_TEACHER_ACTIONS = ("no_logit_kd", "warn")


@dataclass(frozen=True)
class TeacherCheck:
    """The teacher's accuracy on ``num_images`` training images and the majority-class rate of their labels."""

    accuracy: float
    majority_rate: float
    num_images: int

    @property
    def weak(self) -> bool:
        """Below the majority-class rate: worse than always answering the most common class."""
        return self.accuracy < self.majority_rate

    def describe(self) -> str:
        return (
            f"the teacher's accuracy on {self.num_images} training images as stage 1 feeds them is "
            f"{self.accuracy:.1%} (majority-class rate {self.majority_rate:.1%})"
        )


def teacher_check(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> TeacherCheck:
    """Score ``(teacher logits, integer labels)`` batches: the share whose argmax is the label, and the share of the
    most common label."""
    correct, labels = 0, []
    for logits, batch_labels in batches:
        correct += int((logits.argmax(dim=-1).cpu() == batch_labels.cpu()).sum())
        labels.append(batch_labels.cpu())
    if not labels:
        raise ValueError("teacher_check_samples: no training images to score the teacher on.")
    every = torch.cat(labels)
    majority = int(torch.bincount(every).max())
    return TeacherCheck(accuracy=correct / len(every), majority_rate=majority / len(every), num_images=len(every))


def sample_indices(num_items: int, num_samples: int, seed: int) -> list[int]:
    """``num_samples`` distinct indices of ``num_items`` (all of them when there are fewer), drawn from ``seed`` by a
    generator of their own: the training's random state is not touched."""
    order = np.random.default_rng(seed).permutation(num_items)
    return sorted(int(i) for i in order[: min(num_samples, num_items)])
