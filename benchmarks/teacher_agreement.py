#!/usr/bin/env python
"""How often the data-efficiency teachers' hard labels equal the true labels on their own training images.

DeiT's hard distillation trains the distillation token on ``argmax teacher(x)``. Where that equals the label for
nearly every training view, hard KD repeats the labels and cannot add much over training on labels alone; this script
measures that share, for clean training images (the evaluation transform) and for the training augmentation (the
views the students actually see, ``--views`` random draws per image). It reads the teachers that
``python -m benchmarks.data_efficiency`` leaves in its work dir and writes ``results/teacher_agreement.json``.

    python -m benchmarks.teacher_agreement
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402

from dearkd_hf import load_teacher  # noqa: E402
from dearkd_hf.collators import collate_fn  # noqa: E402
from dearkd_hf.data import stratified_fraction  # noqa: E402
from dearkd_hf.transforms import build_transforms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "benchmarks" / "data_efficiency"))
    parser.add_argument("--dataset_dir", default=str(ROOT / "outputs" / "fashion_mnist_full"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--views", type=int, default=2, help="Augmented draws per training image.")
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--output", default=str(RESULTS_DIR / "teacher_agreement.json"))
    return parser.parse_args(argv)


@torch.no_grad()
def agreement(teacher, dataset: datasets.Dataset, train: bool, image_size: int, views: int) -> float:
    """Share of (image, view) pairs whose teacher argmax is the image's label."""
    transform = build_transforms(image_size, teacher.mean, teacher.std, len(teacher.mean), train=train)
    data = dataset.with_transform(transform)
    loader = torch.utils.data.DataLoader(data, batch_size=500, collate_fn=collate_fn)
    hits = total = 0
    for _ in range(views if train else 1):
        for batch in loader:
            predictions = teacher.logits(batch["pixel_values"]).argmax(-1)
            hits += (predictions == batch["labels"]).sum().item()
            total += len(predictions)
    return hits / total


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    train = datasets.load_from_disk(args.dataset_dir)["train"]
    rows = []
    for fraction in args.fractions:
        for seed in args.seeds:
            folder = Path(args.work_dir) / f"teacher-f{fraction}-s{seed}"
            if not (folder / "DONE").is_file():
                raise SystemExit(f"{folder} has no finished teacher: run python -m benchmarks.data_efficiency first.")
            teacher = load_teacher(str(folder))
            subset = stratified_fraction(train, fraction, seed)  # the images that teacher and students trained on
            row = {
                "train_fraction": fraction,
                "seed": seed,
                "train_images": len(subset),
                "clean": agreement(teacher, subset, False, args.image_size, args.views),
                "augmented": agreement(teacher, subset, True, args.image_size, args.views),
            }
            rows.append(row)
            print(
                f"fraction {fraction:>4} seed {seed}: teacher argmax == label on {100 * row['clean']:.1f}% of clean "
                f"and {100 * row['augmented']:.1f}% of augmented training images",
                flush=True,
            )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"views": args.views, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
