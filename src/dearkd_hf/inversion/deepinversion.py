"""DeepInversionGenerator: optimise random pixels until a frozen teacher sees its classes in them (METHOD.md §5)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import to_pil_image

from ..models.teachers import Teacher, load_classifier, load_teacher
from .config import InversionConfig
from .losses import BatchNormStatistics, bpid_boundary, bpid_intra, competition_loss, l2_prior, total_variation

StepCallback = Callable[[int, float], None]


def derived_seed(*entropy: int) -> int:
    """A 64-bit seed that depends only on the integers ``entropy`` (distinct tuples give unrelated seeds)."""
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


@dataclass
class InversionBatch:
    """Synthesised images with their target labels and the loss terms of the last optimisation step.

    ``loss_terms`` holds the unweighted terms (``ce``, ``bn``, ``tv``, ``l2``, and ``adi``, ``bpid_intra``,
    ``bpid_bound`` when enabled) and the weighted ``total``.
    """

    images: list[PIL.Image.Image]
    pixels: torch.Tensor  # (B, C, H, W) in [0, 1], on the CPU
    labels: list[int]
    loss_terms: dict[str, float]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> InversionBatch:
        return dataclasses.replace(self, images=self.images[:n], pixels=self.pixels[:n], labels=self.labels[:n])


class DeepInversionGenerator:
    """DeepInversion + BPID on a teacher (anything :func:`load_teacher` accepts), optionally against a student.

    The teacher and student are frozen and put in eval mode. The student, if given, must read images in the
    normalisation its ``Teacher`` wrapper states (a bare module: ImageNet's); only used when ``adi_scale > 0``.
    ``config.method`` must be this class's ``method`` (:func:`create_generator` picks the class by method).
    """

    method = "deepinversion"

    def __init__(
        self,
        teacher: str | nn.Module | Teacher,
        config: InversionConfig | None = None,
        student: str | nn.Module | Teacher | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        config = config or InversionConfig(method=self.method)
        if config.method != self.method:
            raise ValueError(
                f"{type(self).__name__} runs InversionConfig(method={self.method!r}), got method={config.method!r}; "
                "use create_generator(teacher, config), which picks the generator of config.method."
            )
        self.teacher = load_teacher(teacher)
        self.config = config.resolved(self.teacher.input_size)
        self.bn_statistics = BatchNormStatistics(self.teacher.module, name=f"teacher {self.teacher.source!r}")
        self.student = self._check_student(student)
        if self.config.bpid_weight > 0 and self.teacher.classifier_name is None:
            raise ValueError(
                f"bpid_weight > 0 needs the pooled pre-logit features of teacher {self.teacher.source!r}, but its "
                "classifier module is unknown; set bpid_weight=0 or give a teacher with a classifier."
            )
        if device is not None:
            self.teacher.to(device)
            if self.student is not None:
                self.student.to(device)
        self.device = next(self.teacher.module.parameters()).device

    def _check_student(self, student: str | nn.Module | Teacher | None) -> Teacher | None:
        """The student of the competition term: any classifier of the teacher's labels (a CNN, or the ViT student
        being distilled), present exactly when ``adi_scale > 0``."""
        if self.config.adi_scale == 0:
            if student is not None:
                raise ValueError(
                    "A student was given but adi_scale=0, so it would be ignored: set adi_scale > 0 (generate.py: "
                    "--adi_scale) to reward images on which it disagrees with the teacher, or leave the student out."
                )
            return None
        if student is None:
            raise ValueError(
                "adi_scale > 0 needs a student to compete with (generate.py: --student_model_name_or_path); pass one "
                "or set adi_scale=0."
            )
        student = load_classifier(student, "student_model_name_or_path")
        if student.num_labels != self.teacher.num_labels:
            raise ValueError(
                f"The student predicts {student.num_labels} labels but the teacher {self.teacher.source!r} has "
                f"{self.teacher.num_labels}: the competition term (adi_scale > 0) compares their class "
                "distributions, so both must share one label space."
            )
        if student.num_channels != self.teacher.num_channels:
            raise ValueError(
                f"The student reads {student.num_channels}-channel images but the teacher {self.teacher.source!r} "
                f"{self.teacher.num_channels}-channel ones: give a student trained on the teacher's images."
            )
        return student

    def student_identity(self) -> dict[str, Any]:
        """What the competition term depends on besides the configuration: the student (its source, and its weights,
        which a path is not: a student retrained in place keeps its path) and ``adi_scale``."""
        return {
            "student": self.student.source if self.student is not None else None,
            "student_weights_sha256": self.student.weights_sha256() if self.student is not None else None,
            "adi_scale": self.config.adi_scale,
        }

    @property
    def num_channels(self) -> int:
        return self.teacher.num_channels

    def batch_labels(self, index: int) -> list[int]:
        """Labels of global batch ``index``: ``k = min(num_labels, batch_size // 2)`` consecutive classes (starting
        where batch ``index - 1`` stopped), cycled through the batch so each appears at least twice.
        """
        num_labels, size = self.teacher.num_labels, self.config.batch_size
        per_batch = min(num_labels, size // 2)
        first = index * per_batch
        return [(first + i % per_batch) % num_labels for i in range(size)]

    def batch_seed(self, index: int) -> int:
        """A seed that depends on (config.seed, index) only, so a batch is reproducible and distinct from others."""
        return derived_seed(self.config.seed, index)

    @property
    def steps_per_batch(self) -> int:
        """Optimisation steps per batch (each one calls ``generate_batch``'s callback)."""
        return self.config.iterations

    def preparation_steps(self, folder: str | None = None) -> int:
        """Steps :meth:`prepare` will take before the first batch (reported as progress); DeepInversion has none."""
        return 0

    def prepare(self, folder: str | None = None, callback: StepCallback | None = None) -> None:
        """Set up what every batch shares, kept in a run's shard ``folder`` if given (``callback(step, loss)`` after
        each step it takes); DeepInversion has nothing."""

    def batches(self, num_images: int, start: int = 0) -> Iterator[InversionBatch]:
        """Exactly ``num_images`` images, batch by batch, from global batch ``start`` on (the last one cut)."""
        if num_images <= 0:
            raise ValueError(f"num_images={num_images} must be > 0.")
        size = self.config.batch_size
        for index in range(start, start + math.ceil(num_images / size)):
            batch = self.generate_batch(self.batch_labels(index), seed=self.batch_seed(index))
            yield batch.head(num_images - (index - start) * size)

    def generate_batch(
        self, labels: Sequence[int] | torch.Tensor, seed: int | None = None, callback: StepCallback | None = None
    ) -> InversionBatch:
        """Optimise one batch of images for ``labels``; ``callback(step, total_loss)`` is called after each step."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        self._check_labels(labels)
        rng = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        side = self.config.resolution
        pixels = torch.randn((len(labels), self.num_channels, side, side), generator=rng).to(self.device)
        pixels.requires_grad_(True)
        low, high = self._pixel_range()
        step = 0
        with self.bn_statistics:
            for downsample, steps in self._stages():
                optimizer = torch.optim.Adam([pixels], lr=self.config.lr, betas=tuple(self.config.betas))
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                for _ in range(steps):
                    terms = self._loss_terms(self._augment(pixels, downsample, rng), labels)
                    optimizer.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    optimizer.step()
                    schedule.step()
                    with torch.no_grad():
                        pixels.clamp_(low, high)
                    if callback is not None:
                        callback(step, terms["total"].item())
                    step += 1
        return self._to_batch(pixels.detach(), labels, {name: value.item() for name, value in terms.items()})

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {tuple(labels.shape)}.")
        if labels.min() < 0 or labels.max() >= self.teacher.num_labels:
            raise ValueError(f"labels must lie in [0, {self.teacher.num_labels}), got {labels.tolist()}.")
        if self.config.bpid_weight > 0 and len(labels.unique()) == len(labels):
            raise ValueError(
                "BPID (bpid_weight > 0) needs at least one class twice in the batch; use batch_labels(index)."
            )

    def _stages(self) -> list[tuple[int, int]]:
        """(downsampling factor, steps) pairs: 2/3 at half resolution first when warm-starting, as DeepInversion."""
        iterations = self.config.iterations
        if not self.config.warm_start_half_resolution:
            return [(1, iterations)]
        low = 2 * iterations // 3
        return [stage for stage in ((2, low), (1, iterations - low)) if stage[1] > 0]

    def _augment(self, pixels: torch.Tensor, downsample: int, rng: torch.Generator) -> torch.Tensor:
        if downsample > 1:
            pixels = F.avg_pool2d(pixels, downsample)
        limit = self.config.jitter // downsample
        if limit > 0:
            shifts = torch.randint(-limit, limit + 1, (2,), generator=rng).tolist()
            pixels = torch.roll(pixels, shifts=shifts, dims=(2, 3))
        if self.config.flip and torch.rand((), generator=rng) < 0.5:
            pixels = torch.flip(pixels, dims=(3,))
        return pixels

    def _loss_terms(
        self, pixels: torch.Tensor, labels: torch.Tensor, with_student: bool = True
    ) -> dict[str, torch.Tensor]:
        """The loss terms of ``pixels`` (teacher-normalised) for ``labels``; the competition term only when there is
        a student and ``with_student``."""
        config = self.config
        output = self.teacher.forward_with_features(pixels)
        terms = {
            "ce": F.cross_entropy(output.logits, labels),
            "bn": self.bn_statistics.loss(config.first_bn_multiplier),
            "tv": total_variation(pixels),
            "l2": l2_prior(pixels),
        }
        total = terms["ce"] + config.r_bn * terms["bn"] + config.tv * terms["tv"] + config.l2 * terms["l2"]
        if self.student is not None and with_student:
            student_pixels = self.student.normalize_from(pixels, self.teacher.mean, self.teacher.std)
            student_logits = self.student.logits(student_pixels)
            terms["adi"] = competition_loss(student_logits, output.logits)
            total = total + config.adi_scale * terms["adi"]
        if config.bpid_weight > 0:
            terms["bpid_intra"] = bpid_intra(output.pre_logits, labels)
            terms["bpid_bound"] = bpid_boundary(output.logits, labels, config.bpid_margin)
            total = total + config.bpid_weight * (terms["bpid_intra"] + terms["bpid_bound"])
        terms["total"] = total
        return terms

    def _pixel_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel bounds, in the teacher's normalisation, of pixels in [0, 1]."""
        mean, std = self._statistics()
        return (0 - mean) / std, (1 - mean) / std

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.teacher.mean, device=self.device).view(shape)
        return mean, torch.tensor(self.teacher.std, device=self.device).view(shape)

    def _to_batch(self, pixels: torch.Tensor, labels: torch.Tensor, loss_terms: dict[str, float]) -> InversionBatch:
        mean, std = self._statistics()
        pixels = (pixels * std + mean).clamp(0, 1).cpu()
        images = [to_pil_image(image) for image in (pixels * 255).round().to(torch.uint8)]
        return InversionBatch(images=images, pixels=pixels, labels=labels.tolist(), loss_terms=loss_terms)
