"""Image-classification data for the examples: loading, the stratified train fraction, and the collator the flags
ask for. Transforms live in :mod:`dearkd_hf.data.transforms`, collators in :mod:`dearkd_hf.data.collators`; the trainer
imports nothing from here.

DearKD is about data efficiency, so the one knob that matters most here is `train_fraction`: a stratified, seeded
subset of the training split, identical across runs with the same seed so that students trained on "10% of the
data" are comparable. Everything else follows transformers' `run_image_classification.py` example.

Datasets are transformed lazily (`with_transform`), so random augmentation is drawn afresh every epoch. Such
datasets still carry the raw `image` column that the transform reads: train with `remove_unused_columns=False`.
"""

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset, load_from_disk

from ..hub.lookup import looks_like_local_path
from ..runs.finite_checks import require_finite
from .collators import Collator, MixupCollator, collate_fn
from .recipes import get_recipe
from .transforms import open_image

logger = logging.getLogger(__name__)

# Written by examples/prepare_fashion_mnist.py and committed (in a source checkout: src/dearkd_hf/data/loading.py ->
# the repository root -> examples/data), so the examples, tests and quick benchmarks run offline.
EMBEDDED_DATASET = Path(__file__).resolve().parents[3] / "examples" / "data" / "fashion_mnist_small"

EVAL_SPLITS = ("validation", "test")


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on and how to augment it; parsed by `HfArgumentParser` in the examples."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset name, or a folder written by `save_to_disk` (or any local folder `load_dataset` "
            "reads). Default: the embedded Fashion-MNIST subset (examples/data/fashion_mnist_small)."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration name of the dataset to use (via the datasets library)."}
    )
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder with the training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder with the evaluation images."})
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A separate dataset to evaluate on (its `validation` or `test` split), e.g. real held-out images "
            "when training on images generated from the teacher."
        },
    )
    image_column_name: str = field(default="image", metadata={"help": "The dataset column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The dataset column holding the labels."})
    train_val_split: float = field(
        default=0.15,
        metadata={"help": "Fraction of train split off for evaluation, only when there is no validation/test split."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "For debugging or quicker training, keep at most this many training examples."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "For debugging or quicker evaluation, keep at most this many eval examples."}
    )
    train_fraction: float = field(
        default=1.0,
        metadata={"help": "Train on this fraction of each class (a stratified subset, fixed by --seed); in (0, 1]."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Input resolution; default: the model's (config.image_size or its processor)."}
    )
    rand_augment: bool = field(default=False, metadata={"help": "Add RandAugment to the training transforms."})
    recipe: str | None = field(
        default=None,
        metadata={
            "help": "A training recipe by name (dearkd_hf.data.recipes.RECIPES), e.g. 'deit': its augmentation, "
            "optimizer, schedule and drop path; flags given explicitly win over its values."
        },
    )
    verify_images: bool = field(
        default=False,
        metadata={
            "help": "Decode every image once before training and skip (with a warning naming them) those that cannot "
            "be decoded or hold NaN/inf pixels. Off, such an image stops training with an error naming its file."
        },
    )
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha (0 = off). Labels become soft targets."})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha (0 = off). Labels become soft targets."})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Label smoothing of the soft targets built by the mixup/cutmix collator."}
    )

    def __post_init__(self) -> None:
        require_finite(self, prefix="--")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"--image_size must be >= 1 (leave it unset for the model's own), got {self.image_size}.")
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag} must be >= 1 (leave it unset to keep every example), got {value}.")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"--train_fraction must be in (0, 1], got {self.train_fraction}.")
        if not 0.0 < self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split must be in (0, 1), got {self.train_val_split}.")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("--mixup and --cutmix are Beta-distribution alphas: use 0 (off) or a positive value.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        get_recipe(self.recipe)  # an unknown name fails here, listing the known ones

    def live_augmentation_flags(self) -> list[str]:
        """The flags given that draw new augmentation every batch beyond the default crop and flip (RandAugment, a
        recipe's transforms, mixup, CutMix): what a teacher cache cannot replay."""
        given = {"--rand_augment": self.rand_augment, "--recipe": self.recipe is not None}
        given.update({"--mixup": self.mixup > 0, "--cutmix": self.cutmix > 0})
        return [flag for flag, on in given.items() if on]

    def training_fields(self) -> dict[str, Any]:
        """The flags that decide what a model trains on (a run fingerprint's data, see ``BaseTrainer.run_data``);
        evaluation-only ones are left out, so that a re-run may evaluate differently."""
        evaluation_only = {"validation_dir", "eval_dataset_name", "max_eval_samples", "verify_images"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in evaluation_only}


def default_dataset_path() -> str:
    """The embedded Fashion-MNIST subset, so that a run without `--dataset_name` works offline out of the box."""
    if not EMBEDDED_DATASET.is_dir():
        raise FileNotFoundError(
            f"The embedded dataset {EMBEDDED_DATASET} is missing (it ships with a source checkout only). "
            "Recreate it with `python examples/prepare_fashion_mnist.py`, or pass --dataset_name."
        )
    return str(EMBEDDED_DATASET)


def load_named_dataset(
    name: str, config_name: str | None = None, flag: str = "--dataset_name", keep_in_memory: bool = False
) -> DatasetDict:
    """Load a `save_to_disk` folder, another local folder, or a Hub dataset, failing early on a missing path.

    The path check comes first so that a typo fails at once with the flag's name, instead of after a Hub lookup.
    `keep_in_memory` stops `datasets` from writing cache files next to a `save_to_disk` folder's data.
    """
    if looks_like_local_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{flag} {name}: no such folder; pass a folder written by `save_to_disk`, an imagefolder, "
                "or a Hub dataset name."
            )
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            for split in _empty_saved_splits(path):
                raise ValueError(
                    f"{flag} {name}: its {split} split holds no examples (it was saved empty). Save the dataset "
                    "with its examples, or drop the empty split, or pass another dataset."
                )
            # The embedded subset lives in the repository: however named, keep it in memory so no cache lands there.
            in_repo = path.resolve() == EMBEDDED_DATASET.resolve()
            dataset = load_from_disk(str(path), keep_in_memory=keep_in_memory or in_repo)
        else:
            dataset = load_dataset(str(path), config_name)
    else:
        dataset = load_dataset(name, config_name)
    return dataset if isinstance(dataset, DatasetDict) else DatasetDict({"train": dataset})


def _empty_saved_splits(path: Path) -> list[str]:
    """The splits of a ``save_to_disk`` folder saved with no data files (no examples): ``load_from_disk`` fails on
    them with an IndexError from deep inside ``datasets``."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # load_from_disk says what is wrong with it
        folders = [(str(split), path / str(split)) for split in splits]
    else:
        folders = [("train", path)]
    empty = []
    for split, folder in folders:
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("_data_files") == []:
            empty.append(split)
    return empty


def _load_imagefolders(train_dir: str | None, validation_dir: str | None) -> DatasetDict:
    """Imagefolder splits (one subfolder per class) from --train_dir / --validation_dir."""
    data_files = {}
    for split, folder, flag in (
        ("train", train_dir, "--train_dir"),
        ("validation", validation_dir, "--validation_dir"),
    ):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such folder.")
        if not _holds_an_image(Path(folder)):
            raise ValueError(
                f"{flag} {folder}: no images (.png, .jpg, .tif, ... files) in it or its subfolders. Put the "
                f"images in one subfolder per class ({folder}/cat/1.png, {folder}/dog/2.png, ...), or pass the "
                "folder that holds them."
            )
        data_files[split] = os.path.join(folder, "**")
    return load_dataset("imagefolder", data_files=data_files)


def _image_extensions() -> set[str]:
    """What an imagefolder reads: datasets' list when it can be imported, else the common formats."""
    try:
        from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

        return {ext.lower() for ext in ImageFolder.EXTENSIONS}
    except (ImportError, AttributeError):  # another datasets layout
        return {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}


def _holds_an_image(folder: Path) -> bool:
    """Whether ``folder`` or a subfolder holds a file an imagefolder reads (stops at the first one)."""
    extensions = _image_extensions()
    return any(path.suffix.lower() in extensions and path.is_file() for path in folder.rglob("*"))


def _standardize_columns(dataset: Dataset, image_column: str, label_column: str, split: str) -> Dataset:
    """Rename the image/label columns to `image`/`label`, naming the existing columns if one is missing."""
    for column, flag in ((image_column, "--image_column_name"), (label_column, "--label_column_name")):
        if column not in dataset.column_names:
            raise ValueError(
                f"Column '{column}' not found in the '{split}' split; its columns are {dataset.column_names}. "
                f"Pass the right one with {flag}."
            )
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    return dataset.rename_columns(renames) if renames else dataset


def _ensure_class_label(
    train: Dataset, evaluation: Dataset, source: str = "The dataset", column: str = "label"
) -> tuple[Dataset, Dataset]:
    """Give both splits the same ClassLabel, which models need for num_labels and id2label.

    Integer labels without a ClassLabel are taken as class ids 0..N-1: non-negative values with a gap (0..9 and a
    stray 12) are refused, naming them, rather than taken as 13 classes of which three have no example (negative
    values are left to :func:`_check_label_range`, which names them as unlabelled).
    """
    train_label, eval_label = train.features["label"], evaluation.features["label"]
    if isinstance(train_label, ClassLabel):
        if isinstance(eval_label, ClassLabel) and eval_label.names != train_label.names:
            raise ValueError(
                f"The evaluation labels {eval_label.names} differ from the training labels {train_label.names}."
            )
        return train, evaluation if eval_label == train_label else evaluation.cast_column("label", train_label)
    values = sorted(set(train.unique("label")) | set(evaluation.unique("label")))
    if all(isinstance(v, int) for v in values):
        ids = [v for v in values if v >= 0]
        missing = sorted(set(range(max(ids) + 1)) - set(ids)) if ids else []
        if missing:
            shown = ids if len(ids) <= 20 else [*ids[:10], "...", *ids[-5:]]
            gaps = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise ValueError(
                f"{source}: the labels in column '{column}' (--label_column_name) are integers without a ClassLabel "
                f"feature, and {shown} are not 0..N-1 ({gaps} missing): taken as class ids they would make "
                f"{max(ids) + 1} classes, some with no example. Give the column a ClassLabel feature "
                f"(dataset.cast_column('{column}', ClassLabel(names=[...]))) or relabel the examples 0..N-1."
            )
        class_label = ClassLabel(names=[str(i) for i in range(max(values) + 1)])
    else:
        class_label = ClassLabel(names=[str(v) for v in values])
    return train.cast_column("label", class_label), evaluation.cast_column("label", class_label)


def _require_examples(dataset: Dataset, source: str, split: str) -> None:
    """A split with no rows (a filter that kept nothing, say) refused here, naming where it came from, rather than
    failing on its first example deep inside ``datasets``."""
    if len(dataset) == 0:
        raise ValueError(
            f"{source}: its {split} split holds no examples. Pass a dataset whose {split} split has examples."
        )


def _check_label_range(dataset: Dataset, split: str, column: str) -> None:
    """Every label a class id in [0, num_classes): -1 (``datasets``' mark of an unlabelled example) or a larger id
    would fail in the loss at the first step."""
    num_classes = dataset.features["label"].num_classes
    outside = sorted(value for value in dataset.unique("label") if not 0 <= value < num_classes)
    if outside:
        raise ValueError(
            f"The {split} split has labels {outside[:5]} outside [0, {num_classes}) in column '{column}' "
            "(-1 marks an unlabelled example); drop those examples, or pass a labelled split or another "
            "--label_column_name."
        )


def _eval_split(dataset: DatasetDict, source: str) -> str:
    """The name of the evaluation split, preferring `validation` over `test`."""
    for split in EVAL_SPLITS:
        if split in dataset:
            return split
    raise ValueError(f"{source} has no validation or test split; its splits are {list(dataset)}.")


def split_off_validation(train: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split, stratified when the label is a ClassLabel so every class is evaluated.

    A dataset too small to stratify (fewer evaluation examples than classes) falls back to a plain split.
    """
    stratify = "label" if isinstance(train.features["label"], ClassLabel) else None
    try:
        split = train.train_test_split(test_size=val_fraction, seed=seed, stratify_by_column=stratify)
    except ValueError as error:
        if stratify is None:
            raise
        logger.warning(f"Cannot stratify the validation split ({error}); splitting without stratification.")
        split = train.train_test_split(test_size=val_fraction, seed=seed)
    return split["train"], split["test"]


def stratified_fraction(dataset: Dataset, fraction: float, seed: int, label_column: str = "label") -> Dataset:
    """Keep round(fraction * n_c) examples of each class c (at least one), drawn with `seed`.

    Stratifying keeps the class balance of small fractions exact, so data-efficiency curves measure the amount of
    data rather than sampling noise in the class mix; indices are sorted so the kept order is stable.
    """
    if fraction >= 1.0:
        return dataset
    labels = np.asarray(dataset[label_column])
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(fraction * len(members)))
        kept.append(rng.choice(members, size=count, replace=False))
    return dataset.select(np.sort(np.concatenate(kept)))


def _at_most(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """A seeded random subset of at most n examples, for debugging runs (--max_*_samples)."""
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def load_image_datasets(data_args: DataTrainingArguments, seed: int) -> DatasetDict:
    """The `train` and `validation` splits the examples train and evaluate on, with columns `image` and `label`.

    Evaluation data comes from --eval_dataset_name if given, else the dataset's validation/test split, else a seeded
    --train_val_split of train. --train_fraction and then --max_train_samples subsample the training split.
    """
    if data_args.train_dir is not None or data_args.validation_dir is not None:
        dataset = _load_imagefolders(data_args.train_dir, data_args.validation_dir)
        source = "--train_dir/--validation_dir"
        named = {
            "train": f"--train_dir {data_args.train_dir}",
            "validation": f"--validation_dir {data_args.validation_dir}",
        }
    else:
        source = data_args.dataset_name or default_dataset_path()
        dataset = load_named_dataset(source, data_args.dataset_config_name)
        named = {"train": f"--dataset_name {source}" if data_args.dataset_name else f"The embedded dataset {source}"}
    if "train" not in dataset:
        raise ValueError(f"{source} has no train split; its splits are {list(dataset)}.")

    columns = (data_args.image_column_name, data_args.label_column_name)
    train = _standardize_columns(dataset["train"], *columns, split="train")
    _require_examples(train, named["train"], "train")
    if data_args.eval_dataset_name is not None:
        eval_source = load_named_dataset(data_args.eval_dataset_name, flag="--eval_dataset_name")
        eval_split = _eval_split(eval_source, data_args.eval_dataset_name)
        evaluation = _standardize_columns(eval_source[eval_split], *columns, split=eval_split)
        _require_examples(evaluation, f"--eval_dataset_name {data_args.eval_dataset_name}", eval_split)
    elif any(split in dataset for split in EVAL_SPLITS):
        eval_split = _eval_split(dataset, source)
        evaluation = _standardize_columns(dataset[eval_split], *columns, split=eval_split)
        _require_examples(evaluation, named.get(eval_split, named["train"]), eval_split)
    else:
        train, evaluation = split_off_validation(train, data_args.train_val_split, seed)
    train, evaluation = _ensure_class_label(train, evaluation, named["train"], data_args.label_column_name)
    for split, part in (("train", train), ("evaluation", evaluation)):
        _check_label_range(part, split, data_args.label_column_name)
    if data_args.verify_images:
        train, evaluation = drop_undecodable(train, "train"), drop_undecodable(evaluation, "validation")

    train = stratified_fraction(train, data_args.train_fraction, seed)
    train = _at_most(train, data_args.max_train_samples, seed)
    evaluation = _at_most(evaluation, data_args.max_eval_samples, seed)
    return DatasetDict({"train": train, "validation": evaluation})


def drop_undecodable(dataset: Dataset, split: str, chunk: int = 256) -> Dataset:
    """The examples whose image decodes to finite pixels, warning with the count and the files of those skipped
    (--verify_images)."""
    if not isinstance(dataset.features.get("image"), Image):
        return dataset
    raw = dataset.cast_column("image", Image(decode=False))
    kept, skipped = [], []
    for start in range(0, len(raw), chunk):
        for offset, image in enumerate(raw[start : start + chunk]["image"]):
            try:
                open_image(image)
                kept.append(start + offset)
            except ValueError:
                skipped.append(image.get("path") or f"example {start + offset}")
    if skipped:
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        logger.warning(
            f"--verify_images: skipping {len(skipped)} of {len(dataset)} {split} images that cannot be decoded or "
            f"hold NaN/inf pixels: "
            f"{skipped[:10]}{more}."
        )
        return dataset.select(kept)
    return dataset


def label_names(dataset: Dataset) -> list[str]:
    """The class names of a dataset from `load_image_datasets`, for num_labels / id2label / label2id."""
    return list(dataset.features["label"].names)


def label_kwargs(labels: list[str]) -> dict[str, Any]:
    """The config keyword arguments that give a model these class names: num_labels, id2label, label2id."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def infer_num_channels(dataset: Dataset) -> int:
    """1 if the dataset's images are single-channel (grayscale), else 3; decides a from-scratch model's input."""
    mode = dataset[0]["image"].mode
    return 1 if mode in ("1", "L", "I", "I;16", "F") else 3


def train_collator(data_args: DataTrainingArguments, num_classes: int) -> Collator:
    """The training collator the data arguments ask for: soft targets only if mixup, cutmix or smoothing is on."""
    if data_args.mixup > 0 or data_args.cutmix > 0 or data_args.label_smoothing > 0:
        return MixupCollator(data_args.mixup, data_args.cutmix, num_classes, data_args.label_smoothing)
    return collate_fn
