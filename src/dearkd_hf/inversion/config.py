"""InversionConfig: every knob of data-free image synthesis (METHOD.md section 5): the method (DeepInversion's
per-batch pixel optimisation, or ``fast``: a generator network amortised over batches), its settings, and the priors
and BPID loss both share. DeepInversion's settings have its published defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..runs.finite_checks import require_finite

METHODS = ("deepinversion", "fast")
_NON_NEGATIVE = ("r_bn", "first_bn_multiplier", "tv", "l2", "adi_scale", "bpid_weight", "bpid_margin", "seed")
# The fields only one method reads; the other refuses a non-default value (it would be silently ignored).
METHOD_FIELDS = {
    "deepinversion": ("iterations", "lr", "betas", "warm_start_half_resolution"),
    "fast": (
        "fast_steps",
        "fast_warmup",
        "fast_lr",
        "fast_latent_lr",
        "fast_meta_lr",
        "fast_width",
        "fast_latent_dim",
    ),
}


@dataclass
class InversionConfig:
    """How to synthesise a batch of images from a frozen BatchNorm teacher (METHOD.md section 5).

    The field names double as the command-line flags of ``examples/generate.py`` (via ``HfArgumentParser``).
    ``iterations``, ``lr``, ``betas`` and ``warm_start_half_resolution`` are DeepInversion's; the ``fast_*`` fields
    are the ``fast`` method's; the rest (priors, BPID, batch, resolution, seed) apply to both.
    """

    method: Literal["deepinversion", "fast"] = field(
        default="deepinversion",
        metadata={
            "help": "deepinversion: optimise each batch's pixels for `iterations` steps (Yin et al. 2020). fast: a "
            "small conditional generator network, meta-learned over `fast_warmup` batches and then adapted "
            "`fast_steps` steps per batch (after Fast-Datafree, Fang et al. 2022): far fewer teacher passes per image."
        },
    )

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
    fast_steps: int = field(
        default=5,
        metadata={
            "help": "fast: optimisation steps of the generator and the latents per batch (and per warm-up task)."
        },
    )
    fast_warmup: int = field(
        default=20,
        metadata={
            "help": "fast: meta-learning tasks (Reptile) that train the generator's shared initialisation before any "
            "image is kept; 0 starts every batch from the random initialisation."
        },
    )
    fast_lr: float = field(default=5e-3, metadata={"help": "fast: Adam learning rate of the generator's weights."})
    fast_latent_lr: float = field(default=0.05, metadata={"help": "fast: Adam learning rate of the latent codes."})
    fast_meta_lr: float = field(
        default=1.0,
        metadata={
            "help": "fast: Reptile step in (0, 1]: after each warm-up task the initialisation moves this share of the "
            "way to the adapted weights (1: it becomes them)."
        },
    )
    fast_width: int = field(default=32, metadata={"help": "fast: channels of the generator's last hidden layer."})
    fast_latent_dim: int = field(default=64, metadata={"help": "fast: size of each image's latent code."})

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
        _require(self.method in METHODS, "method", self.method, f"is unknown; use one of {', '.join(METHODS)}")
        for name in ("fast_steps", "fast_width", "fast_latent_dim"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _require(self.fast_warmup >= 0, "fast_warmup", self.fast_warmup, "must be >= 0")
        _require(self.fast_lr > 0, "fast_lr", self.fast_lr, "must be > 0")
        _require(self.fast_latent_lr >= 0, "fast_latent_lr", self.fast_latent_lr, "must be >= 0")
        _require(0 < self.fast_meta_lr <= 1, "fast_meta_lr", self.fast_meta_lr, "must be in (0, 1]")
        for method, names in METHOD_FIELDS.items():
            for name in names if method != self.method else ():
                default = _default(name)
                _require(
                    getattr(self, name) == default,
                    name,
                    getattr(self, name),
                    f"is a setting of method={method!r} only; with method={self.method!r} leave it at {default!r} "
                    f"(or set method={method!r})",
                )

    def resolved(self, teacher_input_size: int | None) -> InversionConfig:
        """A copy with ``resolution`` and ``jitter`` filled in, so that what is recorded is what ran."""
        resolution = self.resolution or teacher_input_size or 224
        jitter = self.jitter if self.jitter is not None else resolution // 8
        return dataclasses.replace(self, resolution=resolution, jitter=jitter)

    def to_dict(self) -> dict[str, Any]:
        """The fields that the method reads (another method's settings are left out: they did not run)."""
        unused = {name for method, names in METHOD_FIELDS.items() if method != self.method for name in names}
        return {key: value for key, value in dataclasses.asdict(self).items() if key not in unused}


def _default(name: str) -> Any:
    spec = InversionConfig.__dataclass_fields__[name]
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def _require(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ValueError(f"InversionConfig.{name}={value!r} {rule}.")
