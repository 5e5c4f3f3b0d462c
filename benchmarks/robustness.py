#!/usr/bin/env python
"""Does DearKD help in the low-data, short-schedule regime? A grid of data sizes, schedules and seeds.

Fashion-MNIST served as 32 px RGB, stratified training subsets of about 450 and 1,800 images, schedules of about 250
and 1,000 optimiser steps (batch 32), three seeds per cell. Every row is what a user runs (the example scripts'
``main()``) with the library's defaults; only the objective differs between the student rows, which all train the
same DearKD ViT (4 blocks, 64 wide, 4 heads, patch 4, MHCA). Sized for 2 CPU cores: the 96-wide student at batch 64
of the setting that motivated the grid costs about 4x more per step, which puts the 1,000-step cells out of reach.

    teacher        examples/train_teacher.py: a small transformers ResNet (the data-efficiency benchmark's) on the
                   cell's images, RGB (one per data size and seed)
    labels_only    examples/run.py with --distillation_stop_epoch 0: the student on labels alone from step 0
    deit           DeiT-style logit KD: --beta 0, distillation never stops
    dearkd         DearKD with every DearKD knob at the library's default
    <variant>      --variant NAME="FLAGS": DearKD with extra run.py flags (how candidate defaults were compared)

Fashion-MNIST at 10% (``benchmarks.data_efficiency``) is the grid's large-data cell. Rows are appended to
``<results_dir>/robustness.json`` as they finish and skipped on a re-run; ``robustness.md`` holds the per-cell means
and paired differences (DearKD minus each baseline, same seed and teacher), ``robustness.png`` the plot.

    python -m benchmarks.robustness --workers 3  # the grid, one worker per seed: about 2 h on 2 shared CPU cores
    python -m benchmarks.robustness --quick      # embedded 5k/1k subset, tiny models, a handful of steps
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.data_efficiency import RESULTS_DIR, ROOT, ensure_dataset, load_example  # noqa: E402
from benchmarks.data_efficiency.harness import run_seed_workers  # noqa: E402
from dearkd_hf.data import EMBEDDED_DATASET  # noqa: E402

BASE_METHODS = ("teacher", "labels_only", "deit", "dearkd")
BASELINES = ("labels_only", "deit")

SIZES = {
    "full": dict(
        train_images=[450, 1800],
        steps=[250, 1000],
        teacher_steps=500,
        batch_size=32,
        image_size=32,
        student="patch_size=4,hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=128",
        teacher="model_type=resnet:embedding_size=32,hidden_sizes=[32,64,128,256],depths=[1,1,1,1],layer_type=basic",
        max_eval_samples=2000,
    ),
    "quick": dict(
        train_images=[60, 120],
        steps=[4, 8],
        teacher_steps=4,
        batch_size=16,
        image_size=16,
        student="patch_size=4,hidden_size=16,num_hidden_layers=4,num_attention_heads=2,intermediate_size=32",
        teacher="model_type=resnet:embedding_size=8,hidden_sizes=[8,16],depths=[1,1],layer_type=basic",
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
    parser.add_argument("--train_images", type=int, nargs="+", default=None, help="Training-set sizes (stratified).")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="Optimiser steps of the student rows.")
    parser.add_argument("--teacher_steps", type=int, default=None, help="Optimiser steps of the teachers.")
    parser.add_argument("--methods", nargs="+", default=list(BASE_METHODS), help="Rows (base methods or variants).")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='NAME="FLAGS"',
        help='A DearKD row with extra run.py flags, e.g. --variant paper="--label_loss_heads each_head".',
    )
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--student", default=None, help="DearKD ViT config overrides (run.py --config_overrides).")
    parser.add_argument(
        "--teacher",
        default=None,
        help="The teachers: a timm name (e.g. resnet18) or model_type=resnet:CONFIG_OVERRIDES (a transformers CNN).",
    )
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Test images per row (seeded subset).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="Processes (seeds split).")
    parser.add_argument("--overwrite", action="store_true", help="Discard rows made with another configuration.")
    parser.add_argument("--report_only", action="store_true", help="Rewrite the table and plot; train nothing.")
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
    if args.dataset_dir is None:
        args.dataset_dir = str(EMBEDDED_DATASET if args.quick else ROOT / "outputs" / "fashion_mnist_full")
    args.prefix = "robustness_quick" if args.quick else "robustness"
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
        "teacher": args.teacher,
        "teacher_steps": args.teacher_steps,
        "max_eval_samples": args.max_eval_samples,
    }


def row_key(row: dict[str, Any]) -> tuple[str, int, int, int]:
    return row["method"], int(row["train_images"]), int(row["steps"]), int(row["seed"])


class Results:
    """The JSON file, rewritten atomically after each row; variant rows also store their flags."""

    def __init__(self, path: Path, config: dict[str, Any], overwrite: bool):
        self.path, self.config, self.rows = path, config, []
        if path.is_file() and not overwrite:
            saved = json.loads(path.read_text())
            if saved.get("config") != config:
                raise SystemExit(f"{path} holds rows of another configuration; pass --overwrite to discard them.")
            self.rows = saved["rows"]

    def get(self, key: tuple) -> dict[str, Any] | None:
        return next((row for row in self.rows if row_key(row) == key), None)

    def add(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if row_key(r) != row_key(row)] + [row]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"config": self.config, "rows": self.rows}, indent=2))
        os.replace(tmp, self.path)


def fraction_for(train_images: int) -> float:
    """The stratified --train_fraction that keeps about ``train_images`` of Fashion-MNIST's 60,000."""
    return train_images / 60000


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work_dir)
        self.run = load_example("run")
        self.train_teacher = load_example("train_teacher")

    def epochs(self, train_images: int, steps: int) -> int:
        steps_per_epoch = math.ceil(train_images / self.args.batch_size)
        return max(1, round(steps / steps_per_epoch))

    def common(self, train_images: int, seed: int, output_dir: Path, epochs: int) -> list[str]:
        a = self.args
        flags = [
            f"--dataset_name={a.dataset_dir}",
            f"--seed={seed}",
            f"--image_size={a.image_size}",
            f"--output_dir={output_dir}",
            f"--num_train_epochs={epochs}",
            f"--per_device_train_batch_size={a.batch_size}",
            "--per_device_eval_batch_size=256",
            f"--learning_rate={a.learning_rate}",
            f"--weight_decay={a.weight_decay}",
            "--lr_scheduler_type=cosine",
            "--save_strategy=no",
            "--eval_strategy=no",
            "--logging_strategy=epoch",
            "--report_to=none",
            "--disable_tqdm=true",
            "--log_level=warning",
            f"--max_eval_samples={a.max_eval_samples}",
            f"--use_cpu={not torch.cuda.is_available()}",
        ]
        if a.quick:
            flags.append(f"--max_train_samples={train_images}")
        else:
            flags.append(f"--train_fraction={fraction_for(train_images)}")
        return flags

    def teacher_dir(self, train_images: int, seed: int) -> Path:
        """Named by what the teacher depends on, so a teacher made with other settings is never reused."""
        a = self.args
        recipe = json.dumps([a.teacher, a.teacher_steps, a.batch_size, a.image_size, a.learning_rate, a.weight_decay])
        return self.work / f"teacher-n{train_images}-s{seed}-{hashlib.sha1(recipe.encode()).hexdigest()[:8]}"

    def teacher(self, train_images: int, seed: int) -> tuple[str, float | None]:
        """The (size, seed) teacher, an RGB timm CNN trained now unless a previous run left it."""
        folder = self.teacher_dir(train_images, seed)
        done = folder / "DONE"
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            metrics = self.train_teacher.main(
                [
                    *teacher_model_flags(self.args.teacher),
                    "--num_channels=3",
                    *self.common(train_images, seed, folder, self.epochs(train_images, self.args.teacher_steps)),
                ]
            )
            done.write_text(json.dumps(metrics))
        return str(folder), json.loads(done.read_text()).get("eval_accuracy")

    def student(self, method: str, train_images: int, steps: int, seed: int) -> dict[str, Any]:
        teacher, _ = self.teacher(train_images, seed)
        output_dir = self.work / f"{method}-n{train_images}-t{steps}-s{seed}"
        shutil.rmtree(output_dir, ignore_errors=True)
        epochs = self.epochs(train_images, steps)
        flags = {
            "labels_only": ["--distillation_stop_epoch=0"],
            "deit": ["--beta=0", f"--distillation_stop_epoch={epochs}"],
            "dearkd": [],
        }.get(method, self.args.variants.get(method, []))
        argv = [
            f"--teacher_model_name_or_path={teacher}",
            "--model_type=dearkd_vit",
            f"--config_overrides={self.args.student}",
            *self.common(train_images, seed, output_dir, epochs),
            *flags,
        ]
        metrics = self.run.main(argv)
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        return {
            "accuracy": metrics["eval_accuracy"],
            "epochs": epochs,
            "flags": flags,
            "log": _last_train_log(history),
        }

    def row(self, method: str, train_images: int, steps: int, seed: int) -> dict[str, Any]:
        start = time.perf_counter()
        if method == "teacher":
            folder, accuracy = self.teacher(train_images, seed)
            extra = {"accuracy": accuracy, "epochs": self.epochs(train_images, self.args.teacher_steps), "flags": []}
        else:
            extra = self.student(method, train_images, steps, seed)
        row = {"method": method, "train_images": train_images, "steps": steps, "seed": seed, **extra}
        row["wall_s"] = time.perf_counter() - start
        row["commit"] = code_commit()
        return row


def code_commit() -> str | None:
    """The commit of the code that made a row (rows of one file may come from runs at different commits)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def teacher_model_flags(spec: str) -> list[str]:
    """``model_type=resnet:OVERRIDES`` builds a transformers CNN from scratch; anything else is a timm name."""
    if spec.startswith("model_type="):
        model_type, _, overrides = spec.removeprefix("model_type=").partition(":")
        return [f"--model_type={model_type}", f"--config_overrides={overrides}"]
    return [f"--model_name_or_path={spec}"]


def _last_train_log(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last epoch's logged loss components (what a reader checks to see why a row ended where it did)."""
    logs = [entry for entry in history if "loss" in entry]
    return {k: v for k, v in (logs[-1] if logs else {}).items() if k.startswith("loss") or k == "stage"}


def jobs(args: argparse.Namespace) -> list[tuple[str, int, int, int]]:
    """Every row to run; a (size, seed) has one teacher (stored with steps 0), which every schedule distils from."""
    out = []
    for seed in args.seeds:
        for n in args.train_images:
            if "teacher" in args.methods:
                out.append(("teacher", n, 0, seed))
            for steps in args.steps:
                out += [(method, n, steps, seed) for method in args.methods if method != "teacher"]
    return out


# ---- the report ----


def cell_stats(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (size, steps): mean and std of each method, and paired differences to each baseline."""
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    by_key = {row_key(row): row for row in rows}
    for n, steps in sorted({(int(r["train_images"]), int(r["steps"])) for r in rows if r["method"] != "teacher"}):
        methods = sorted({r["method"] for r in rows if (r["train_images"], r["steps"]) == (n, steps)}, key=_order)
        methods = [m for m in methods if m != "teacher"]
        cell: dict[str, Any] = {"methods": {}, "paired": {}}
        teachers = [100 * r["accuracy"] for k, r in by_key.items() if k[:2] == ("teacher", n)]
        if teachers:
            cell["methods"]["teacher"] = _mean_std(teachers)
        for method in methods:
            accs = [100 * r["accuracy"] for k, r in by_key.items() if k[:3] == (method, n, steps)]
            cell["methods"][method] = _mean_std(accs)
        for method in methods:
            if method in ("teacher", *BASELINES):
                continue
            for base in BASELINES:
                diffs = [
                    100 * (r["accuracy"] - by_key[(base, n, steps, k[3])]["accuracy"])
                    for k, r in by_key.items()
                    if k[:3] == (method, n, steps) and (base, n, steps, k[3]) in by_key
                ]
                if diffs:
                    cell["paired"][f"{method} - {base}"] = _mean_std(diffs)
        cells[(n, steps)] = cell
    return cells


def _order(method: str) -> tuple[int, str]:
    return (BASE_METHODS.index(method) if method in BASE_METHODS else len(BASE_METHODS), method)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else math.nan,
        "n": len(values),
    }


def targets_met(cells: dict[tuple[int, int], dict[str, Any]], method: str = "dearkd") -> dict[str, bool]:
    """The issue's bar: ``method``'s mean >= the labels-only ViT's and >= DeiT's in every cell."""
    out = {}
    for (n, steps), cell in cells.items():
        stats = cell["methods"]
        if method in stats and all(b in stats for b in BASELINES):
            out[f"n={n}, steps={steps}"] = all(stats[method]["mean"] >= stats[b]["mean"] for b in BASELINES)
    return out


def _fmt(s: dict[str, float]) -> str:
    spread = "" if math.isnan(s["std"]) else f" ± {s['std']:.2f}"
    return f"{s['mean']:.2f}{spread}"


def write_table(path: Path, results: Results, variants: dict[str, list[str]]) -> None:
    cells = cell_stats(results.rows)
    methods = sorted({m for cell in cells.values() for m in cell["methods"]}, key=_order)
    lines = [
        "# Robustness grid: Fashion-MNIST as 32 px RGB, small data and short schedules (test accuracy, %)",
        "",
        "Generated by `python -m benchmarks.robustness`; mean ± std over seeds (n per cell in the JSON). Paired",
        "columns: the row minus a baseline on the same seed and teacher.",
        "",
        "| train images | steps | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for (n, steps), cell in cells.items():
        values = [_fmt(cell["methods"][m]) if m in cell["methods"] else "-" for m in methods]
        lines.append(f"| {n} | {steps} | " + " | ".join(values) + " |")
    paired = sorted({p for cell in cells.values() for p in cell["paired"]})
    if paired:
        lines += ["", "Paired differences (points, mean ± std over seeds):", ""]
        lines += ["| train images | steps | " + " | ".join(paired) + " |", "|---|---|" + "---|" * len(paired)]
        for (n, steps), cell in cells.items():
            values = [_fmt(cell["paired"][p]) if p in cell["paired"] else "-" for p in paired]
            lines.append(f"| {n} | {steps} | " + " | ".join(values) + " |")
    for method in [m for m in methods if m not in ("teacher", *BASELINES)]:
        met = targets_met(cells, method)
        if met:
            verdict = ", ".join(f"{cell}: {'met' if ok else 'MISSED'}" for cell, ok in met.items())
            lines += ["", f"Target ({method} mean >= labels_only and >= deit in every cell): {verdict}"]
    used = {m: v for m, v in variants.items() if m in methods}
    stored = {r["method"]: r["flags"] for r in results.rows if r["method"] not in BASE_METHODS}
    if used or stored:
        lines += ["", "Variants (extra run.py flags on top of the defaults):", ""]
        lines += [f"- `{m}`: `{' '.join(f)}`" for m, f in sorted({**stored, **used}.items())]
    lines += ["", "Configuration:", "", "```json", json.dumps(results.config, indent=2), "```", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, results: Results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cell_stats(results.rows)
    methods = sorted({r["method"] for r in results.rows} - {"teacher"}, key=_order)
    labels = [f"{n} img\n{steps} steps" for n, steps in cells]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        stats = [cell["methods"].get(method) for cell in cells.values()]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(cells))]
        ys = [s["mean"] if s else math.nan for s in stats]
        errs = [0.0 if not s or math.isnan(s["std"]) else s["std"] for s in stats]
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=method)
    ax.set_xticks(range(len(cells)), labels)
    ax.set_ylabel("test accuracy (%)")
    finite = [cell["methods"][m]["mean"] for cell in cells.values() for m in methods if m in cell["methods"]]
    if finite:
        ax.set_ylim(max(0, min(finite) - 10), min(100, max(finite) + 5))
    ax.set_title("DearKD vs labels only and DeiT: small data, short schedules (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(results: Results, results_dir: Path, prefix: str, variants: dict[str, list[str]]) -> None:
    if results.rows:
        write_table(results_dir / f"{prefix}.md", results, variants)
        write_plot(results_dir / f"{prefix}.png", results)


def run_workers(args: argparse.Namespace, argv: list[str], results: Results) -> None:
    """This script once per group of seeds, in parallel, each with its own results file; then fold them in."""
    groups = [args.seeds[i :: args.workers] for i in range(min(args.workers, len(args.seeds)))]
    workers_dir = Path(args.work_dir) / "workers"
    workers_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for seeds in groups:
        name = "seeds-" + "-".join(map(str, seeds))
        own = Results(workers_dir / name / f"{args.prefix}.json", results.config, overwrite=True)
        for row in results.rows:
            if row["seed"] in seeds:
                own.add(row)
        running.append((name, seeds, own.path))
    failed = run_seed_workers("benchmarks.robustness", argv, running, workers_dir)
    for *_, path in running:
        if path.is_file():
            for row in json.loads(path.read_text())["rows"]:
                results.add(row)
    if failed:
        raise SystemExit(f"workers failed (their finished rows are kept); see {', '.join(failed)}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results_dir = Path(args.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", run_config(args), args.overwrite)
    if args.report_only:
        write_reports(results, results_dir, args.prefix, args.variants)
        return {"config": results.config, "rows": results.rows}
    if not args.quick:
        ensure_dataset(args.dataset_dir)
    if args.workers > 1 and len(args.seeds) > 1:
        run_workers(args, sys.argv[1:] if argv is None else list(argv), results)
    else:
        runner = Runner(args)
        todo = jobs(args)
        for i, (method, n, steps, seed) in enumerate(todo, 1):
            if results.get((method, n, steps, seed)) is not None:
                continue
            print(f"[{i}/{len(todo)}] {method} n={n} steps={steps} seed={seed}", flush=True)
            row = runner.row(method, n, steps, seed)
            results.add(row)
            write_reports(results, results_dir, args.prefix, args.variants)
            print(f"    accuracy {row['accuracy']:.4f} in {row['wall_s']:.0f} s", flush=True)
    write_reports(results, results_dir, args.prefix, args.variants)
    return {"config": results.config, "rows": results.rows}


if __name__ == "__main__":
    main()
