#!/usr/bin/env python
"""Turn Debian's Fashion-MNIST IDX files into a `datasets.DatasetDict` saved with `save_to_disk`.

The default output is the small, class-balanced subset that ships inside the repository as the examples' default
dataset (`examples/data/fashion_mnist_small`), so that every example and test runs offline. `--full` writes all
60,000 / 10,000 images instead, for benchmarks (give it an `--output_dir` outside the repository).

    apt-get install dataset-fashion-mnist
    python examples/prepare_fashion_mnist.py                      # the embedded subset
    python examples/prepare_fashion_mnist.py --full --output_dir /data/fashion_mnist
"""

import gzip
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from transformers import HfArgumentParser

FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUTPUT_DIR = str(Path(__file__).resolve().parent / "data" / "fashion_mnist_small")
# IDX file stems per split; Debian ships them gzip-compressed.
SPLIT_FILES = {"train": "train", "test": "t10k"}


@dataclass
class PrepareArguments:
    """What to read, how much of it to keep, and where to write it."""

    source_dir: str = field(
        default=DEFAULT_SOURCE_DIR,
        metadata={
            "help": "Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (Debian: dataset-fashion-mnist)."
        },
    )
    output_dir: str = field(default=DEFAULT_OUTPUT_DIR, metadata={"help": "Where save_to_disk writes the dataset."})
    full: bool = field(default=False, metadata={"help": "Write all 60k/10k images instead of a balanced subset."})
    train_per_class: int = field(default=500, metadata={"help": "Training images kept per class (without --full)."})
    test_per_class: int = field(default=100, metadata={"help": "Test images kept per class (without --full)."})
    seed: int = field(default=42, metadata={"help": "Seed of the subset draw (the embedded subset is reproducible)."})


def idx_paths(source_dir: str, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of one split; fails with the install hint if they are missing."""
    stem = SPLIT_FILES[split]
    paths = (
        Path(source_dir) / f"{stem}-images-idx3-ubyte.gz",
        Path(source_dir) / f"{stem}-labels-idx1-ubyte.gz",
    )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST source files not found: {', '.join(missing)}. "
            "Install them with `apt-get install dataset-fashion-mnist`, or point --source_dir at a folder with them."
        )
    return paths


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX array of unsigned bytes (the only type Fashion-MNIST uses) with its stored shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # type code 0x08 = unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x}).")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` random indices of each class, sorted, so the subset is balanced and reproducible."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def build_split(images: np.ndarray, labels: np.ndarray, features: Features) -> Dataset:
    """A Dataset of 28x28 grayscale images; the Image feature stores them PNG-encoded, which keeps the folder small."""
    return Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


def prepare(args: PrepareArguments) -> DatasetDict:
    """Read both splits, subsample unless --full, and save the DatasetDict to args.output_dir."""
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_LABELS)})
    per_class = {"train": args.train_per_class, "test": args.test_per_class}
    splits = {}
    for split in SPLIT_FILES:
        images_path, labels_path = idx_paths(args.source_dir, split)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if not args.full:
            keep = balanced_indices(labels, per_class[split], args.seed)
            images, labels = images[keep], labels[keep]
        splits[split] = build_split(images, labels, features)
    dataset = DatasetDict(splits)
    dataset.save_to_disk(args.output_dir)
    # `datasets` writes cache-*.arrow files next to loaded data when it shuffles or splits it: keep them out of git.
    (Path(args.output_dir) / ".gitignore").write_text("cache-*.arrow\n")
    return dataset


def main(argv: list[str] | None = None) -> DatasetDict:
    parser = HfArgumentParser(PrepareArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    dataset = prepare(args)
    print(f"Wrote {dataset} to {args.output_dir}")
    return dataset


if __name__ == "__main__":
    main(sys.argv[1:])
