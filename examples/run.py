#!/usr/bin/env python
"""Train a ViT student with DearKD from a CNN teacher: `accelerate launch examples/run.py ...`.

Shaped like transformers' `examples/pytorch/image-classification/run_image_classification.py`. With no dataset flag
it trains on the embedded Fashion-MNIST subset, offline.

    accelerate launch examples/run.py \
        --teacher_model_name_or_path outputs/teacher \
        --model_type dearkd_vit --config_overrides "hidden_size=192,num_hidden_layers=12,num_attention_heads=3" \
        --image_size 28 --output_dir outputs/dearkd --num_train_epochs 10 --distillation_stop_epoch 8
    python examples/run.py config.yaml
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import transformers
from transformers import HfArgumentParser, set_seed

from dearkd_hf import (
    AttentionDistanceCallback,
    DearKDConfig,
    DearKDTrainer,
    TeacherCache,
    check_process_group,
    load_teacher,
)
from dearkd_hf.data import (
    DataTrainingArguments,
    apply_recipe,
    compute_accuracy_metrics,
    infer_num_channels,
    label_names,
    load_image_datasets,
    train_collator,
    with_transforms,
)
from dearkd_hf.hub import check_local_folder
from dearkd_hf.inversion import GENERATION_CONFIG_FILE
from dearkd_hf.runs import check_checkpoint_slots, check_writable_folder, output_folder_lock
from dearkd_hf.scripts import (
    ModelArguments,
    build_image_processor,
    build_student,
    explicit_argument_names,
    parse_script_args,
    resume_checkpoint,
    run_main,
    student_inputs,
    warn_if_launched_alone,
    with_loader_defaults,
)

logger = logging.getLogger(__name__)
EMBEDDED_DATASET_NAME = "fashion_mnist (the 5k/1k subset embedded in dearkd_hf)"


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataTrainingArguments, DearKDConfig]:
    return parse_script_args(HfArgumentParser((ModelArguments, DataTrainingArguments, DearKDConfig)), argv)


def check_arguments(model_args: ModelArguments, data_args: DataTrainingArguments, training_args: DearKDConfig) -> None:
    """Fail on inconsistent flags before any data or model is loaded."""
    if training_args.teacher_model_name_or_path is None and training_args.teacher_cache is None:
        raise ValueError(
            "--teacher_model_name_or_path is required: a timm name, a transformers CNN classifier, or a folder "
            "written by examples/train_teacher.py (or --teacher_cache, a cache written by examples/cache_teacher.py)."
        )
    if training_args.teacher_cache is not None:
        unsupported = data_args.live_augmentation_flags()
        if unsupported:
            raise ValueError(
                f"--teacher_cache with {', '.join(unsupported)}: the cache holds the teacher's outputs on the default "
                "training views (random resized crop and flip) only; drop these flags, or train with the teacher."
            )
        check_local_folder(training_args.teacher_cache, "--teacher_cache")
    model_args.check()
    check_process_group(training_args)  # before the output folder's lock, which every lone process would try to take
    warn_if_launched_alone(training_args.world_size)
    check_local_folder(training_args.teacher_model_name_or_path, "--teacher_model_name_or_path")
    check_writable_folder(training_args.output_dir)
    check_checkpoint_slots(training_args.output_dir)


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    check_arguments(model_args, data_args, training_args)
    explicit = explicit_argument_names(argv)  # flags given explicitly win over the defaults below
    training_args = with_loader_defaults(training_args, explicit)
    recipe_config = {}
    if data_args.recipe is not None:
        training_args, data_args, recipe_config = apply_recipe(data_args.recipe, training_args, data_args, explicit)
    # One run per output folder, from before anything is written there until the last file is.
    with output_folder_lock(training_args.output_dir, enabled=training_args.process_index == 0):
        return train_and_save(model_args, data_args, training_args, recipe_config)


def train_and_save(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: DearKDConfig,
    recipe_config: dict[str, Any],
) -> dict[str, float]:
    # Before the teacher, the student and the aligners are built, so that --seed fixes their initial weights too.
    set_seed(training_args.seed)

    dataset = load_image_datasets(data_args, seed=training_args.seed)
    labels = label_names(dataset["train"])
    cache = None
    if training_args.teacher_cache is not None:  # stage 1 reads the teacher's outputs; the teacher is not loaded
        cache = TeacherCache.load(training_args.teacher_cache, num_views=training_args.teacher_cache_views)
        teacher = cache.teacher
    else:
        teacher = load_teacher(training_args.teacher_model_name_or_path)
    student = build_student(model_args, labels, teacher, data_args.image_size, recipe_config)
    processor = build_image_processor(model_args, teacher)
    # The student's own size unless --image_size asks for another; the data is transformed to what it takes.
    image_size = model_args.training_image_size(data_args.image_size)
    geometry, mean, std = student_inputs(student, processor, teacher, image_size)
    if geometry.num_channels == 1 and infer_num_channels(dataset["train"]) == 3:
        logger.warning(
            "The teacher takes grayscale images, so the student does too: the RGB training images are converted to "
            "grayscale and their colour is not used. To keep it, give an RGB teacher (examples/train_teacher.py "
            "--num_channels 3)."
        )
    dataset = with_transforms(
        dataset,
        geometry.image_size,
        mean,
        std,
        geometry.num_channels,
        rand_augment=data_args.rand_augment,
        recipe=data_args.recipe,
    )
    trainer = DearKDTrainer(
        model=student,
        teacher_model=teacher if cache is None else None,
        teacher_cache=cache,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        data_collator=train_collator(data_args, len(labels)),
        compute_metrics=compute_accuracy_metrics,
        processing_class=processor,
        image_size=image_size,
    )
    trainer.run_data = data_args.training_fields()
    if model_args.log_attention_distance:
        trainer.add_callback(AttentionDistanceCallback(trainer))
    trainer.check_output_folder()  # another run's checkpoints refused before any is looked at for resuming

    train_result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args, trainer.checkpoint_files))
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)

    dataset_source = data_args.dataset_name or data_args.train_dir
    trainer.create_model_card(
        dataset=dataset_source or EMBEDDED_DATASET_NAME,
        train_fraction=data_args.train_fraction,
        metrics=metrics,
        base_model=model_args.model_name_or_path or model_args.init_from_vit,
        eval_dataset=data_args.eval_dataset_name,
        # A folder written by examples/generate.py: data-free DearKD, trained on images synthesised from the teacher.
        synthetic_data=bool(dataset_source and os.path.isfile(os.path.join(dataset_source, GENERATION_CONFIG_FILE))),
        license=model_args.license,
    )
    if training_args.push_to_hub:
        trainer.push_to_hub()  # saves the student and the card create_model_card was given, then uploads them once
    else:
        trainer.save_model()
    return metrics


if __name__ == "__main__":
    run_main(main)
