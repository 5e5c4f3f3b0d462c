#!/usr/bin/env python
"""The levers behind ``benchmarks.datafree``'s data-free student settings, one at a time, on one seed.

Each lever is a generated set (``examples/generate.py`` from ``benchmarks.datafree``'s full-data teacher of the
seed) and a data-free DearKD student trained on it alone (``examples/run.py``, the data-efficiency student, soft
KD), evaluated on the real test set. The levers change one thing after another, from the previous session's
``fast_bpid`` setting towards the one ``benchmarks.datafree`` now uses: distillation to the end, mixup/CutMix between
generated images, 10x the images, more synthesis steps, a longer meta-learned warm-up, the label term's weight, and
the teacher's probabilities as the label term's targets (run.py ``--teacher_labels``). One seed: this chooses the
settings; ``benchmarks.datafree`` measures them over seeds. Writes ``results/datafree_levers.{json,md}``; a lever
already in the JSON is skipped.

    python -m benchmarks.datafree_levers                  # every lever, seed 0: about 50 min on one CPU core
    python -m benchmarks.datafree_levers --levers mix big # some of them
    python -m benchmarks.datafree_levers --quick          # tiny models and sets: a smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from benchmarks.data_efficiency import BY_NAME, RESULTS_DIR, Results, Runner, run_config
from benchmarks.datafree import parse_args as datafree_args


class Lever(NamedTuple):
    """A generated set (``images``, generate.py ``synthesis`` flags, ``bpid``) and its student (``epochs``, run.py
    ``student`` flags, distillation stopping at ``stop_fraction`` of the run)."""

    description: str
    images: int
    epochs: float
    synthesis: dict[str, Any]
    bpid: bool
    student: tuple[str, ...]
    stop_fraction: float


FAST = dict(method="fast", fast_steps=2, fast_warmup=40, fast_width=8)
WARM = FAST | dict(fast_warmup=200)
MIX = ("--mixup=0.8", "--cutmix=1.0")
LEVERS = {
    "nostage2": Lever("fast_bpid, distillation to the end", 2560, 30, FAST, True, (), 1.0),
    "mix": Lever("+ mixup/CutMix", 2560, 30, FAST, True, MIX, 1.0),
    "big": Lever("nostage2 on 25,600 images, 5 epochs", 25600, 5, FAST, True, (), 1.0),
    "steps5": Lever("nostage2 with 5 synthesis steps", 2560, 30, FAST | dict(fast_steps=5), True, (), 1.0),
    "di": Lever("DeepInversion, distillation to the end", 2560, 30, {}, False, (), 1.0),
    "mix_w200": Lever("mix, warm-up of 200 tasks", 2560, 30, WARM, True, MIX, 1.0),
    "mix_w200_nobpid": Lever("mix_w200 without BPID", 2560, 30, WARM, False, MIX, 1.0),
    "mix_a09": Lever("mix, alpha 0.9", 2560, 30, FAST, True, (*MIX, "--alpha=0.9"), 1.0),
    "big_a09_w200": Lever("mix_a09, warm-up 200, 25,600 images", 25600, 5, WARM, True, (*MIX, "--alpha=0.9"), 1.0),
    "mix_tl": Lever("mix, teacher labels", 2560, 30, FAST, True, (*MIX, "--teacher_labels=true"), 1.0),
    "big_tl_w200": Lever(
        "mix_tl, warm-up 200, 25,600 images (benchmarks.datafree's fast_bpid)",
        25600,
        5,
        WARM,
        True,
        (*MIX, "--teacher_labels=true"),
        1.0,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datafree_levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Tiny models, 16 images, 1 epoch per lever.")
    parser.add_argument("--work_dir", default=None, help="Default: benchmarks.datafree's (its teachers are reused).")
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument("--overwrite", action="store_true", help="Discard results made with another config.")
    return parser.parse_args(argv)


def benchmark(args: argparse.Namespace, images: int) -> argparse.Namespace:
    """benchmarks.datafree's data-efficiency setting, making ``images`` images per set."""
    flags = [f"--num_generated={images}"] + (["--quick", "--gen_batch_size=8"] if args.quick else [])
    flags += [f"--work_dir={args.work_dir}"] if args.work_dir else []
    return datafree_args(flags).bench


def run_lever(args: argparse.Namespace, name: str) -> dict[str, Any]:
    lever = LEVERS[name]
    images, epochs = (16, 1.0) if args.quick else (lever.images, lever.epochs)
    runner = Runner(benchmark(args, images))
    start = time.perf_counter()
    dataset = runner.generated_set(1.0, args.seed, lever.bpid, lever.synthesis)
    synthesis_s = time.perf_counter() - start
    runner.student_flags = list(lever.student)
    dearkd = BY_NAME["dearkd"]
    start = time.perf_counter()
    accuracy = runner.student_row(
        f"lever-{name}",
        1.0,
        args.seed,
        beta=dearkd.beta,
        stop_epoch=lever.stop_fraction * epochs,
        mhca=dearkd.mhca,
        epochs=epochs,
        dataset=dataset,
    )
    return {
        "method": name,  # the results key
        "train_fraction": 1.0,
        "seed": args.seed,
        "description": lever.description,
        "num_images": images,
        "epochs": epochs,
        "synthesis": {**lever.synthesis, "bpid": lever.bpid},
        "student_flags": list(lever.student),
        "stop_fraction": lever.stop_fraction,
        "accuracy": accuracy,
        "synthesis_s": synthesis_s,
        "train_s": time.perf_counter() - start,
    }


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    lines = [
        "# Data-free student levers (one seed, Fashion-MNIST test accuracy, %)",
        "",
        "Generated by `python -m benchmarks.datafree_levers`; every row is one generated set and one student.",
        "",
        "| lever | what changes | images | epochs | synthesis | student flags | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        synthesis = ", ".join(f"{k}={v}" for k, v in row["synthesis"].items()) or "deepinversion"
        lines.append(
            f"| {row['method']} | {row['description']} | {row['num_images']} | {row['epochs']:g} | {synthesis} | "
            f"{' '.join(row['student_flags']) or '-'} | {100 * row['accuracy']:.2f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    prefix = "datafree_levers_quick" if args.quick else "datafree_levers"
    results_dir = Path(args.results_dir)
    config = {**run_config(benchmark(args, 0)), "num_generated": None}  # each row has its own number of images
    results = Results(results_dir / f"{prefix}.json", config, args.overwrite)
    for name in args.levers:
        if not results.has(name, 1.0, args.seed):
            print(f"lever {name}", flush=True)
            results.add(run_lever(args, name))
            write_table(results.rows, results_dir / f"{prefix}.md")
    write_table(results.rows, results_dir / f"{prefix}.md")
    return {"config": results.config, "rows": results.rows}


if __name__ == "__main__":
    main()
