"""One view of any supported ViT student: its family, geometry, forward arguments and (class, distillation) logits.

Everything DearKD knows about a student family lives in :data:`STUDENT_FAMILIES` (and, for timm models wrapped by
transformers' ``TimmWrapperForImageClassification``, in :class:`_TimmViT`): the trainer and the aligners only read
the :class:`StudentGeometry` built here and call :func:`student_forward_kwargs` / :func:`student_outputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class StudentFamily:
    """One family of ViT students and how DearKD reads it.

    Args:
        name: The family's name in messages and the README table.
        class_names: The model classes of the family (subclasses are accepted too).
        interpolation: How the family runs at an image size other than its own: ``"kwarg"`` (the forward takes
            ``interpolate_pos_encoding=True``), ``"always"`` (it always interpolates), ``"resize"`` (the position
            embeddings are resampled once, before training, and the saved config records the new size) or ``"none"``.
        prefix_tokens: The number of tokens before the patch tokens, from the model's config.
        example: A Hub checkpoint of the family (for messages and the README).
    """

    name: str
    class_names: tuple[str, ...]
    interpolation: str
    prefix_tokens: Callable[[Any], int]
    example: str

    def matches(self, model: nn.Module) -> bool:
        return any(cls.__name__ in self.class_names for cls in type(model).__mro__)


def _registers(config: Any) -> int:
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


STUDENT_FAMILIES: tuple[StudentFamily, ...] = (
    StudentFamily("ViT", ("ViTForImageClassification",), "kwarg", lambda c: 1, "google/vit-base-patch16-224"),
    StudentFamily(
        "DeiT",
        ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
        "kwarg",
        lambda c: 2,
        "facebook/deit-tiny-distilled-patch16-224",
    ),
    StudentFamily(
        "DearKD ViT", ("DearKDViTForImageClassification",), "none", lambda c: c.num_prefix_tokens, "(from scratch)"
    ),
    StudentFamily(
        "DINOv2",
        ("Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification"),
        "always",
        _registers,
        "facebook/dinov2-small-imagenet1k-1-layer",
    ),
    StudentFamily("BEiT", ("BeitForImageClassification",), "kwarg", lambda c: 1, "microsoft/beit-base-patch16-224"),
    StudentFamily(
        "Data2Vec-vision",
        ("Data2VecVisionForImageClassification",),
        "kwarg",
        lambda c: 1,
        "facebook/data2vec-vision-base-ft1k",
    ),
    StudentFamily(
        "timm ViT / DeiT / DINOv2 (TimmWrapper)",
        ("TimmWrapperForImageClassification",),
        "resize",
        lambda c: 0,  # read from the timm model itself (_TimmViT)
        "timm/vit_tiny_patch16_224.augreg_in21k",
    ),
)
_TIMM = STUDENT_FAMILIES[-1]


@dataclass(frozen=True)
class StudentGeometry:
    """What alignment and validation need to know about the student, read from the model itself.

    Args:
        family: The student's family.
        num_blocks: Transformer blocks (the range of alignment pairs' student blocks).
        hidden_size: Token width.
        grid: The patch grid ``(h, w)`` at ``image_size``.
        image_size: The side of the (square) images the student trains on.
        native_image_size: The side the student was built for.
        num_prefix_tokens: Tokens before the patch tokens (class, distillation, register tokens).
        first_block_state: The index of block 1's output in the model's ``hidden_states`` (1 when the embeddings
            come first, as in transformers; 0 for timm's per-block states).
        distillation_head: Whether the student has a distillation token and head (logit KD goes through it).
        num_channels: Input channels.
        num_labels: Classes.
        id2label: Class names.
    """

    family: StudentFamily
    num_blocks: int
    hidden_size: int
    grid: tuple[int, int]
    image_size: int
    native_image_size: int
    num_prefix_tokens: int
    first_block_state: int
    distillation_head: bool
    num_channels: int
    num_labels: int
    id2label: dict[int, str]

    @property
    def resized(self) -> bool:
        return self.image_size != self.native_image_size


@dataclass
class StudentOutput:
    """Class-token logits and distillation-token logits (None without a distillation head)."""

    logits: torch.Tensor
    cls_logits: torch.Tensor
    distillation_logits: torch.Tensor | None


def student_family(model: nn.Module) -> StudentFamily:
    """The student's family; a model of no supported family (a CNN, a Swin, ...) is refused naming them."""
    family = next((f for f in STUDENT_FAMILIES if f.matches(model)), None)
    if family is _TIMM and not _TimmViT.is_vit(model):
        family = None
    if family is None:
        name = type(model).__name__
        if name == _TIMM.class_names[0]:
            name = f"{name} of timm architecture {model.config.architecture!r}"
        raise ValueError(
            f"model: {name} is not a supported ViT student. DearKDTrainer trains ViT-family students: "
            + "; ".join(f"{f.name} ({', '.join(f.class_names)})" for f in STUDENT_FAMILIES)
            + ". CNN and hierarchical (Swin-style) students have no token sequence to align."
        )
    return family


def student_geometry(model: nn.Module, image_size: int | None = None) -> StudentGeometry:
    """The student's depth, width and patch grid at ``image_size`` (default: its own), read from the model.

    Fails clearly on an unsupported student, a patch grid that is not square at ``image_size``, and an image size
    the student cannot run at (its position embeddings do not interpolate).
    """
    family = student_family(model)
    config = model.config
    if family is _TIMM:
        timm_vit = _TimmViT(model)
        blocks, width, patch, native = timm_vit.num_blocks, timm_vit.width, timm_vit.patch_size, timm_vit.image_size
        prefix, first_state, distilled = timm_vit.num_prefix_tokens, 0, timm_vit.distilled
        channels = timm_vit.num_channels
    else:
        blocks, width = config.num_hidden_layers, config.hidden_size
        patch, native = square_side(config.patch_size), square_side(config.image_size)
        prefix, first_state = family.prefix_tokens(config), 1
        distilled = getattr(model, "distillation_classifier", None) is not None
        channels = config.num_channels
    size = native if image_size is None else image_size
    if patch is None or size is None or size % patch:
        raise ValueError(
            f"image_size: the {family.name} student's tokens do not form a square patch grid at image_size={size} "
            f"(patch_size={config.patch_size if family is not _TIMM else patch}); use a square image size that is "
            f"a multiple of the patch size{'' if patch is None else f' {patch}'}."
        )
    if size != native and family.interpolation == "none":
        interpolating = ", ".join(f.name for f in STUDENT_FAMILIES if f.interpolation != "none")
        raise ValueError(
            f"image_size: the {family.name} student was built for {native}-pixel images and cannot interpolate its "
            f"position embeddings to {size}; train at image_size={native} (--image_size {native}), or take a "
            f"student of a family that interpolates ({interpolating})."
        )
    return StudentGeometry(
        family=family,
        num_blocks=blocks,
        hidden_size=width,
        grid=(size // patch, size // patch),
        image_size=size,
        native_image_size=native,
        num_prefix_tokens=prefix,
        first_block_state=first_state,
        distillation_head=distilled,
        num_channels=channels,
        num_labels=config.num_labels,
        id2label={int(k): v for k, v in config.id2label.items()},
    )


def prepare_student(model: nn.Module, geometry: StudentGeometry) -> None:
    """Set the student up for training at ``geometry.image_size`` with its distillation head (timm only).

    A timm ViT has its position embeddings resampled once to the new grid and its config's ``model_args`` and
    ``pretrained_cfg`` record the size, so the saved student and its processor reload as it was trained; a distilled
    timm DeiT returns both heads' logits while it trains. The transformers families need nothing here (see
    :func:`student_forward_kwargs`).
    """
    if geometry.family is not _TIMM:
        return
    timm_model = model.timm_model
    if geometry.resized:
        side = geometry.image_size
        timm_model.set_input_size(img_size=(side, side))
        model.config.model_args = {**(model.config.model_args or {}), "img_size": side}
        # transformers builds a timm model's image processor from this (its input size).
        pretrained_cfg = dict(getattr(model.config, "pretrained_cfg", None) or {})
        channels = pretrained_cfg.get("input_size", (geometry.num_channels,))[0]
        model.config.pretrained_cfg = {**pretrained_cfg, "input_size": (channels, side, side)}
    if geometry.distillation_head:
        timm_model.set_distilled_training(True)


@contextmanager
def saved_at_training_size(model: nn.Module, geometry: StudentGeometry) -> Iterator[bool]:
    """Within the block, a student of a ``"kwarg"`` family trained at another size than its config's (it ran with
    ``interpolate_pos_encoding=True``, which ``pipeline()`` does not pass) has its config's ``image_size`` set to the
    training size and its absolute position embeddings resampled there by its own ``interpolate_pos_encoding``, so
    the saved model computes without the keyword what the trained one did with it; on leaving, the very table and
    size are back. A family with relative position biases (BEiT's options) is left as it is. Yields whether it
    changed the model."""
    config = getattr(model, "config", None)
    relative = getattr(config, "use_relative_position_bias", False) or getattr(
        config, "use_shared_relative_position_bias", False
    )
    if not (geometry.resized and geometry.family.interpolation == "kwarg") or relative or config is None:
        yield False
        return
    embeddings = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    size, resized = config.image_size, None
    if isinstance(table, nn.Parameter):
        tokens = table.new_zeros(1, geometry.num_prefix_tokens + geometry.grid[0] * geometry.grid[1], table.shape[-1])
        with torch.no_grad():
            resized = embeddings.interpolate_pos_encoding(tokens, geometry.image_size, geometry.image_size)
        embeddings.position_embeddings = nn.Parameter(resized.clone(), requires_grad=table.requires_grad)
    config.image_size = geometry.image_size
    try:
        yield True
    finally:
        config.image_size = size
        if resized is not None:
            embeddings.position_embeddings = table


def student_forward_kwargs(geometry: StudentGeometry, output_hidden_states: bool) -> dict[str, Any]:
    """The keyword arguments of the student's forward besides ``pixel_values``."""
    kwargs: dict[str, Any] = {"output_hidden_states": output_hidden_states}
    if geometry.resized and geometry.family.interpolation == "kwarg":
        kwargs["interpolate_pos_encoding"] = True
    if output_hidden_states and geometry.family is _TIMM:
        kwargs["output_fmt"] = "NLC"  # timm's per-block states as (B, h*w, D) patch tokens, not (B, D, h, w) maps
    return kwargs


def student_outputs(outputs) -> StudentOutput:
    """Normalise a student's forward output: transformers ViT has only ``logits`` (the class head), DeiT and the DearKD
    ViT add ``cls_logits``/``distillation_logits``, a distilled timm DeiT in training returns ``(class, dist)``."""
    if isinstance(outputs.logits, tuple):
        cls_logits, distillation_logits = outputs.logits
        return StudentOutput((cls_logits + distillation_logits) / 2, cls_logits, distillation_logits)
    cls_logits = getattr(outputs, "cls_logits", None)
    if cls_logits is None:
        cls_logits = outputs.logits
    return StudentOutput(
        logits=outputs.logits,
        cls_logits=cls_logits,
        distillation_logits=getattr(outputs, "distillation_logits", None),
    )


class _TimmViT:
    """The geometry of a timm ``VisionTransformer`` (ViT, DeiT, DINOv2 with or without registers) in a TimmWrapper."""

    def __init__(self, model: nn.Module):
        self.model = model.timm_model

    @staticmethod
    def is_vit(model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(getattr(model, "timm_model", None), VisionTransformer)

    @property
    def num_blocks(self) -> int:
        return len(self.model.blocks)

    @property
    def width(self) -> int:
        return self.model.embed_dim

    @property
    def patch_size(self) -> int | None:
        return square_side(tuple(self.model.patch_embed.patch_size))

    @property
    def image_size(self) -> int | None:
        return square_side(tuple(self.model.patch_embed.img_size))

    @property
    def num_prefix_tokens(self) -> int:
        return self.model.num_prefix_tokens

    @property
    def distilled(self) -> bool:
        return hasattr(self.model, "set_distilled_training")

    @property
    def num_channels(self) -> int:
        return self.model.patch_embed.proj.in_channels


def square_side(value: int | list | tuple) -> int | None:
    """The side of a square size given as ``n``, ``(n, n)`` or ``[n, n]``; None when the size is not square.

    The DearKD ViT's modeling file holds a copy (self-contained for ``trust_remote_code``); tests check they agree.
    """
    if isinstance(value, int):
        return value
    return int(value[0]) if len(value) > 0 and len(set(value)) == 1 else None
