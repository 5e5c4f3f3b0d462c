#!/usr/bin/env python
"""Train the CNN teacher that DearKD distils from, with the plain `transformers.Trainer`.

The teacher is a timm model (`--model_name_or_path resnet18`) or a transformers ResNet/RegNet/ConvNeXt (a folder,
a Hub name, or `--model_type resnet --config_overrides "hidden_sizes=[16,32],depths=[1,1]"` from scratch). The output
folder loads with `dearkd_hf.models.teachers.load_teacher`: timm teachers are saved in timm's format (config.json with
"architecture", loadable by `timm.create_model("local-dir:" + output_dir)`), transformers teachers with
`save_pretrained` plus an image processor.

    python examples/train_teacher.py --model_name_or_path resnet18 --image_size 28 --output_dir outputs/teacher
    python examples/train_teacher.py config.yaml
"""

import logging
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import timm
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    ViTImageProcessor,
    set_seed,
)

from dearkd_hf import BaseTrainer
from dearkd_hf.data import (
    DataTrainingArguments,
    compute_accuracy_metrics,
    infer_num_channels,
    label_kwargs,
    label_names,
    load_image_datasets,
    processor_normalization,
    train_collator,
    with_transforms,
)
from dearkd_hf.hub import check_local_folder, hub_lookup
from dearkd_hf.models import TimmClassifier, is_timm_model, save_timm_teacher, saved_as_rgb, timm_model_name
from dearkd_hf.runs import (
    check_checkpoint_slots,
    check_finite_loss,
    check_writable_folder,
    output_folder_lock,
    require_finite,
)
from dearkd_hf.scripts import (
    check_config_overrides,
    check_training_arguments,
    parse_config_overrides,
    parse_script_args,
    resume_checkpoint,
    run_main,
)

logger = logging.getLogger(__name__)


@dataclass
class TeacherModelArguments:
    """Which CNN to train as the teacher."""

    model_name_or_path: str | None = field(
        default="resnet18",
        metadata={
            "help": "A timm model name (e.g. resnet18), or a transformers image-classification model folder / Hub "
            "name. Ignored with --model_type."
        },
    )
    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Train a transformers model of this type (resnet, regnet, convnext) from scratch. A type whose "
            "config has an image_size (vit, deit, ...) is built for --image_size (patch_size must divide it)."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override transformers config values, e.g. "
            '"hidden_sizes=[16,32],depths=[1,1],embedding_size=16" (values are JSON or Python literals).'
        },
    )
    num_channels: int | None = field(
        default=None,
        metadata={"help": "Input channels (1 or 3). Default: the dataset's; 3 serves grayscale images as RGB."},
    )
    pretrained: bool = field(
        default=False, metadata={"help": "timm: start from pretrained weights (downloads them from the Hub)."}
    )


class TeacherTrainer(BaseTrainer):
    """The Trainer with two changes the data pipeline needs, and dearkd_hf's exact resume, one run per output folder
    (lock, run fingerprint, finite saves) and non-finite loss stop.

    The loss is cross-entropy against hard labels or the soft (B, num_classes) targets of mixup/cutmix, which
    transformers' own loss would mistake for multi-label targets; and evaluation batches go through the training
    collator's evaluation collator (`BaseTrainer`'s `eval_data_collator`), since mixup must never touch evaluation
    data.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits, labels)
        if model.training:
            check_finite_loss(loss, self.state.global_step + 1, {"loss_ce": loss}, {**inputs, "labels": labels})
        return (loss, outputs) if return_outputs else loss


def parse_args(argv: list[str]) -> tuple[TeacherModelArguments, DataTrainingArguments, TrainingArguments]:
    """Command-line flags, or a single .json/.yaml file holding them."""
    return parse_script_args(HfArgumentParser((TeacherModelArguments, DataTrainingArguments, TrainingArguments)), argv)


def build_timm_teacher(
    args: TeacherModelArguments, num_classes: int, num_channels: int
) -> tuple[TimmClassifier, tuple, tuple]:
    """A timm CNN with our classes and channels (timm adapts pretrained stems), and its normalisation."""
    name = timm_model_name(args.model_name_or_path)
    model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes, in_chans=num_channels)
    pretrained_cfg = model.pretrained_cfg if args.pretrained or name.startswith("local-dir:") else {}
    stats = SimpleNamespace(image_mean=pretrained_cfg.get("mean"), image_std=pretrained_cfg.get("std"))
    mean, std = processor_normalization(stats, num_channels, fallback=(0.5,))
    return TimmClassifier(model), mean, std


def from_scratch_config(args: TeacherModelArguments, image_size: int | None) -> dict[str, Any]:
    """The --config_overrides of a --model_type model, checked against its config before any data is loaded; for a
    type whose config has an ``image_size`` (a ViT), that size set to the training size (--image_size), which its
    ``patch_size`` must divide: a ViT built for its default 224 px stops at the first step on other images."""
    overrides = parse_config_overrides(args.config_overrides)
    defaults = AutoConfig.for_model(args.model_type)
    check_config_overrides(defaults, overrides)
    if not hasattr(defaults, "image_size"):
        return overrides
    if image_size is not None and "image_size" in overrides and overrides["image_size"] != image_size:
        raise ValueError(
            f"--config_overrides image_size={overrides['image_size']} and --image_size {image_size} differ: the "
            f"{args.model_type} model takes one size; drop image_size from --config_overrides (--image_size sets it)."
        )
    size = overrides.get("image_size", image_size if image_size is not None else defaults.image_size)
    patch = overrides.get("patch_size", getattr(defaults, "patch_size", None))
    if isinstance(size, int) and isinstance(patch, int) and size % patch:
        fits = next((p for p in (16, 8, 4, 2) if size % p == 0), 1)
        raise ValueError(
            f"--model_type {args.model_type}: --image_size {size} is not divisible by patch_size={patch}; give a "
            f"patch size that divides it, e.g. --config_overrides patch_size={fits}, or another --image_size."
        )
    return {**overrides, "image_size": size}


def build_transformers_teacher(
    args: TeacherModelArguments, labels: list[str], num_channels: int, image_size: int | None = None
) -> tuple[nn.Module, Any | None]:
    """A transformers image classifier from scratch (--model_type) or from a folder/Hub name, with our labels."""
    if args.model_type is not None:
        overrides = from_scratch_config(args, image_size)
        config = AutoConfig.for_model(args.model_type, num_channels=num_channels, **overrides, **label_kwargs(labels))
        return AutoModelForImageClassification.from_config(config), None
    overrides = parse_config_overrides(args.config_overrides)
    with hub_lookup(args.model_name_or_path, "--model_name_or_path"):
        config = AutoConfig.from_pretrained(args.model_name_or_path, **label_kwargs(labels))
        check_config_overrides(config, overrides)
        config.update(overrides)
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, config=config, ignore_mismatched_sizes=True
        )
    try:
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    except (OSError, ValueError):
        processor = None
    return model, processor


def resolve_image_size(data_args: DataTrainingArguments, model: nn.Module, processor: Any | None) -> int:
    """--image_size, else what the model or its processor was built for, else 224."""
    if data_args.image_size is not None:
        return data_args.image_size
    if isinstance(model, TimmClassifier):
        return int(model.model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    size = getattr(processor, "size", None) or {}
    return int(size.get("height") or size.get("shortest_edge") or getattr(model.config, "image_size", 224))


def save_teacher(
    trainer: Trainer, model: nn.Module, output_dir: str, labels: list[str], mean: tuple, std: tuple, image_size: int
) -> None:
    """Save the final teacher where `load_teacher` expects it: timm's folder format (`save_timm_teacher`), or
    save_pretrained; a grayscale teacher saved taking RGB, as ``pipeline()`` serves every image."""
    if isinstance(model, TimmClassifier):
        save_timm_teacher(model.model, output_dir, labels, mean, std, image_size)
        return
    with saved_as_rgb(model):
        trainer.save_model(output_dir)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    # The lazy transforms read the raw `image` column, which the Trainer would otherwise drop.
    training_args.remove_unused_columns = False
    require_finite(training_args, prefix="--")
    check_training_arguments(training_args, prefix="--")
    if model_args.model_type is None:
        check_local_folder(model_args.model_name_or_path, "--model_name_or_path")
    else:
        from_scratch_config(model_args, data_args.image_size)  # a bad override or size fails before any loading
    check_writable_folder(training_args.output_dir)
    check_checkpoint_slots(training_args.output_dir)
    # One run per output folder, from before anything is written there until the last file is.
    with output_folder_lock(training_args.output_dir, enabled=training_args.process_index == 0):
        return train_and_save(model_args, data_args, training_args)


def train_and_save(
    model_args: TeacherModelArguments, data_args: DataTrainingArguments, training_args: TrainingArguments
) -> dict[str, float]:
    set_seed(training_args.seed)  # before the model is built, so that --seed fixes its initial weights too

    dataset = load_image_datasets(data_args, seed=training_args.seed)
    labels = label_names(dataset["train"])
    data_channels = model_args.num_channels or infer_num_channels(dataset["train"])

    use_timm = model_args.model_type is None and is_timm_model(model_args.model_name_or_path)
    if use_timm:
        model, mean, std = build_timm_teacher(model_args, len(labels), data_channels)
        processor = None
    else:
        model, processor = build_transformers_teacher(model_args, labels, data_channels, data_args.image_size)
        mean, std = processor_normalization(processor, model.config.num_channels, fallback=(0.5,))
        attention = next((type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")), None)
        if attention is not None:
            logger.warning(
                f"This model has {attention} layers (a vision transformer): it trains here, as a supervised baseline, "
                "but examples/run.py distils from a CNN teacher and refuses it as --teacher_model_name_or_path."
            )
    image_size = resolve_image_size(data_args, model, processor)
    if not use_timm:
        processor = ViTImageProcessor(
            size={"height": image_size, "width": image_size}, image_mean=list(mean), image_std=list(std)
        )
    dataset = with_transforms(dataset, image_size, mean, std, len(mean), rand_augment=data_args.rand_augment)

    trainer = TeacherTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        data_collator=train_collator(data_args, len(labels)),
        compute_metrics=compute_accuracy_metrics,
        processing_class=processor,
    )
    trainer.run_data = {**data_args.training_fields(), "image_size": image_size}
    trainer.check_output_folder()  # another run's checkpoints refused before any is looked at for resuming
    train_result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args, trainer.checkpoint_files))
    save_teacher(trainer, model, training_args.output_dir, labels, mean, std, image_size)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


if __name__ == "__main__":
    run_main(main)
