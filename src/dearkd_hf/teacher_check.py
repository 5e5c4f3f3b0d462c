"""The teacher check (METHOD.md section 2, *Teacher check*): before stage 1, the teacher's accuracy on a sample of the
training images as stage 1 feeds them (augmented views; from a teacher cache, its stored logits), against the
majority-class rate of the same sample.

A teacher that always answers the most common class scores the majority-class rate ``m``; scored on ``n`` images, a
teacher that knows nothing more lands within the sampling noise of ``m``. A teacher at or below the *floor*
``m + 2 sqrt(m (1 - m) / n)`` (two binomial standard errors above ``m``) has shown no knowledge of the labels beyond
that constant: its argmax, which hard distillation teaches, carries nothing about them. Such a teacher is *weak*:
the trainer says so in one warning and, by default (``weak_teacher="no_logit_kd"``), trains without logit
distillation (alpha 0 for the run); ``weak_teacher="warn"`` only warns. Above the floor a teacher can still be
worse than no teacher at all (the ViT on labels alone may do better); the check's accuracy is logged and written in
the model card so that a reader can see it.
"""

from __future__ import annotations

import math
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
    def floor(self) -> float:
        """The majority-class rate plus two standard errors of a binomial at that rate over ``num_images``: the most a
        teacher that knows no more than the most common class plausibly scores on this sample."""
        rate = self.majority_rate
        return rate + 2 * math.sqrt(rate * (1 - rate) / self.num_images)

    @property
    def weak(self) -> bool:
        """At or below the floor: no better than always answering the most common class, within sampling noise."""
        return self.accuracy <= self.floor

    def describe(self) -> str:
        return (
            f"the teacher's accuracy on {self.num_images} training images as stage 1 feeds them is "
            f"{self.accuracy:.1%} (majority-class rate {self.majority_rate:.1%}, weak at or below {self.floor:.1%})"
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
