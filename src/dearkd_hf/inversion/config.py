"""InversionConfig: every knob of DeepInversion + BPID image synthesis, with DeepInversion's published defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..checks import require_finite

_NON_NEGATIVE = ("r_bn", "first_bn_multiplier", "tv", "l2", "adi_scale", "bpid_weight", "bpid_margin", "seed")


@dataclass
class InversionConfig:
    """How to synthesise a batch of images from a frozen BatchNorm teacher (METHOD.md section 5).

    The field names double as the command-line flags of ``examples/generate.py`` (via ``HfArgumentParser``).
    """

    iterations: int = field(
        default=2000, metadata={"help": "Optimisation steps per batch (DeepInversion: 2k at 224 pixels)."}
    )
    lr: float = field(default=0.25, metadata={"help": "Adam learning rate on the pixels; cosine-annealed to 0."})
    betas: list[float] = field(
        default_factory=lambda: [0.5, 0.9],
        metadata={"help": "Adam betas (two floats). A list rather than a tuple so that argparse can read it."},
    )
    batch_size: int = field(
        default=64,
        metadata={
            "help": "Images optimised together (>= 2). Each batch holds min(num_labels, batch_size // 2) classes, "
            "each at least twice, so BPID always has same-class pairs; consecutive batches rotate through the "
            "classes, so with batch_size >= 2 * num_labels every class is in every batch."
        },
    )
    resolution: int | None = field(
        default=None, metadata={"help": "Image side in pixels; default: the teacher's input size, else 224."}
    )
    jitter: int | None = field(
        default=None,
        metadata={"help": "Maximum random roll (torch.roll) in pixels applied each step; default resolution // 8."},
    )
    flip: bool = field(default=True, metadata={"help": "Random horizontal flip each step."})
    warm_start_half_resolution: bool = field(
        default=False,
        metadata={
            "help": "DeepInversion's multi-resolution setting: the first 2/3 of the iterations see the images "
            "average-pooled to half resolution (with a fresh optimizer and schedule for the last 1/3)."
        },
    )
    r_bn: float = field(default=0.01, metadata={"help": "Weight of the BatchNorm statistics loss."})
    first_bn_multiplier: float = field(
        default=10.0, metadata={"help": "Extra weight of the first BatchNorm layer's term (the others weigh 1)."}
    )
    tv: float = field(default=1e-4, metadata={"help": "Weight of the total-variation (L2) image prior."})
    l2: float = field(default=1e-5, metadata={"help": "Weight of the L2 norm of the images."})
    adi_scale: float = field(
        default=0.0,
        metadata={
            "help": "Weight of Adaptive DeepInversion's competition term 1 - JS(teacher, student); needs a student."
        },
    )
    bpid_weight: float = field(
        default=1.0, metadata={"help": "Weight of the boundary-preserving intra-divergence loss (ours); 0 disables."}
    )
    bpid_margin: float = field(
        default=1.0, metadata={"help": "Logit margin m that BPID's boundary term keeps inside the target class."}
    )
    seed: int = field(
        default=0, metadata={"help": "Base seed; batch k uses a seed derived from (seed, k), so batches are distinct."}
    )

    def __post_init__(self) -> None:
        self.betas = [float(beta) for beta in self.betas]
        require_finite(self, prefix="InversionConfig.")
        _require(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")
        _require(self.lr > 0, "lr", self.lr, "must be > 0")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas, "must be two in [0, 1)"
        )
        _require(self.batch_size >= 2, "batch_size", self.batch_size, "must be >= 2 so that classes can pair up")
        _require(self.resolution is None or self.resolution >= 2, "resolution", self.resolution, "must be >= 2")
        _require(self.jitter is None or self.jitter >= 0, "jitter", self.jitter, "must be >= 0")
        if self.resolution is not None and self.jitter is not None:
            _require(self.jitter < self.resolution, "jitter", self.jitter, f"must be < resolution={self.resolution}")
        for name in _NON_NEGATIVE:
            _require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")

    def resolved(self, teacher_input_size: int | None) -> InversionConfig:
        """A copy with ``resolution`` and ``jitter`` filled in, so that what is recorded is what ran."""
        resolution = self.resolution or teacher_input_size or 224
        jitter = self.jitter if self.jitter is not None else resolution // 8
        return dataclasses.replace(self, resolution=resolution, jitter=jitter)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ValueError(f"InversionConfig.{name}={value!r} {rule}.")
