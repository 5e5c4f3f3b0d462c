"""data.py: the stratified fraction, loading and its errors, transforms and collators, on tiny datasets."""

from collections import Counter

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from dearkd_hf.data import loading as data
from dearkd_hf.data.collators import MixupCollator, collate_fn
from dearkd_hf.data.loading import (
    DataTrainingArguments,
    load_image_datasets,
    stratified_fraction,
    train_collator,
)
from dearkd_hf.data.transforms import build_transforms, processor_normalization, with_transforms

NAMES = ["a", "b", "c", "d"]


def labelled(counts: list[int]) -> Dataset:
    """An image-free dataset with `counts[c]` examples of class c and an `idx` column to identify them."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    features = Features({"idx": Value("int64"), "label": ClassLabel(names=NAMES[: len(counts)])})
    return Dataset.from_dict({"idx": list(range(len(labels))), "label": labels}, features=features)


def image_dataset(per_class: int, mode: str = "L", columns: tuple[str, str] = ("image", "label")) -> Dataset:
    rng = np.random.default_rng(0)
    shape = (8, 8) if mode == "L" else (8, 8, 3)
    images = [PILImage.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode) for _ in NAMES * per_class]
    labels = [c for c in range(len(NAMES)) for _ in range(per_class)]
    features = Features({columns[0]: Image(), columns[1]: ClassLabel(names=NAMES)})
    return Dataset.from_dict({columns[0]: images, columns[1]: labels}, features=features)


def test_stratified_fraction_keeps_exact_share_of_each_class():
    dataset = labelled([100, 50, 30, 3])
    subset = stratified_fraction(dataset, 0.1, seed=0)
    assert Counter(subset["label"]) == {0: 10, 1: 5, 2: 3, 3: 1}  # at least one of each class
    assert list(subset["idx"]) == sorted(subset["idx"])


def test_stratified_fraction_is_seeded():
    dataset = labelled([100, 50, 30])
    same = stratified_fraction(dataset, 0.1, seed=1)["idx"]
    assert list(stratified_fraction(dataset, 0.1, seed=1)["idx"]) == list(same)
    assert list(stratified_fraction(dataset, 0.1, seed=2)["idx"]) != list(same)


def test_train_fraction_on_embedded_dataset():
    dataset = load_image_datasets(DataTrainingArguments(train_fraction=0.1), seed=42)
    assert set(Counter(dataset["train"]["label"]).values()) == {50}
    assert len(dataset["validation"]) == 1000  # the embedded test split, untouched
    assert dataset["train"].features["label"].names[0] == "T-shirt/top"
    assert not list(data.EMBEDDED_DATASET.glob("*/cache-*.arrow"))  # nothing written into the repository


def test_missing_column_names_existing_columns(tmp_path):
    DatasetDict({"train": image_dataset(2, columns=("img", "y"))}).save_to_disk(tmp_path)
    with pytest.raises(ValueError, match=r"'image'.*\['img', 'y'\].*--image_column_name"):
        load_image_datasets(DataTrainingArguments(dataset_name=str(tmp_path)), seed=0)
    args = DataTrainingArguments(dataset_name=str(tmp_path), image_column_name="img", label_column_name="y")
    dataset = load_image_datasets(args, seed=0)
    assert dataset["train"].column_names == ["image", "label"]


def test_missing_dataset_folder_fails_before_loading(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("tried to load a dataset")

    monkeypatch.setattr(data, "load_dataset", never)
    monkeypatch.setattr(data, "load_from_disk", never)
    with pytest.raises(FileNotFoundError, match="--dataset_name ./no/such/folder: no such folder"):
        load_image_datasets(DataTrainingArguments(dataset_name="./no/such/folder"), seed=0)


def test_validation_split_is_stratified_and_seeded(tmp_path):
    DatasetDict({"train": image_dataset(10)}).save_to_disk(tmp_path)
    args = DataTrainingArguments(dataset_name=str(tmp_path), train_val_split=0.2)
    dataset = load_image_datasets(args, seed=0)
    assert Counter(dataset["validation"]["label"]) == dict.fromkeys(range(4), 2)
    assert len(dataset["train"]) == 32


def test_eval_dataset_name_supplies_the_evaluation_split(tmp_path):
    DatasetDict({"train": image_dataset(3)}).save_to_disk(tmp_path / "train")
    DatasetDict({"test": image_dataset(1)}).save_to_disk(tmp_path / "held_out")
    args = DataTrainingArguments(dataset_name=str(tmp_path / "train"), eval_dataset_name=str(tmp_path / "held_out"))
    dataset = load_image_datasets(args, seed=0)
    assert (len(dataset["train"]), len(dataset["validation"])) == (12, 4)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("mode", "channels"), [("L", 3), ("L", 1), ("RGB", 1)])
def test_transforms_give_model_channels(train, mode, channels):
    transform = build_transforms(16, (0.5,) * channels, (0.5,) * channels, channels, train=train, rand_augment=train)
    out = transform({"image": list(image_dataset(1, mode=mode)["image"]), "label": [0, 1, 2, 3]})
    assert out["pixel_values"][0].shape == (channels, 16, 16)
    assert out["pixel_values"][0].dtype == torch.float32
    assert out["labels"] == [0, 1, 2, 3]


def test_with_transforms_and_collate():
    dataset = with_transforms(
        DatasetDict({"train": image_dataset(2), "validation": image_dataset(1)}), 8, *([0.5],) * 2, 1
    )
    batch = collate_fn([dataset["validation"][i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 1, 8, 8)
    assert batch["labels"].dtype == torch.long


def test_collate_without_labels_stacks_the_images_only():
    """Images to predict on have no labels: the batch is the images alone (the Trainer's predict path)."""
    batch = collate_fn([{"pixel_values": torch.rand(1, 8, 8)} for _ in range(3)])
    assert set(batch) == {"pixel_values"} and batch["pixel_values"].shape == (3, 1, 8, 8)


def test_mixup_collator_gives_soft_targets_summing_to_one():
    examples = [{"pixel_values": torch.rand(1, 8, 8), "labels": i % 4} for i in range(5)]  # odd batch
    batch = MixupCollator(mixup=0.8, cutmix=1.0, num_classes=4, label_smoothing=0.1)(examples)
    assert batch["labels"].shape == (5, 4)
    assert batch["labels"].dtype == torch.float32
    assert torch.allclose(batch["labels"].sum(dim=1), torch.ones(5))
    assert batch["pixel_values"].shape == (5, 1, 8, 8)


def test_train_collator_is_plain_without_mixup():
    assert train_collator(DataTrainingArguments(), 4) is collate_fn
    assert isinstance(train_collator(DataTrainingArguments(mixup=0.2), 4), MixupCollator)


def test_normalization_fits_channels():
    processor = type("Processor", (), {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    assert processor_normalization(processor, 1) == (pytest.approx([0.2]), pytest.approx([0.5]))  # their mean (timm)
    assert processor_normalization(None, 3, fallback=(0.5,)) == ([0.5] * 3, [0.5] * 3)
    assert processor_normalization(None, 3) == (None, None)  # the trainer then feeds the teacher the batch as it is
    assert processor_normalization(type("Gray", (), {"image_mean": [0.2], "image_std": [0.3]}), 3) == (
        [0.2] * 3,
        [0.3] * 3,
    )
    timm_processor = type("TimmProcessor", (), {"data_config": {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}})
    assert processor_normalization(timm_processor, 3) == (
        pytest.approx([0.1, 0.2, 0.3]),
        pytest.approx([0.4, 0.5, 0.6]),
    )


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="train_fraction"):
        DataTrainingArguments(train_fraction=0.0)


@pytest.fixture
def folders_with_a_corrupt_image(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for name in NAMES[:2]:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                image = PILImage.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L")
                image.save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return DataTrainingArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))


def test_a_corrupt_image_is_named_when_met(folders_with_a_corrupt_image):
    dataset = load_image_datasets(folders_with_a_corrupt_image, seed=0)
    train = with_transforms(dataset, 8, [0.5], [0.5], 1)["train"]
    assert len(train) == 9
    with pytest.raises(ValueError, match=r"Image .*bad\.png cannot be decoded .*--verify_images"):
        collate_fn([train[i] for i in range(len(train))])


def test_verify_images_skips_and_counts_corrupt_images(folders_with_a_corrupt_image, caplog):
    folders_with_a_corrupt_image.verify_images = True
    with caplog.at_level("WARNING"):
        dataset = load_image_datasets(folders_with_a_corrupt_image, seed=0)
    assert "skipping 1 of 9 train images that cannot be decoded" in caplog.text and "bad.png" in caplog.text
    train = with_transforms(dataset, 8, [0.5], [0.5], 1)["train"]
    assert collate_fn([train[i] for i in range(len(train))])["pixel_values"].shape == (8, 1, 8, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_train_samples=0), "--max_train_samples must be >= 1"),
        (dict(max_eval_samples=-1), "--max_eval_samples must be >= 1"),
        (dict(mixup=float("nan")), "--mixup=nan is not a finite number"),
        (dict(train_fraction=float("inf")), "--train_fraction=inf is not a finite number"),
    ],
)
def test_bad_numbers_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataTrainingArguments(**kwargs)


def test_label_kwargs_name_every_class_both_ways():
    from dearkd_hf.data.loading import label_kwargs

    assert label_kwargs(["cat", "dog"]) == {
        "num_labels": 2,
        "id2label": {0: "cat", 1: "dog"},
        "label2id": {"cat": 0, "dog": 1},
    }
