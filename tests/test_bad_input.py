"""Bad input a new user met: each stops with one error naming the flag (or the data) at fault and
the fix, before any expensive work where the input allows it, instead of a library's traceback, a wrong cause or a
silent run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
from helpers import example_script, make_dataset, make_resnet_teacher, make_vit
from PIL import Image as PILImage
from transformers import AutoConfig, ResNetConfig, ResNetForImageClassification, TrainingArguments

from dearkd_hf import DearKDConfig, DearKDTrainer
from dearkd_hf.alignment_pairs import parse_alignment_pairs, resolve_alignment_pairs
from dearkd_hf.runs.finite_checks import check_finite_loss

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "hidden_size=16,num_hidden_layers=2,num_attention_heads=2,intermediate_size=32,patch_size=4"


run_script = example_script("run")
train_teacher = example_script("train_teacher")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    """A tiny grayscale ResNet with ten classes named 0..9."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10
    )
    ResNetForImageClassification(config).save_pretrained(folder)
    return str(folder)


def run_args(teacher: str, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--teacher_model_name_or_path", teacher, "--config_overrides", STUDENT, "--image_size", "28",
        "--max_train_samples", "16", "--max_eval_samples", "8", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def images(n: int, mode: str = "L") -> list[PILImage.Image]:
    rng = np.random.default_rng(0)
    if mode == "F":
        return [PILImage.fromarray(rng.random((28, 28), dtype=np.float32) * 255) for _ in range(n)]
    return [PILImage.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode=mode) for _ in range(n)]


# ---- the data ----


def test_an_empty_saved_dataset_names_dataset_name(tmp_path, teacher_dir):
    folder = tmp_path / "empty"
    Dataset.from_dict({"image": [], "label": []}).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=rf"--dataset_name {folder}: .*no examples"):
        run_script.main(run_args(teacher_dir, tmp_path / "out", "--dataset_name", str(folder)))


def test_an_empty_split_names_its_flag(tmp_path, teacher_dir):
    """A dataset that loads but whose train split has no rows (a filter that kept nothing, say)."""
    folder = tmp_path / "filtered"
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    dataset = Dataset.from_dict({"image": images(4), "label": [0, 1, 0, 1]}, features=features)
    dataset.filter(lambda example: example["label"] > 5).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=rf"--dataset_name {folder}: .*train split .*no examples"):
        run_script.main(run_args(teacher_dir, tmp_path / "out", "--dataset_name", str(folder)))


@pytest.mark.parametrize("content", ["nothing", "no images"])
def test_an_image_folder_without_images_names_train_dir(tmp_path, teacher_dir, content):
    folder = tmp_path / "train"
    (folder / "cat").mkdir(parents=True)
    if content == "no images":
        (folder / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=rf"--train_dir {folder}: no images .*one subfolder per class"):
        run_script.main(run_args(teacher_dir, tmp_path / "out", "--train_dir", str(folder)))


def test_integer_labels_with_a_gap_are_named_not_taken_as_more_classes(tmp_path, teacher_dir):
    """0..9 and one stray 12, as plain integers: not 13 classes (and then a teacher 'with the wrong labels')."""
    folder = tmp_path / "stray"
    labels = list(range(10)) * 3 + [12]
    features = Features({"image": Image(), "label": Value("int64")})
    Dataset.from_dict({"image": images(len(labels)), "label": labels}, features=features).save_to_disk(str(folder))
    with pytest.raises(
        ValueError, match=r"--label_column_name.*\[0, 1, .*, 9, 12\] are not 0\.\.N-1 \(10, 11 missing\).*ClassLabel"
    ) as error:
        run_script.main(run_args(teacher_dir, tmp_path / "out", "--dataset_name", str(folder)))
    assert "teacher" not in str(error.value)


def test_float_images_holding_nan_are_named_where_they_are_opened(tmp_path, teacher_dir):
    """A float (mode F) TIFF with a NaN pixel: converted to 8 bits the NaN silently became 0 and the run trained."""
    folder = tmp_path / "float_images"
    pictures = images(16, mode="F")
    pixels = np.asarray(pictures[5]).copy()
    pixels[3, 3] = np.nan
    pictures[5] = PILImage.fromarray(pixels)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    labels = [i % 10 for i in range(16)]
    Dataset.from_dict({"image": pictures, "label": labels}, features=features).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=r"Image .* holds NaN/inf pixel values \(1 of 784\).*--verify_images"):
        run_script.main(
            run_args(teacher_dir, tmp_path / "out", "--dataset_name", str(folder), "--train_val_split", "0.25")
        )


# ---- non-finite inputs: the data named, not the learning rate ----


def nan_pixels_dataset() -> Dataset:
    dataset = make_dataset(16).with_format(None)
    pixels = np.asarray(dataset["pixel_values"], dtype=np.float32)
    pixels[3, 0, 2, 2] = np.nan
    return Dataset.from_dict({"pixel_values": pixels, "labels": dataset["labels"]}).with_format("torch")


def test_check_finite_loss_blames_non_finite_inputs():
    loss = torch.tensor(float("nan"))
    inputs = {"pixel_values": torch.tensor([[1.0, float("inf")]]), "labels": torch.tensor([0])}
    with pytest.raises(FloatingPointError, match=r"pixel_values holds NaN/inf \(1 of 2 values\)") as error:
        check_finite_loss(loss, 7, {"loss_ce": loss}, inputs)
    assert "learning rate" not in str(error.value)
    with pytest.raises(FloatingPointError, match="Lower the learning rate"):  # finite inputs: the old cause stands
        check_finite_loss(loss, 7, {"loss_ce": loss}, {"pixel_values": torch.ones(2)})


def test_nan_pixels_through_the_trainer_name_the_data(tmp_path):
    args = DearKDConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=16, report_to="none", use_cpu=True
    )
    trainer = DearKDTrainer(
        model=make_vit(), teacher_model=make_resnet_teacher(), args=args, train_dataset=nan_pixels_dataset()
    )
    with pytest.raises(FloatingPointError, match=r"Training step 1: .*pixel_values holds NaN/inf") as error:
        trainer.train()
    assert "learning rate" not in str(error.value)


def test_nan_pixels_through_the_teacher_trainer_name_the_data(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=16,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
    )
    trainer = train_teacher.TeacherTrainer(model=make_resnet_teacher(), args=args, train_dataset=nan_pixels_dataset())
    with pytest.raises(FloatingPointError, match=r"Training step 1: .*pixel_values holds NaN/inf"):
        trainer.train()


# ---- flags ----


@pytest.mark.parametrize("flag", ["per_device_train_batch_size", "per_device_eval_batch_size"])
def test_a_batch_size_below_one_is_refused_at_argument_checking(tmp_path, teacher_dir, flag):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{flag}=0 must be >= 1"):
        run_script.main(run_args(teacher_dir, out, f"--{flag}", "0"))
    assert not out.exists()  # before the data, the models or the folder
    with pytest.raises(ValueError, match=rf"--{flag}=0 must be >= 1"):
        train_teacher.main(["--output_dir", str(out), f"--{flag}", "0"])
    assert not out.exists()


def test_duplicate_alignment_pairs_are_refused_naming_the_pair():
    with pytest.raises(ValueError, match=r"'1:layer1' is given twice"):
        parse_alignment_pairs(["1:layer1", "1:layer1"])
    with pytest.raises(ValueError, match=r"'2:layer1' is given twice"):
        parse_alignment_pairs("2:layer1, 2:layer1")
    with pytest.raises(ValueError, match=r"'1:layer1' is given twice"):
        DearKDConfig(output_dir="unused", alignment_pairs=["1:layer1", "3:layer2", "1: layer1"])
    pairs = resolve_alignment_pairs(
        ["1:layer1", "1:layer2", "2:layer1"], 2, ["layer1", "layer2"], ["layer1", "layer2"]
    )
    assert [str(pair) for pair in pairs] == ["1:layer1", "1:layer2", "2:layer1"]  # one block or layer twice is fine


VIT_TEACHER = "hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=32,patch_size=4"


def teacher_args(output_dir: Path, overrides: str, image_size: str = "28") -> list[str]:
    return [
        "--model_type", "vit", "--config_overrides", overrides, "--image_size", image_size,
        "--max_train_samples", "16", "--max_eval_samples", "8", "--max_steps", "1",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--output_dir", str(output_dir),
    ]  # fmt: skip


def test_train_teacher_model_type_vit_trains_at_the_training_size(tmp_path, caplog):
    """Built for --image_size (its default 224 failed at step 1), and told that run.py takes no ViT teacher."""
    out = tmp_path / "vit"
    train_teacher.main(teacher_args(out, VIT_TEACHER))
    assert AutoConfig.from_pretrained(out).image_size == 28
    assert "refuses it as --teacher_model_name_or_path" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "image_size", "message"),
    [
        (VIT_TEACHER.replace("patch_size=4", "patch_size=16"), "28", r"--image_size 28 .*patch_size=16.*patch_size=4"),
        (VIT_TEACHER + ",image_size=32", "28", r"image_size=32 .*--image_size 28"),
    ],
)
def test_train_teacher_model_type_vit_refuses_a_size_it_cannot_train(tmp_path, overrides, image_size, message):
    out = tmp_path / "vit"
    with pytest.raises(ValueError, match=message):
        train_teacher.main(teacher_args(out, overrides, image_size))
    assert not (out / "config.json").exists()
