"""The ViT student of the example scripts, from command-line model arguments: from the Hub or a folder, from a ViT
checkpoint (``--init_from_vit``), or built from scratch with ``--config_overrides``; and its image processor at the
training size. ``examples/run.py`` and ``examples/cache_teacher.py`` build the same student from the same flags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from transformers import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PreTrainedModel,
    ViTImageProcessor,
)

from ..data.loading import label_kwargs
from ..data.transforms import fit_channels, processor_normalization
from ..hub.lookup import check_local_folder, hub_lookup
from ..modeling import DearKDViTForImageClassification
from ..models.students import StudentGeometry, student_geometry
from ..models.teachers import Teacher
from .cli import check_config_overrides, parse_config_overrides

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """The ViT student: from the Hub or a folder, from a ViT checkpoint (`--init_from_vit`), or from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Student checkpoint (Hub name or folder): a ViT, DeiT, DINOv2, BEiT or Data2Vec-vision "
            "classifier, a timm ViT/DeiT/DINOv2 (timm/...), or a saved DearKD ViT."
        },
    )
    model_type: str = field(
        default="dearkd_vit",
        metadata={"help": "Model type to build from scratch when no --model_name_or_path/--init_from_vit is given."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'Config values for a from-scratch student, e.g. "hidden_size=192,num_hidden_layers=12".'},
    )
    init_from_vit: str | None = field(
        default=None,
        metadata={"help": "Build a DearKD ViT student from this transformers ViT/DeiT checkpoint (Hub or folder)."},
    )
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor name or path."})
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Re-initialise a pretrained head whose label count differs from the data's."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modeling code from the Hub."})
    log_attention_distance: bool = field(
        default=False, metadata={"help": "Log each layer's mean attention distance (AttentionDistanceCallback)."}
    )
    license: str | None = field(
        default=None, metadata={"help": "The license in the model card's metadata, e.g. apache-2.0 (default: none)."}
    )

    def check(self) -> None:
        """Fail on inconsistent student flags, or a local folder that is not there, before anything is loaded."""
        if self.model_name_or_path and self.init_from_vit:
            raise ValueError("--model_name_or_path and --init_from_vit are exclusive: give the student one way.")
        if self.config_overrides and self.model_name_or_path:
            raise ValueError(
                "--config_overrides applies to a student built from scratch, not to --model_name_or_path."
            )
        for flag in ("model_name_or_path", "init_from_vit", "image_processor_name"):
            check_local_folder(getattr(self, flag), f"--{flag}")

    def training_image_size(self, image_size: int | None) -> int | None:
        """The size the trainer is asked to train at: ``--image_size`` for a student loaded from the Hub or a folder
        (its position embeddings interpolated), None for one built here, which is built at ``--image_size``."""
        return image_size if self.model_name_or_path else None


def build_student(
    model_args: ModelArguments,
    labels: list[str],
    teacher: Teacher,
    image_size: int | None,
    recipe_config: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """The student with the dataset's labels and the teacher's input channels.

    `recipe_config` (a recipe's student values, e.g. drop path) applies to a DearKD ViT built here; --config_overrides
    win over it.
    """
    if model_args.model_name_or_path:
        if recipe_config:
            logger.warning(f"The recipe's student settings {recipe_config} apply to a student built here, not to "
                           f"{model_args.model_name_or_path}.")  # fmt: skip
        with hub_lookup(model_args.model_name_or_path, "--model_name_or_path"):
            return AutoModelForImageClassification.from_pretrained(
                model_args.model_name_or_path,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                trust_remote_code=model_args.trust_remote_code,
                **label_kwargs(labels),
            )
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.init_from_vit:
        check_config_overrides(DearKDViTForImageClassification.config_class(), overrides)
        overrides = {**supported(recipe_config, DearKDViTForImageClassification.config_class()), **overrides}
        with hub_lookup(model_args.init_from_vit, "--init_from_vit"):
            return DearKDViTForImageClassification.from_vit(
                model_args.init_from_vit, **label_kwargs(labels), **overrides
            )
    base = AutoConfig.for_model(model_args.model_type)
    check_config_overrides(base, overrides)
    overrides = {**supported(recipe_config, base), **overrides}
    overrides.setdefault("num_channels", teacher.num_channels)
    overrides.setdefault("image_size", image_size or teacher.input_size or 224)
    config = AutoConfig.for_model(model_args.model_type, **overrides, **label_kwargs(labels))
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    if isinstance(classes, (list, tuple)):  # e.g. DeiT's two heads: the Auto class picks by the architecture named
        config.architectures = [classes[0].__name__]
    return AutoModelForImageClassification.from_config(config)


def student_inputs(
    student: Any, processor: Any, teacher: Teacher | Any, image_size: int | None
) -> tuple[StudentGeometry, list[float], list[float]]:
    """What the data transforms must give the student, worked out before the trainer is built (which derives the
    same from the same student and processor): its geometry at ``image_size`` (None: its own size) and the mean and
    std its batches are normalised with, the processor's, else the teacher's own. The processor is set to output
    that size (:func:`processor_at_size`)."""
    geometry = student_geometry(student, image_size)
    mean, std = processor_normalization(processor, geometry.num_channels)
    if mean is None:  # the trainer then feeds the teacher the batches as they are: they are in its normalisation
        mean, std = (list(fit_channels(values, geometry.num_channels)) for values in (teacher.mean, teacher.std))
    processor_at_size(processor, geometry.image_size)
    return geometry, mean, std


def supported(values: dict[str, Any] | None, config: Any) -> dict[str, Any]:
    """The recipe's student values that ``config`` has a field for (a plain ViT has no drop path)."""
    return {key: value for key, value in (values or {}).items() if hasattr(config, key)}


def build_image_processor(model_args: ModelArguments, teacher: Teacher) -> Any:
    """The student's processor if it has one; from scratch, the teacher's statistics so no re-normalisation runs.
    Its size is the student's training size, set by :func:`processor_at_size`."""
    name = model_args.image_processor_name or model_args.model_name_or_path or model_args.init_from_vit
    if name is not None:
        try:
            return AutoImageProcessor.from_pretrained(name)
        except (OSError, ValueError):
            logger.warning(f"No image processor found for {name}; using the teacher's normalisation.")
    return ViTImageProcessor(image_mean=list(teacher.mean), image_std=list(teacher.std))


def processor_at_size(processor: Any, image_size: int) -> None:
    """Make a transformers image processor output ``image_size`` images (the size the student trains at), so the saved
    processor feeds the saved student what it learned on; a resize-then-crop keeps its ratio. (A timm student's
    processor is read from its config, which ``prepare_student`` updates.)"""
    size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    if size is None:
        return
    square = {"height": image_size, "width": image_size}
    crop_side = _size_value(crop, "height") if getattr(processor, "do_center_crop", False) else None
    if crop_side:
        scale = image_size / crop_side
        if _size_value(size, "shortest_edge"):
            processor.size = {"shortest_edge": round(_size_value(size, "shortest_edge") * scale)}
        elif _size_value(size, "height"):
            processor.size = {
                "height": round(_size_value(size, "height") * scale),
                "width": round(_size_value(size, "width") * scale),
            }
        processor.crop_size = square
    elif _size_value(size, "height"):
        processor.size = square
    elif _size_value(size, "shortest_edge"):
        processor.size = {"shortest_edge": image_size}


def _size_value(size: Any, key: str) -> int | None:
    """One entry of a processor's size (a transformers ``SizeDict`` or a plain dict)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)
