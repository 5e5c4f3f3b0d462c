#!/usr/bin/env python
"""Does DearKD help in the low-data, short-schedule regime? A grid of tasks, teachers, data sizes, schedules, seeds.

Fashion-MNIST served as 32 px RGB: stratified training subsets (``--train_images``), schedules of a few hundred
optimiser steps (``--steps``), three seeds per cell. A cell is (task, train images, steps, teacher). Every row is
what a user runs (the example scripts' ``main()``) with the library's defaults; only the objective differs between
the student rows, which all train the same DearKD ViT (``--student``, MHCA).

    tasks          fmnist10: all ten classes (the ViT learns slowly: labels alone reach about 55% in 250 steps);
                   easy4: T-shirt, trouser, sneaker, bag, relabelled 0..3 (a task the ViT learns quickly)
    teachers       small_resnet (a small transformers ResNet) or a timm name (resnet18: examples/demo.sh's), trained
                   by examples/train_teacher.py on the cell's images (RGB) per seed, kept (DONE file) for reruns
    labels_only    examples/run.py with --distillation_stop_epoch 0: the student on labels alone from step 0
    deit           DeiT-style logit KD: --beta 0, distillation never stops
    dearkd         DearKD with every DearKD knob at the library's default
    <variant>      --variant NAME="FLAGS": DearKD with extra run.py flags (how candidate defaults were compared)

Rows are appended to ``<results_dir>/<prefix>.json`` as they finish and skipped on a re-run; ``<prefix>.md`` holds
the per-cell means, the paired differences (DearKD minus each baseline, same seed and teacher) and the target check:
in every cell DearKD's mean >= max(labels_only, deit) - 0.5 points, and over the cells DearKD >= deit + 1 point.

    python -m benchmarks.robustness --tasks easy4 fmnist10 --teachers resnet18 small_resnet  # docs/METHOD.md s. 2
    python -m benchmarks.robustness --quick  # embedded 5k/1k subset, tiny models, a handful of steps
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.data_efficiency import ensure_dataset, load_example
from benchmarks.harness import RESULTS_DIR, ROOT, format_mean_std, mean_std
from dearkd_hf.data.loading import EMBEDDED_DATASET

BASE_METHODS = ("teacher", "labels_only", "deit", "dearkd")
BASELINES = ("labels_only", "deit")
TASKS = {"fmnist10": None, "easy4": (0, 1, 7, 8)}  # Fashion-MNIST's class ids kept (None: all)
FIXED_FLAGS = (
    "--per_device_eval_batch_size=256 --lr_scheduler_type=cosine --save_strategy=no --eval_strategy=no "
    "--logging_strategy=epoch --report_to=none --disable_tqdm=true --log_level=warning"
).split()
CELL_MARGIN, MEAN_GAIN = 0.5, 1.0  # the target: every cell >= best baseline - 0.5; mean over cells >= deit + 1

SIZES = {
    "full": dict(
        train_images=[450],
        steps=[250],
        teacher_steps=500,
        batch_size=64,
        image_size=32,
        student="patch_size=4,hidden_size=96,num_hidden_layers=4,num_attention_heads=4,intermediate_size=384",
        small_resnet="embedding_size=32,hidden_sizes=[32,64,128,256],depths=[1,1,1,1],layer_type=basic",
        max_eval_samples=2000,
    ),
    "quick": dict(
        train_images=[60],
        steps=[4],
        teacher_steps=4,
        batch_size=16,
        image_size=16,
        student="patch_size=4,hidden_size=16,num_hidden_layers=4,num_attention_heads=2,intermediate_size=32",
        small_resnet="embedding_size=8,hidden_sizes=[8,16],depths=[1,1],layer_type=basic",
        max_eval_samples=64,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Embedded subset, tiny models, a few steps (smoke run).")
    parser.add_argument("--dataset_dir", default=None, help="Full Fashion-MNIST (examples/prepare_fashion_mnist.py).")
    parser.add_argument("--work_dir", default=None, help="Teachers and students (default outputs/benchmarks/...).")
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["fmnist10"], choices=list(TASKS))
    parser.add_argument("--train_images", type=int, nargs="+", default=None, help="Training-set sizes (stratified).")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="Optimiser steps of the student rows.")
    parser.add_argument("--teacher_steps", type=int, default=None, help="Optimiser steps of the teachers.")
    parser.add_argument("--methods", nargs="+", default=list(BASE_METHODS), help="Rows (base methods or variants).")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='NAME="FLAGS"',
        help='A DearKD row with extra run.py flags, e.g. --variant fixed_beta="--beta_schedule constant".',
    )
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--student", default=None, help="DearKD ViT config overrides (run.py --config_overrides).")
    parser.add_argument(
        "--teachers",
        nargs="+",
        default=["small_resnet"],
        help="Teachers: small_resnet (a small transformers ResNet) or a timm name (resnet18, resnet50).",
    )
    parser.add_argument("--small_resnet", default=None, help="The small_resnet teacher's ResNetConfig overrides.")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Test images per row (seeded subset).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="Processes (seeds split).")
    parser.add_argument("--overwrite", action="store_true", help="Discard rows made with another configuration.")
    parser.add_argument("--report_only", action="store_true", help="Rewrite the table; train nothing.")
    args = parser.parse_args(argv)
    for name, value in SIZES["quick" if args.quick else "full"].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.variants = {}
    for spec in args.variant:
        name, sep, flags = spec.partition("=")
        if not sep or not name or name in BASE_METHODS:
            parser.error(f'--variant {spec!r}: give NAME="FLAGS" with a name other than {BASE_METHODS}.')
        args.variants[name] = shlex.split(flags)
    if "dearkd" in args.methods or args.variants:
        args.methods = [*dict.fromkeys([*args.methods, *args.variants])]
    unknown = [m for m in args.methods if m not in BASE_METHODS and m not in args.variants]
    if unknown:
        parser.error(f"--methods {unknown}: not a base method {BASE_METHODS} nor a --variant name.")
    return with_default_locations(args, "robustness")


def with_default_locations(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """The data (the embedded subset with --quick, else full Fashion-MNIST), the results' file prefix (``name``,
    ``name_quick``) and the work dir under outputs/benchmarks, where the flags leave them unset."""
    if args.dataset_dir is None:
        args.dataset_dir = str(EMBEDDED_DATASET if args.quick else ROOT / "outputs" / "fashion_mnist_full")
    args.prefix = f"{name}_quick" if args.quick else name
    if args.work_dir is None:
        args.work_dir = str(ROOT / "outputs" / "benchmarks" / args.prefix)
    return args


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """What a row's number depends on beyond its own key (no machine paths)."""
    return {
        "dataset": "embedded subset" if args.quick else "fashion_mnist_full",
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "student": args.student,
        "small_resnet": args.small_resnet,
        "teacher_steps": args.teacher_steps,
        "max_eval_samples": args.max_eval_samples,
    }


def row_key(row: dict[str, Any]) -> tuple[str, str, int, int, str, int]:
    """(method, task, train images, steps, teacher, seed); rows of older files count as fmnist10, small_resnet."""
    cell = (
        row.get("task", "fmnist10"),
        int(row["train_images"]),
        int(row["steps"]),
        row.get("teacher", "small_resnet"),
    )
    return (row["method"], *cell, int(row["seed"]))


class Results(harness.Results):
    """The robustness results file: rows keyed by :func:`row_key` (variant rows also store their flags)."""

    KEYS = {"rows": row_key}


def task_dataset(source: str, task: str, out: Path) -> str:
    """The task's ``save_to_disk`` folder: ``source`` itself, or its kept classes relabelled 0..k-1 (written once)."""
    classes = TASKS[task]
    if classes is None:
        return source
    folder = out / f"task-{task}"
    if not (folder / "dataset_dict.json").is_file():
        from datasets import ClassLabel, load_from_disk

        data = load_from_disk(source)
        names = data["train"].features["label"].names
        features = data["train"].features.copy()
        features["label"] = ClassLabel(names=[names[c] for c in classes])
        index = {c: i for i, c in enumerate(classes)}
        # In memory: no cache file is written beside the source (the embedded subset lives in the repository).
        data = data.filter(lambda y: y in index, input_columns="label", keep_in_memory=True)
        data = data.map(lambda y: {"label": index[y]}, input_columns="label", features=features, keep_in_memory=True)
        tmp = out / f"task-{task}.tmp{os.getpid()}"  # then renamed: a reader never sees a half-written folder
        data.save_to_disk(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return str(folder)


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work_dir)
        self.run = load_example("run")
        self.train_teacher = load_example("train_teacher")
        self.datasets = {task: task_dataset(args.dataset_dir, task, self.work) for task in args.tasks}

    def epochs(self, train_images: int, steps: int) -> int:
        steps_per_epoch = math.ceil(train_images / self.args.batch_size)
        return max(1, round(steps / steps_per_epoch))

    def common(self, task: str, train_images: int, seed: int, output_dir: Path, epochs: int) -> list[str]:
        a = self.args
        flags = [
            f"--dataset_name={self.datasets[task]}",
            f"--seed={seed}",
            f"--image_size={a.image_size}",
            f"--output_dir={output_dir}",
            f"--num_train_epochs={epochs}",
            f"--per_device_train_batch_size={a.batch_size}",
            f"--learning_rate={a.learning_rate}",
            f"--weight_decay={a.weight_decay}",
            *FIXED_FLAGS,
            f"--max_eval_samples={a.max_eval_samples}",
            f"--use_cpu={not torch.cuda.is_available()}",
        ]
        if a.quick:
            return [*flags, f"--max_train_samples={train_images}"]
        from datasets import load_from_disk

        # The stratified --train_fraction that keeps about train_images of the task's training split.
        return [*flags, f"--train_fraction={train_images / load_from_disk(self.datasets[task])['train'].num_rows}"]

    def teacher_dir(self, task: str, train_images: int, teacher: str, seed: int) -> Path:
        """Named by what the teacher depends on, so a teacher made with other settings is never reused."""
        a = self.args
        spec = teacher_model_flags(teacher, a.small_resnet)
        recipe = json.dumps([spec, a.teacher_steps, a.batch_size, a.image_size, a.learning_rate, a.weight_decay])
        digest = hashlib.sha1(recipe.encode()).hexdigest()[:8]
        return self.work / f"teacher-{task}-{teacher}-n{train_images}-s{seed}-{digest}"

    def teacher(self, task: str, train_images: int, teacher: str, seed: int) -> tuple[str, float | None]:
        """The cell's teacher for ``seed``, trained now unless a previous run left it (its DONE file)."""
        folder = self.teacher_dir(task, train_images, teacher, seed)
        done = folder / "DONE"
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            epochs = self.epochs(train_images, self.args.teacher_steps)
            metrics = self.train_teacher.main(
                [
                    *teacher_model_flags(teacher, self.args.small_resnet),
                    "--num_channels=3",
                    *self.common(task, train_images, seed, folder, epochs),
                ]
            )
            done.write_text(json.dumps(metrics))
        return str(folder), json.loads(done.read_text()).get("eval_accuracy")

    def student(self, method: str, cell: tuple[str, int, int, str], seed: int) -> dict[str, Any]:
        task, train_images, steps, teacher = cell
        teacher_folder, _ = self.teacher(task, train_images, teacher, seed)
        output_dir = self.work / f"{method}-{task}-{teacher}-n{train_images}-t{steps}-s{seed}"
        shutil.rmtree(output_dir, ignore_errors=True)
        epochs = self.epochs(train_images, steps)
        flags = {
            "labels_only": ["--distillation_stop_epoch=0"],
            "deit": ["--beta=0", f"--distillation_stop_epoch={epochs}"],
            "dearkd": [],
        }.get(method, self.args.variants.get(method, []))
        argv = [
            f"--teacher_model_name_or_path={teacher_folder}",
            "--model_type=dearkd_vit",
            f"--config_overrides={self.args.student}",
            *self.common(task, train_images, seed, output_dir, epochs),
            *flags,
        ]
        metrics = self.run.main(argv)
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        return {"accuracy": metrics["eval_accuracy"], "epochs": epochs, "flags": flags, "log": _train_log(history)}

    def row(self, method: str, cell: tuple[str, int, int, str], seed: int) -> dict[str, Any]:
        start = time.perf_counter()
        task, n, steps, teacher = cell
        if method == "teacher":
            _, accuracy = self.teacher(task, n, teacher, seed)
            extra = {"accuracy": accuracy, "epochs": self.epochs(n, self.args.teacher_steps), "flags": []}
        else:
            extra = self.student(method, cell, seed)
        row = {"method": method, "task": task, "train_images": n, "steps": steps, "teacher": teacher, "seed": seed}
        row.update(extra, wall_s=time.perf_counter() - start, commit=code_commit())
        return row


def code_commit() -> str | None:
    """The commit of the code that made a row (rows of one file may come from runs at different commits)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def teacher_model_flags(teacher: str, small_resnet: str) -> list[str]:
    """``small_resnet`` builds a transformers ResNet from scratch (``small_resnet`` overrides); else a timm name."""
    if teacher == "small_resnet":
        return ["--model_type=resnet", f"--config_overrides={small_resnet}"]
    return [f"--model_name_or_path={teacher}"]


def _train_log(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's logged loss components, and the mean logged alignment weight over stage 1."""
    logs = [entry for entry in history if "loss" in entry]
    out = {k: v for k, v in (logs[-1] if logs else {}).items() if k.startswith("loss") or k == "stage"}
    betas = [entry["beta"] for entry in logs if "beta" in entry]
    return {**out, "mean_beta": statistics.mean(betas)} if betas else out


def jobs(args: argparse.Namespace) -> list[tuple[str, tuple[str, int, int, str], int]]:
    """Every row to run; a (task, size, teacher, seed) has one teacher (stored with steps 0) for every schedule."""
    out = []
    for seed in args.seeds:
        for task in args.tasks:
            for teacher in args.teachers:
                for n in args.train_images:
                    if "teacher" in args.methods:
                        out.append(("teacher", (task, n, 0, teacher), seed))
                    for steps in args.steps:
                        out += [(m, (task, n, steps, teacher), seed) for m in args.methods if m != "teacher"]
    return out


def cell_stats(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int, str], dict[str, Any]]:
    """Per cell (task, size, steps, teacher): each method's mean and std, and paired differences to the baselines."""
    cells: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    by_key = {row_key(row): row for row in rows}
    for cell in sorted({k[1:5] for k in by_key if k[0] != "teacher"}):
        task, n, steps, teacher = cell
        methods = sorted({k[0] for k in by_key if k[1:5] == cell}, key=_order)
        stats: dict[str, Any] = {"methods": {}, "paired": {}}
        teachers = [100 * r["accuracy"] for k, r in by_key.items() if k[:5] == ("teacher", task, n, 0, teacher)]
        if teachers:
            stats["methods"]["teacher"] = mean_std(teachers)
        for method in methods:
            stats["methods"][method] = mean_std(
                [100 * r["accuracy"] for k, r in by_key.items() if k[:5] == (method, *cell)]
            )
        for method in [m for m in methods if m not in BASELINES]:
            for base in BASELINES:
                diffs = [
                    100 * (r["accuracy"] - by_key[(base, *cell, k[5])]["accuracy"])
                    for k, r in by_key.items()
                    if k[:5] == (method, *cell) and (base, *cell, k[5]) in by_key
                ]
                if diffs:
                    stats["paired"][f"{method} - {base}"] = mean_std(diffs)
        cells[cell] = stats
    return cells


def _order(method: str) -> tuple[int, str]:
    return (BASE_METHODS.index(method) if method in BASE_METHODS else len(BASE_METHODS), method)


def targets_met(cells: dict[tuple, dict[str, Any]], method: str = "dearkd") -> dict[str, Any]:
    """The issue's bar: in every cell ``method``'s mean >= max(labels_only, deit) - 0.5 points, and over the cells
    its mean gain over deit >= 1 point. Returns each cell's margin (mean minus the best baseline) and whether it
    passes, the mean gain over deit, and ``all``: both parts met."""
    out: dict[str, Any] = {"cells": {}}
    gains = []
    for cell, stats in cells.items():
        s = stats["methods"]
        if method in s and all(b in s for b in BASELINES):
            margin = s[method]["mean"] - max(s[b]["mean"] for b in BASELINES)
            out["cells"][", ".join(map(str, cell))] = {"margin": margin, "met": margin >= -CELL_MARGIN}
            gains.append(s[method]["mean"] - s["deit"]["mean"])
    out["gain_over_deit"] = statistics.mean(gains) if gains else math.nan
    out["all"] = bool(gains) and all(c["met"] for c in out["cells"].values()) and out["gain_over_deit"] >= MEAN_GAIN
    return out


def write_table(path: Path, results: Results, variants: dict[str, list[str]]) -> None:
    cells = cell_stats(results.rows)
    methods = sorted({m for cell in cells.values() for m in cell["methods"]}, key=_order)
    head = "| task | train images | steps | teacher model | "
    lines = [
        "# Robustness grid: Fashion-MNIST tasks as 32 px RGB, small data, short schedules (test accuracy, %)",
        "",
        "Generated by `python -m benchmarks.robustness`; mean ± std over seeds (n per cell in the JSON). Paired",
        "columns: the row minus a baseline on the same seed and teacher.",
        "",
        head + " | ".join(methods) + " |",
        "|---|---|---|---|" + "---|" * len(methods),
    ]
    for cell, stats in cells.items():
        values = [format_mean_std(stats["methods"][m]) if m in stats["methods"] else "-" for m in methods]
        lines.append("| " + " | ".join(map(str, cell)) + " | " + " | ".join(values) + " |")
    paired = sorted({p for cell in cells.values() for p in cell["paired"]})
    if paired:
        lines += ["", "Paired differences (points, mean ± std over seeds):", ""]
        lines += [head + " | ".join(paired) + " |", "|---|---|---|---|" + "---|" * len(paired)]
        for cell, stats in cells.items():
            values = [format_mean_std(stats["paired"][p]) if p in stats["paired"] else "-" for p in paired]
            lines.append("| " + " | ".join(map(str, cell)) + " | " + " | ".join(values) + " |")
    lines += ["", f"Target: every cell's mean >= max(labels_only, deit) - {CELL_MARGIN} points (margin shown); mean"]
    lines += [f"over the cells >= deit + {MEAN_GAIN} points.", ""]
    for method in [m for m in methods if m not in ("teacher", *BASELINES)]:
        met = targets_met(cells, method)
        if met["cells"]:
            verdict = "; ".join(
                f"{c}: {v['margin']:+.2f} {'met' if v['met'] else 'MISSED'}" for c, v in met["cells"].items()
            )
            gain = f"mean gain over deit {met['gain_over_deit']:+.2f}"
            lines.append(f"- `{method}`: {verdict}; {gain}: {'ALL MET' if met['all'] else 'NOT MET'}")
    used = {m: v for m, v in variants.items() if m in methods}
    stored = {r["method"]: r["flags"] for r in results.rows if r["method"] not in BASE_METHODS}
    if used or stored:
        lines += ["", "Variants (extra run.py flags on top of the defaults):", ""]
        lines += [f"- `{m}`: `{' '.join(f)}`" for m, f in sorted({**stored, **used}.items())]
    lines += ["", "Configuration:", "", "```json", json.dumps(results.config, indent=2), "```", ""]
    path.write_text("\n".join(lines))


def run_workers(args: argparse.Namespace, argv: list[str], results: Results) -> None:
    """This benchmark once per group of seeds, in parallel (:func:`benchmarks.harness.run_workers`)."""
    harness.run_workers(args, argv, results, "benchmarks.robustness")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results_dir = Path(args.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", run_config(args), args.overwrite)
    if not args.report_only:
        if not args.quick:
            ensure_dataset(args.dataset_dir)
        if args.workers > 1 and len(args.seeds) > 1:
            for task in args.tasks:  # written once, before the workers read it
                task_dataset(args.dataset_dir, task, Path(args.work_dir))
            run_workers(args, sys.argv[1:] if argv is None else list(argv), results)
        else:
            runner = Runner(args)
            todo = jobs(args)
            for i, (method, cell, seed) in enumerate(todo, 1):
                if results.get((method, *cell, seed)) is not None:
                    continue
                print(f"[{i}/{len(todo)}] {method} {cell} seed={seed}", flush=True)
                row = runner.row(method, cell, seed)
                results.add(row)
                write_table(results_dir / f"{args.prefix}.md", results, args.variants)
                print(f"    accuracy {row['accuracy']:.4f} in {row['wall_s']:.0f} s", flush=True)
    if results.rows:
        write_table(results_dir / f"{args.prefix}.md", results, args.variants)
    return {"config": results.config, "rows": results.rows}


if __name__ == "__main__":
    main()
