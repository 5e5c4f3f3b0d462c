#!/usr/bin/env python
"""Which DeepInversion image priors make useful training images from a small 28 px teacher?

For each setting, ``examples/generate.py`` makes ``--num_images`` images from one data-efficiency teacher, then
``examples/run.py`` trains the data-efficiency student (DearKD, soft KD) on them alone and evaluates it on the real
Fashion-MNIST test set. The settings differ only in the generator's priors: DeepInversion's ImageNet recipe, that
recipe without the random roll and flip, and the data-efficiency benchmark's defaults (with and without BPID).
Small sets and one seed: this calibrates ``benchmarks.data_efficiency``'s generator flags, it is not a result
of its own. Writes ``results/datafree_priors.{json,md}``.

    python -m benchmarks.datafree_priors     # ~2 min per setting on one CPU core
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.data_efficiency import RESULTS_DIR, ROOT, Runner, load_example, stored_path
from benchmarks.data_efficiency import parse_args as benchmark_args
from dearkd_hf.callbacks import default_stop_epoch

SETTINGS = {
    "deepinversion_imagenet": dict(tv=1e-4, r_bn=0.01, jitter=3, flip=True, bpid_weight=0.0),
    "imagenet_no_roll_flip": dict(tv=1e-4, r_bn=0.01, jitter=0, flip=False, bpid_weight=0.0),
    "benchmark_di": dict(tv=3e-3, r_bn=0.1, jitter=0, flip=False, bpid_weight=0.0),
    "benchmark_bpid": dict(tv=3e-3, r_bn=0.1, jitter=0, flip=False, bpid_weight=1.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_teacher = ROOT / "outputs" / "benchmarks" / "data_efficiency" / "teacher-f1.0-s0"
    parser.add_argument(
        "--teacher", default=str(default_teacher), help="A teacher folder (benchmarks.data_efficiency's)."
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--num_images", type=int, default=640)
    parser.add_argument("--iterations", type=int, default=100, help="DeepInversion steps per batch of 64.")
    parser.add_argument("--epochs", type=float, default=60, help="Student epochs on the generated images.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "benchmarks" / "datafree_priors"))
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--benchmark_args", nargs=argparse.REMAINDER, default=[], help="benchmarks.data_efficiency flags."
    )
    return parser.parse_args(argv)


def generate(args: argparse.Namespace, name: str, output_dir: Path) -> dict[str, float]:
    flags = [f"--{key}={value}" for key, value in SETTINGS[name].items()]
    load_example("generate").main(
        [
            f"--teacher_model_name_or_path={args.teacher}",
            f"--num_images={args.num_images}",
            f"--output_dir={output_dir}",
            f"--iterations={args.iterations}",
            "--batch_size=64",
            "--resolution=28",
            f"--seed={args.seed}",
            *flags,
        ]
    )
    return json.loads((output_dir / "generation_config.json").read_text())["loss_terms"]


def train_student(args: argparse.Namespace, bench: argparse.Namespace, name: str, dataset: Path) -> float:
    """The data-efficiency benchmark's data-free student (DearKD, soft KD), trained on ``dataset`` only."""
    return Runner(bench).student_row(
        name,
        1.0,
        args.seed,
        beta=1.0,
        stop_epoch=default_stop_epoch(args.epochs),
        mhca=True,
        epochs=args.epochs,
        dataset=str(dataset),
        teacher=args.teacher,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    bench = benchmark_args([*args.benchmark_args, f"--work_dir={args.work_dir}"])
    rows = []
    for name in args.settings:
        start = time.perf_counter()
        work = Path(args.work_dir) / name
        losses = generate(args, name, work / "images")
        accuracy = train_student(args, bench, name, work / "images")
        rows.append({"setting": name, **SETTINGS[name], "accuracy": accuracy, "loss_terms": losses})
        rows[-1]["wall_s"] = time.perf_counter() - start
        print(f"{name}: student accuracy {accuracy:.4f}, BatchNorm term {losses['bn']:.1f}", flush=True)
    write(args, rows)
    return rows


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in ("num_images", "iterations", "epochs", "seed")}
    config = {"teacher": stored_path(args.teacher), **config}
    (results / "datafree_priors.json").write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    lines = [
        "# Generator priors against the accuracy of a student trained on the images alone",
        "",
        f"`python -m benchmarks.datafree_priors`: teacher `{Path(args.teacher).name}`, {args.num_images} images at "
        f"{args.iterations} iterations per batch, student {args.epochs:g} epochs, seed {args.seed}, real "
        "Fashion-MNIST test accuracy.",
        "",
        "| setting | tv | r_bn | jitter | flip | bpid | BN term | TV term | accuracy % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        terms = r["loss_terms"]
        lines.append(
            f"| {r['setting']} | {r['tv']:g} | {r['r_bn']:g} | {r['jitter']} | {r['flip']} | {r['bpid_weight']:g} "
            f"| {terms['bn']:.1f} | {terms['tv']:.0f} | {100 * r['accuracy']:.2f} |"
        )
    (results / "datafree_priors.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
