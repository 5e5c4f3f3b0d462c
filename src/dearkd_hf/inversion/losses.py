"""The terms of the inversion loss: DeepInversion's priors and competition term, and our BPID loss (METHOD.md §5).

Formulas follow DeepInversion's public code where METHOD.md defers to it (L2 norms, not squared norms, for the
BatchNorm, total-variation and image terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def batchnorm_statistics_loss(
    inputs: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
) -> torch.Tensor:
    """``||mu(x) - mu||_2 + ||var(x) - var||_2`` for one BatchNorm2d input ``(B, C, H, W)`` (biased variance)."""
    mean = inputs.mean(dim=(0, 2, 3))
    var = inputs.var(dim=(0, 2, 3), correction=0)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


class BatchNormStatistics:
    """Forward hooks on every BatchNorm2d of a module that record how far each input's statistics are from the
    layer's running statistics; use as a context manager around the forwards to be scored.
    """

    def __init__(self, module: nn.Module, name: str = "teacher") -> None:
        self.layers = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
        if not self.layers:
            raise ValueError(
                f"The {name} cannot be inverted: no BatchNorm2d layers (with running statistics) were found, and "
                "DeepInversion needs their statistics as the image prior."
            )
        self._losses: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> BatchNormStatistics:
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._losses = {}

    def _hook(self, index: int):
        def record(layer: nn.BatchNorm2d, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            self._losses[index] = batchnorm_statistics_loss(args[0], layer.running_mean, layer.running_var)

        return record

    def loss(self, first_bn_multiplier: float) -> torch.Tensor:
        """``sum_l w_l * loss_l`` over the layers the last forward reached; ``w`` is the multiplier for the first."""
        if not self._losses:
            raise RuntimeError("No BatchNorm2d statistics recorded: run the forward inside `with statistics:`.")
        return sum(loss * (first_bn_multiplier if i == 0 else 1.0) for i, loss in self._losses.items())


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's L2 total variation: norms of the horizontal, vertical and both diagonal differences."""
    diffs = (
        images[..., :, :-1] - images[..., :, 1:],
        images[..., :-1, :] - images[..., 1:, :],
        images[..., 1:, :-1] - images[..., :-1, 1:],
        images[..., :-1, :-1] - images[..., 1:, 1:],
    )
    return sum(torch.linalg.vector_norm(diff) for diff in diffs)


def l2_prior(images: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(images)


def competition_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 3.0
) -> torch.Tensor:
    """Adaptive DeepInversion's ``1 - JS(student, teacher)``: small when the two disagree, so minimising it makes
    images on which the student has not caught up yet. Clamping and temperature as in DeepInversion's code.
    """
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)


def _centred_features(features: torch.Tensor) -> torch.Tensor:
    """BPID's ``z``: the L2-normalised *batch-centred* features ``f_i - mean_k f_k`` (flattened per image)."""
    flat = features.flatten(1)
    return F.normalize(flat - flat.mean(dim=0, keepdim=True), dim=1)


def _same_class_pairs(labels: torch.Tensor) -> torch.Tensor:
    """BPID's ``P``: a boolean ``(B, B)`` mask of the pairs ``i != j`` with ``y_i = y_j``."""
    pairs = labels[:, None] == labels[None, :]
    pairs.fill_diagonal_(False)
    return pairs


def bpid_intra(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_{i != j, y_i = y_j} z_i . z_j`` with ``z_i`` the L2-normalised *batch-centred* features
    ``f_i - mean_k f_k``; 0 when no class repeats (METHOD.md section 5).

    Centring removes what every image's features share: post-ReLU features are non-negative, so the cosine of two
    raw feature vectors is high whatever the images are, and lowering it means making their activation patterns
    disjoint, which fights the BatchNorm prior. Centred, a same-class pair scores high only when the two images are
    alike relative to the rest of the batch.
    """
    z = _centred_features(features)
    same_class = _same_class_pairs(labels)
    if not same_class.any():
        return z.new_zeros(())
    return (z @ z.T)[same_class].mean()


def _class_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``l_i[y_i] - max_{c != y_i} l_i[c]`` per image: how far inside its class (negative: outside)."""
    target = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return target - others.amax(dim=1)


def bpid_boundary(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean_i relu(m - (l_i[y_i] - max_{c != y_i} l_i[c]))``: keeps each image at least ``m`` inside its class."""
    return F.relu(margin - _class_margin(logits, labels)).mean()
