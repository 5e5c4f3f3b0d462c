"""`--recipe deit` (timm's transform, Mixup, RandomErasing and repeated-augmentation sampler; DeiT's optimizer and
schedule; explicit flags win) and the examples' loader defaults."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import STUDENT, make_config, make_dataset, make_resnet_teacher, make_vit, run_script, write_teacher
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms

from dearkd_hf import DearKDTrainer
from dearkd_hf.data.collators import MixupCollator
from dearkd_hf.data.loading import DataTrainingArguments, train_collator
from dearkd_hf.data.recipes import RECIPES, apply_recipe, get_recipe
from dearkd_hf.data.transforms import build_transforms
from dearkd_hf.scripts.cli import default_num_workers, explicit_argument_names, with_loader_defaults


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"recipe='deiT' is not a known recipe; known recipes: \['deit'\]"):
        get_recipe("deiT")
    with pytest.raises(ValueError, match="known recipes"):
        DataTrainingArguments(recipe="imagenet")  # fails when the flags are parsed, before any loading


def test_deit_transforms_are_timms():
    train = build_transforms(224, (0.5,) * 3, (0.5,) * 3, 3, train=True, recipe="deit").keywords["pipeline"]
    ops = {type(op): op for op in train.transforms}
    crop = ops[RandomResizedCropAndInterpolation]
    assert crop.size == (224, 224) and crop.interpolation == transforms.InterpolationMode.BICUBIC
    rand_augment = ops[RandAugment]
    assert rand_augment.num_layers == 2 and {op.magnitude for op in rand_augment.ops} == {9}
    assert {op.magnitude_std for op in rand_augment.ops} == {0.5}
    erasing = ops[RandomErasing]
    assert erasing.probability == 0.25 and erasing.mode == "pixel"

    # Magnitude 10 (reached through the magnitude noise) keeps 0 bits in posterize: black, as DeiT's Pillow made it.
    posterize = next(op for op in rand_augment.ops if op.name == "PosterizeIncreasing")
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert posterize.aug_fn(image, 0).getextrema() == ((0, 0),) * 3
    assert posterize.aug_fn(image, 2).getpixel((0, 0)) == (192, 64, 0)

    evaluation = build_transforms(224, (0.5,), (0.5,), 1, train=False, recipe="deit").keywords["pipeline"]
    resize, crop = evaluation.transforms[:2]
    assert resize.size == 256 and crop.size == (224, 224)  # DeiT's crop ratio 0.875


def test_deit_recipe_sets_deits_training_and_explicit_values_win(tmp_path):
    args = make_config(tmp_path, per_device_train_batch_size=64, gradient_accumulation_steps=2, num_train_epochs=100)
    data = DataTrainingArguments(recipe="deit")
    training, data, student = apply_recipe("deit", args, data)
    assert training.learning_rate == pytest.approx(5e-4 * 128 / 512)
    assert training.warmup_steps == pytest.approx(0.05)  # 5 of 100 epochs
    assert training.lr_scheduler_type == "cosine" and training.weight_decay == 0.05
    assert training.optim == "adamw_torch" and training.repeated_augmentations == 3
    assert (data.mixup, data.cutmix, data.label_smoothing) == (0.8, 1.0, 0.1)
    assert student == {"drop_path_rate": 0.1}
    collator = train_collator(data, num_classes=10)
    assert isinstance(collator, MixupCollator)
    mixup = collator.mixup_fn
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing) == (0.8, 1.0, 0.1)

    kept = make_config(tmp_path, learning_rate=1e-3, weight_decay=0.01)
    explicit = {"learning_rate", "weight_decay", "mixup", "drop_path_rate"}
    training, data, student = apply_recipe("deit", kept, DataTrainingArguments(mixup=0.2), explicit)
    assert (training.learning_rate, training.weight_decay, data.mixup, data.cutmix) == (1e-3, 0.01, 0.2, 1.0)
    assert training.lr_scheduler_type == "cosine" and student == {}
    assert args.weight_decay == 0.0  # the inputs are left as they were


def test_explicit_names_come_from_flags_or_the_config_file(tmp_path):
    argv = ["--recipe", "deit", "--learning_rate=1e-3", "--no_remove_unused_columns", "--weight-decay", "0"]
    assert explicit_argument_names(argv) == {
        "recipe", "learning_rate", "no_remove_unused_columns", "remove_unused_columns", "weight_decay",
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text("recipe: deit\nmixup: 0.1\n")
    assert explicit_argument_names([str(tmp_path / "run.yaml")]) == {"recipe", "mixup"}


def test_repeated_augmentation_sampler_repeats_each_example(tmp_path):
    dataset = make_dataset(12)
    args = make_config(tmp_path, repeated_augmentations=3)
    trainer = DearKDTrainer(model=make_vit(), teacher_model=make_resnet_teacher(), args=args, train_dataset=dataset)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, RepeatAugSampler) and sampler.num_repeats == 3
    indices = list(sampler)
    assert len(indices) == len(dataset)  # an epoch keeps the dataset's length
    assert indices[0] == indices[1] == indices[2] and len(set(indices)) == 4
    sampler.set_epoch(1)
    assert list(sampler) != indices
    with pytest.raises(ValueError, match="repeated_augmentations"):
        make_config(tmp_path, repeated_augmentations=0)


def test_run_script_with_the_deit_recipe(tmp_path):
    teacher = tmp_path / "teacher"
    write_teacher(teacher, num_labels=10)
    out = tmp_path / "out"
    argv = [
        "--recipe", "deit", "--weight_decay", "0.01", "--teacher_model_name_or_path", str(teacher),
        "--config_overrides", STUDENT, "--image_size", "28", "--max_train_samples", "16", "--max_eval_samples", "8",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--report_to", "none",
        "--output_dir", str(out), "--dataloader_num_workers", "0",
    ]  # fmt: skip
    metrics = run_script.main(argv)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    saved = torch.load(out / "training_args.bin", weights_only=False)
    assert saved.learning_rate == pytest.approx(5e-4 * 8 / 512) and saved.weight_decay == 0.01
    assert saved.repeated_augmentations == 3 and saved.lr_scheduler_type == "cosine"
    assert json.loads((out / "config.json").read_text())["drop_path_rate"] == 0.1


@pytest.mark.parametrize(
    "cpus, processes, cuda, expected",
    [(16, 1, True, 15), (2, 1, True, 1), (1, 1, True, 0), (64, 2, True, 16), (None, 1, True, 0), (16, 1, False, 0)],
)
def test_default_workers_use_the_spare_cpus_on_cuda(cpus, processes, cuda, expected):
    assert default_num_workers(cpus, processes, cuda) == expected


def test_loader_defaults_use_the_machine_unless_given(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    on_cpu = with_loader_defaults(make_config(tmp_path))
    assert on_cpu.dataloader_num_workers == 0 and not on_cpu.dataloader_persistent_workers
    assert on_cpu.dataloader_pin_memory is False  # nothing to pin for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (TrainingArguments would look for the device)
    args = with_loader_defaults(LoaderFields())
    assert args.dataloader_num_workers == 7 and args.dataloader_persistent_workers and args.dataloader_pin_memory
    given = with_loader_defaults(LoaderFields(dataloader_num_workers=2), explicit={"dataloader_num_workers"})
    assert given.dataloader_num_workers == 2 and given.dataloader_persistent_workers


@dataclasses.dataclass
class LoaderFields:
    """The fields of TrainingArguments that the loader defaults read and set."""

    use_cpu: bool = False
    world_size: int = 1
    dataloader_num_workers: int = 0
    dataloader_persistent_workers: bool = False
    dataloader_pin_memory: bool = True


def test_recipes_are_documented_in_the_cli_page():
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for name in RECIPES:
        assert f"--recipe {name}" in page
    assert "rand-m9-mstd0.5-inc1" in page
