#!/usr/bin/env python
"""Test accuracy of DearKD, its baselines and ablations, for 10% and 100% of Fashion-MNIST's training set.

Every row is trained with the example scripts' ``main()`` (what a user runs), with the same student size,
augmentation (the scripts' default random-resized-crop + flip) and seeds, and evaluated on the real test set. Every
row of a fraction trains the same epochs: ``min(30, 5 / fraction)`` by default (30 at 10%, 5 at 100%; see
``epochs_for``), so that small fractions are not stopped long before they converge:

    teacher          examples/train_teacher.py: the CNN teacher (a small transformers ResNet), on the fraction
    scratch          a plain-attention ViT (mhca_layers=[]) of the same size on labels alone from step 0
                     (examples/run.py with distillation_stop_epoch=0)
    scratch_mhca     the DearKD ViT (MHCA) on labels alone: separates MHCA's inductive bias from distillation
    deit             DeiT hard distillation via the distillation token: beta=0, no stop, mhca_layers=[]
    dearkd           DearKD: alignment (beta=1) + MHCA in every block + stop at 80% of the epochs
    dearkd_no_mhca   DearKD with mhca_layers=[]
    dearkd_no_align  DearKD with beta=0
    dearkd_no_stop   DearKD with distillation_stop_epoch = num_train_epochs
    datafree_di      examples/generate.py (DeepInversion, bpid_weight=0) from that fraction's teacher, then DearKD
                     (soft KD, --datafree_epochs) on the generated images only; evaluated on the real test set
    datafree_bpid    the same with BPID (bpid_weight=1)

Each (train_fraction, seed) has its own teacher, trained with that seed on that fraction, which every student of the
pair distils from. Rows are appended to the JSON as they finish and skipped on a re-run, so a killed run loses at
most the row in progress. Outputs (``<prefix>`` is ``data_efficiency``, ``data_efficiency_quick`` with --quick):
``<results_dir>/<prefix>.json`` ({"config", "rows": [{"method", "train_fraction", "seed", "accuracy", "epochs",
"wall_s", ...}]}), ``<prefix>.md`` (mean and standard deviation over seeds) and ``<prefix>.png``.

    python benchmarks/data_efficiency.py            # the full benchmark: about two hours on 2 CPU cores (2 workers)
    python benchmarks/data_efficiency.py --quick    # embedded 5k/1k subset, tiny models: a few minutes
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
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

from dearkd_hf.callbacks import DEFAULT_STOP_FRACTION, default_stop_epoch  # noqa: E402
from dearkd_hf.paths import EMBEDDED_DATASET  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

METHODS = (
    "teacher",
    "scratch",
    "scratch_mhca",
    "deit",
    "dearkd",
    "dearkd_no_mhca",
    "dearkd_no_align",
    "dearkd_no_stop",
    "datafree_di",
    "datafree_bpid",
)
ROW_KEYS = ("method", "train_fraction", "seed", "accuracy", "epochs", "wall_s")

# Default (full) and --quick sizes. The full ones are chosen so the default run takes about two hours on 2 shared CPU
# cores with one torch thread (see benchmarks/README.md for the estimate).
SIZES = {
    "full": dict(
        full_set_epochs=5,
        max_epochs=30,
        student="image_size=28,patch_size=7,hidden_size=64,num_hidden_layers=4,num_attention_heads=4,"
        "intermediate_size=256",
        teacher="embedding_size=32,hidden_sizes=[32,64,128,256],depths=[1,1,1,1],layer_type=basic",
        num_generated=2560,
        gen_iterations=100,
        gen_batch_size=64,
        gen_tv=3e-3,
        gen_r_bn=0.1,
        gen_jitter=0,
        mixup=0.0,
        cutmix=0.0,
        batch_size=64,
    ),
    "quick": dict(
        full_set_epochs=1,
        max_epochs=1,
        student="image_size=28,patch_size=7,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
        "intermediate_size=64",
        teacher="embedding_size=8,hidden_sizes=[8,16],depths=[1,1],layer_type=basic",
        num_generated=32,
        gen_iterations=2,
        gen_batch_size=16,
        gen_tv=3e-3,
        gen_r_bn=0.1,
        gen_jitter=0,
        mixup=0.0,
        cutmix=0.0,
        batch_size=32,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Embedded 5k/1k subset and tiny models (smoke run).")
    parser.add_argument(
        "--dataset_dir",
        default=None,
        help="Full Fashion-MNIST saved by examples/prepare_fashion_mnist.py --full (written there if missing). "
        "Default: outputs/fashion_mnist_full; with --quick the embedded subset.",
    )
    parser.add_argument("--work_dir", default=None, help="Teachers, generated images and students (outputs/...).")
    parser.add_argument("--results_dir", default=str(RESULTS_DIR), help="Where the JSON, table and plot go.")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0], help="Train fractions.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Seeds (at least two for a spread).")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="Rows to run.")
    parser.add_argument(
        "--epochs",
        type=float,
        nargs="+",
        default=None,
        help="Epochs: one value for every fraction, or one per --fractions entry. Default: the schedule below.",
    )
    parser.add_argument(
        "--full_set_epochs",
        type=float,
        default=None,
        help="Default schedule: fraction f trains min(max_epochs, full_set_epochs / f) epochs, i.e. the same "
        "number of images as full_set_epochs passes over the full set, up to max_epochs (default 5; quick 1).",
    )
    parser.add_argument("--max_epochs", type=float, default=None, help="Cap of the default schedule (30; quick 1).")
    parser.add_argument(
        "--datafree_epochs",
        type=float,
        default=None,
        help="Epochs of the data-free students on the generated images (default: max_epochs).",
    )
    parser.add_argument(
        "--datafree_distillation_type",
        default="soft",
        choices=["hard", "soft"],
        help="KD of the data-free students: soft (default) passes on the teacher's whole distribution, which on "
        "generated images is most of what they carry (their hard labels are the generation targets).",
    )
    parser.add_argument(
        "--rand_augment", action="store_true", help="RandAugment on top of crop + flip, for every row (teachers too)."
    )
    parser.add_argument("--mixup", type=float, default=None, help="Mixup alpha of every row (0: off).")
    parser.add_argument("--cutmix", type=float, default=None, help="CutMix alpha of every row (0: off).")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--student", default=None, help="DearKD ViT config overrides (run.py --config_overrides).")
    parser.add_argument("--teacher", default=None, help="transformers ResNet config overrides of the teacher.")
    parser.add_argument("--num_generated", type=int, default=None, help="Images generated per data-free student.")
    parser.add_argument("--gen_iterations", type=int, default=None, help="DeepInversion steps per batch.")
    parser.add_argument("--gen_batch_size", type=int, default=None)
    parser.add_argument(
        "--gen_tv",
        type=float,
        default=None,
        help="Total-variation weight (default 3e-3: DeepInversion's 1e-4 is for 224 px; at 28 px it left noise).",
    )
    parser.add_argument(
        "--gen_r_bn",
        type=float,
        default=None,
        help="BatchNorm-statistics weight (default 0.1: DeepInversion's ImageNet 0.01 left the statistics unmatched "
        "on this small teacher).",
    )
    parser.add_argument(
        "--gen_jitter",
        type=int,
        default=None,
        help="Random roll in pixels, with random flips when > 0 (default 0: a 28 px item rolls apart).",
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="Debugging: cap the training set.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Debugging: cap the test set.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine).")
    parser.add_argument("--overwrite", action="store_true", help="Discard results made with another config.")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="Processes that split the seeds between them (one core each, --threads threads), merged at the end; "
        "each writes <work_dir>/workers/seeds-*.log and resumes from its own results file. Default: 2 (1 on a "
        "one-core machine).",
    )
    parser.add_argument(
        "--merge_from",
        nargs="+",
        default=None,
        help="JSON files of other workers (e.g. one per seed, run in parallel with their own --results_dir and "
        "--work_dir) to fold into this results file; their configuration must match. Runs no training.",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: must be >= 1.")
    for name, value in SIZES["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.epochs is not None and len(args.epochs) not in (1, len(args.fractions)):
        parser.error(
            f"--epochs: got {len(args.epochs)} values for {len(args.fractions)} --fractions; give one value, or one "
            "per fraction in the same order."
        )
    if args.datafree_epochs is None:
        args.datafree_epochs = args.max_epochs
    if args.dataset_dir is None:
        args.dataset_dir = str(EMBEDDED_DATASET if args.quick else ROOT / "outputs" / "fashion_mnist_full")
    prefix = "data_efficiency_quick" if args.quick else "data_efficiency"
    if args.work_dir is None:
        args.work_dir = str(ROOT / "outputs" / "benchmarks" / prefix)
    args.prefix = prefix
    return args


def load_example(name: str):
    """An example script as a module (by path: the examples are not a package)."""
    module_name = f"dearkd_examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def ensure_dataset(path: str) -> None:
    if (Path(path) / "dataset_dict.json").is_file():
        return
    print(f"Preparing the full Fashion-MNIST set in {path} ...", flush=True)
    load_example("prepare_fashion_mnist").main(["--full", "--output_dir", path])


# ---- the config that results depend on, and the results file ----


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a row's number; rows from a different config are never mixed in."""
    return {
        "dataset_dir": os.path.abspath(args.dataset_dir),
        "epochs": args.epochs and dict(zip(map(str, args.fractions), args.epochs * len(args.fractions))),
        "full_set_epochs": args.full_set_epochs,
        "max_epochs": args.max_epochs,
        "datafree_epochs": args.datafree_epochs,
        "datafree_distillation_type": args.datafree_distillation_type,
        "rand_augment": args.rand_augment,
        "mixup": args.mixup,
        "cutmix": args.cutmix,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "student": args.student,
        "teacher": args.teacher,
        "num_generated": args.num_generated,
        "gen_iterations": args.gen_iterations,
        "gen_batch_size": args.gen_batch_size,
        "gen_tv": args.gen_tv,
        "gen_r_bn": args.gen_r_bn,
        "gen_jitter": args.gen_jitter,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "stop_epoch_fraction": DEFAULT_STOP_FRACTION,
    }


class Results:
    """The JSON file, rewritten atomically after each row."""

    def __init__(self, path: Path, config: dict[str, Any], overwrite: bool):
        self.path = path
        self.config = config
        self.rows: list[dict[str, Any]] = []
        if path.is_file() and not overwrite:
            saved = json.loads(path.read_text())
            if saved.get("config") != config:
                raise SystemExit(
                    f"{path} holds rows made with another configuration ({saved.get('config')}); pass --overwrite "
                    "to discard them, or another --results_dir."
                )
            self.rows = saved["rows"]

    def has(self, method: str, fraction: float, seed: int) -> bool:
        return any(_key(row) == (method, fraction, seed) for row in self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"config": self.config, "rows": self.rows}, indent=2))
        os.replace(tmp, self.path)


def merge_rows(results: Results, paths: list[Path]) -> None:
    """Add the rows of other workers' results files that this one lacks (same configuration only)."""
    for path in paths:
        other = json.loads(path.read_text())
        if other.get("config") != results.config:
            raise SystemExit(f"--merge_from {path}: made with another configuration; it cannot be merged.")
        for row in other["rows"]:
            if not results.has(*_key(row)):
                results.add(row)


def run_workers(args: argparse.Namespace, argv: list[str], results: Results) -> None:
    """This script once per group of seeds, in parallel, each with its own results file; then fold them in."""
    groups = [args.seeds[i :: args.workers] for i in range(min(args.workers, len(args.seeds)))]
    workers_dir = Path(args.work_dir) / "workers"
    workers_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seeds in groups:
        name = "seeds-" + "-".join(map(str, seeds))
        path = workers_dir / name / f"{args.prefix}.json"
        if args.overwrite:
            path.unlink(missing_ok=True)
        own = Results(path, results.config, overwrite=False)
        for row in results.rows:  # rows this file already has are not trained again
            if row["seed"] in seeds and not own.has(*_key(row)):
                own.add(row)
        passed = [arg for arg in argv if arg != "--overwrite"]  # handled above, once
        command = [sys.executable, __file__, *passed, "--workers=1", "--seeds", *map(str, seeds)]
        command.append(f"--results_dir={own.path.parent}")
        log = open(workers_dir / f"{name}.log", "w")  # noqa: SIM115 (closed below, after the process ends)
        print(f"worker {name}: log in {log.name}", flush=True)
        jobs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, own.path))
    failed = []
    for process, log, _ in jobs:
        if process.wait() != 0:
            failed.append(log.name)
        log.close()
    merge_rows(results, [path for *_, path in jobs if path.is_file()])
    if failed:
        raise SystemExit(f"workers failed (their finished rows are kept); see {', '.join(failed)}")


def _key(row: dict[str, Any]) -> tuple[str, float, int]:
    return row["method"], float(row["train_fraction"]), int(row["seed"])


# ---- rows ----


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work_dir)
        self.train_teacher = load_example("train_teacher")
        self.run = load_example("run")
        self.generate = load_example("generate")

    def common(self, fraction: float, seed: int, output_dir: Path, epochs: float) -> list[str]:
        a = self.args
        flags = [
            f"--train_fraction={fraction}",
            f"--seed={seed}",
            "--image_size=28",
            f"--output_dir={output_dir}",
            f"--num_train_epochs={epochs}",
            f"--rand_augment={a.rand_augment}",
            f"--mixup={a.mixup}",
            f"--cutmix={a.cutmix}",
            f"--per_device_train_batch_size={a.batch_size}",
            "--per_device_eval_batch_size=256",
            f"--learning_rate={a.learning_rate}",
            f"--weight_decay={a.weight_decay}",
            "--lr_scheduler_type=cosine",
            "--warmup_steps=0.1",
            "--save_strategy=no",
            "--eval_strategy=no",
            "--logging_strategy=epoch",
            "--report_to=none",
            "--disable_tqdm=true",
            "--log_level=warning",
            f"--use_cpu={not torch.cuda.is_available()}",
        ]
        if a.max_train_samples is not None:
            flags.append(f"--max_train_samples={a.max_train_samples}")
        if a.max_eval_samples is not None:
            flags.append(f"--max_eval_samples={a.max_eval_samples}")
        return flags

    def teacher_dir(self, fraction: float, seed: int) -> Path:
        return self.work / f"teacher-f{fraction}-s{seed}"

    def train_teacher_row(self, fraction: float, seed: int) -> float:
        output_dir = self.teacher_dir(fraction, seed)
        shutil.rmtree(output_dir, ignore_errors=True)
        argv = [
            "--model_type=resnet",
            f"--config_overrides={self.args.teacher}",
            f"--dataset_name={self.args.dataset_dir}",
            *self.common(fraction, seed, output_dir, epochs_for(self.args, fraction)),
        ]
        metrics = self.train_teacher.main(argv)
        (output_dir / "DONE").write_text(json.dumps(metrics))
        return metrics["eval_accuracy"]

    def ensure_teacher(self, fraction: float, seed: int) -> str:
        """The (fraction, seed) teacher's folder, trained now if a previous run did not leave it."""
        folder = self.teacher_dir(fraction, seed)
        if not (folder / "DONE").is_file():
            print(f"  (re)training the teacher of fraction {fraction}, seed {seed}", flush=True)
            self.train_teacher_row(fraction, seed)
        return str(folder)

    def student_row(
        self,
        method: str,
        fraction: float,
        seed: int,
        *,
        beta: float,
        stop_epoch: float,
        mhca: bool,
        epochs: float,
        dataset: str | None = None,
        teacher: str | None = None,
    ) -> float:
        """examples/run.py on the real data (or a generated set, evaluated on the real test set).

        The teacher is the (fraction, seed) teacher of the work dir unless ``teacher`` names another folder.
        """
        a = self.args
        teacher = teacher or self.ensure_teacher(fraction, seed)
        output_dir = self.work / f"{method}-f{fraction}-s{seed}"
        shutil.rmtree(output_dir, ignore_errors=True)
        student = a.student + ("" if mhca else ",mhca_layers=[]")
        argv = [
            f"--teacher_model_name_or_path={teacher}",
            "--model_type=dearkd_vit",
            f"--config_overrides={student}",
            f"--beta={beta}",
            f"--distillation_stop_epoch={stop_epoch}",
            *self.common(1.0 if dataset else fraction, seed, output_dir, epochs),
        ]
        if dataset is None:
            argv.append(f"--dataset_name={a.dataset_dir}")
        else:
            argv += [
                f"--dataset_name={dataset}",
                f"--eval_dataset_name={a.dataset_dir}",
                f"--distillation_type={a.datafree_distillation_type}",
            ]
        return self.run.main(argv)["eval_accuracy"]

    def generated_set(self, fraction: float, seed: int, bpid: bool) -> str:
        """examples/generate.py from the (fraction, seed) teacher; resumes or reuses a finished set."""
        a = self.args
        # The priors are in the name: a set made with other priors is kept, never resumed with these ones.
        priors = f"tv{a.gen_tv:g}-rbn{a.gen_r_bn:g}-j{a.gen_jitter}-it{a.gen_iterations}-b{a.gen_batch_size}"
        output_dir = self.work / f"generated-{'bpid' if bpid else 'di'}-f{fraction}-s{seed}-{priors}"
        argv = [
            f"--teacher_model_name_or_path={self.ensure_teacher(fraction, seed)}",
            f"--num_images={a.num_generated}",
            f"--output_dir={output_dir}",
            f"--iterations={a.gen_iterations}",
            f"--batch_size={a.gen_batch_size}",
            "--resolution=28",
            f"--bpid_weight={1.0 if bpid else 0.0}",
            f"--tv={a.gen_tv}",
            f"--r_bn={a.gen_r_bn}",
            f"--jitter={a.gen_jitter}",
            f"--flip={a.gen_jitter > 0}",
            f"--seed={seed}",
        ]
        self.generate.main(argv)
        return str(output_dir)

    def row(self, method: str, fraction: float, seed: int) -> tuple[float, dict[str, Any]]:
        epochs = row_epochs(self.args, method, fraction)
        stop = default_stop_epoch(epochs)
        train = functools.partial(self.student_row, method, fraction, seed, epochs=epochs)
        if method == "teacher":
            return self.train_teacher_row(fraction, seed), {}
        if method in ("scratch", "scratch_mhca"):
            return train(beta=0.0, stop_epoch=0.0, mhca=method == "scratch_mhca"), {}
        if method == "deit":
            return train(beta=0.0, stop_epoch=epochs, mhca=False), {}
        if method == "dearkd":
            return train(beta=1.0, stop_epoch=stop, mhca=True), {}
        if method == "dearkd_no_mhca":
            return train(beta=1.0, stop_epoch=stop, mhca=False), {}
        if method == "dearkd_no_align":
            return train(beta=0.0, stop_epoch=stop, mhca=True), {}
        if method == "dearkd_no_stop":
            return train(beta=1.0, stop_epoch=epochs, mhca=True), {}
        bpid = method == "datafree_bpid"
        start = time.perf_counter()
        dataset = self.generated_set(fraction, seed, bpid)
        generation_s = time.perf_counter() - start
        accuracy = train(beta=1.0, stop_epoch=stop, mhca=True, dataset=dataset)
        return accuracy, {"generation_s": generation_s, "num_generated": self.args.num_generated}


def epochs_for(args: argparse.Namespace, fraction: float) -> float:
    """Epochs on ``fraction`` of the real training set (the same for every method at that fraction)."""
    if args.epochs is not None:
        return args.epochs[0] if len(args.epochs) == 1 else args.epochs[args.fractions.index(fraction)]
    return min(args.max_epochs, args.full_set_epochs / fraction)


def row_epochs(args: argparse.Namespace, method: str, fraction: float) -> float:
    return args.datafree_epochs if method.startswith("datafree") else epochs_for(args, fraction)


# ---- table and plot ----


def summary(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, float]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], float(row["train_fraction"])), []).append(row)
    out = {}
    for key, group in groups.items():
        accuracies = [r["accuracy"] for r in group]
        out[key] = {
            "mean": statistics.mean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan,
            "n": len(accuracies),
            "wall_s": statistics.mean(r["wall_s"] for r in group),
        }
    return out


def write_table(path: Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    stats = summary(rows)
    fractions = sorted({f for _, f in stats})
    methods = [m for m in METHODS if any((m, f) in stats for f in fractions)]
    header = "| method | " + " | ".join(f"{f:.0%} acc (mean ± std, n)" for f in fractions)
    header += " | " + " | ".join(f"{f:.0%} wall s" for f in fractions) + " |"
    lines = [
        "# Data efficiency on Fashion-MNIST (test accuracy, %)",
        "",
        "Generated by `benchmarks/data_efficiency.py`; the JSON next to this file holds every row. Std is over seeds.",
        "",
        header,
        "|" + "---|" * (1 + 2 * len(fractions)),
    ]
    for method in methods:
        cells, walls = [], []
        for f in fractions:
            s = stats.get((method, f))
            if s is None:
                cells.append("-")
                walls.append("-")
                continue
            spread = "" if math.isnan(s["std"]) else f" ± {100 * s['std']:.2f}"
            cells.append(f"{100 * s['mean']:.2f}{spread} (n={s['n']})")
            walls.append(f"{s['wall_s']:.0f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " | " + " | ".join(walls) + " |")
    checks = targets(stats)
    if checks:
        lines += ["", "Targets (issue: data-efficiency benchmark), on the means:", ""]
        lines += [f"- {c['target']}: {c['measured']} ({'met' if c['met'] else 'missed'})" for c in checks]
    lines += ["", "Configuration:", "", "```json", json.dumps(config, indent=2), "```", ""]
    path.write_text("\n".join(lines))


def targets(stats: dict[tuple[str, float], dict[str, float]], low: float = 0.1) -> list[dict[str, Any]]:
    """The issue's accuracy targets, each where the rows it needs exist (points are percentage points)."""
    mean = {key: 100 * s["mean"] for key, s in stats.items()}
    checks = []

    def check(target: str, needs: list[tuple[str, float]], value, met, show) -> None:
        if all(key in mean for key in needs):
            v = value(*(mean[key] for key in needs))
            checks.append({"target": target, "value": v, "met": bool(met(v)), "measured": show(v)})

    def gap(a: float, b: float) -> float:
        return a - b

    points = "{:+.2f} points".format
    dearkd, deit, scratch, teacher = ((m, low) for m in ("dearkd", "deit", "scratch", "teacher"))
    check(f"{low:.0%}: dearkd >= deit + 0.5", [dearkd, deit], gap, lambda v: v >= 0.5, points)
    check(f"{low:.0%}: deit >= scratch + 2", [deit, scratch], gap, lambda v: v >= 2, points)
    check(f"{low:.0%}: dearkd >= teacher", [dearkd, teacher], gap, lambda v: v >= 0, points)
    for fraction in sorted({f for _, f in stats}):
        for method in ("datafree_di", "datafree_bpid"):
            check(
                f"{method} (teacher of {fraction:.0%}) >= 85% of full-data dearkd",
                [(method, fraction), ("dearkd", 1.0)],
                lambda d, full: d / full,
                lambda v: v >= 0.85,
                "{:.0%} of it".format,
            )
        check(
            f"datafree_bpid > datafree_di (teacher of {fraction:.0%})",
            [("datafree_bpid", fraction), ("datafree_di", fraction)],
            gap,
            lambda v: v > 0,
            points,
        )
    return checks


def write_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summary(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        points = sorted((f, s) for (m, f), s in stats.items() if m == method)
        if not points:
            continue
        xs = [f for f, _ in points]
        ys = [100 * s["mean"] for _, s in points]
        errs = [0.0 if math.isnan(s["std"]) else 100 * s["std"] for _, s in points]
        style = "--" if method == "teacher" else ":" if method.startswith("datafree") else "-"
        ax.errorbar(xs, ys, yerr=errs, marker="o", linestyle=style, capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("train fraction (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST: accuracy against training data")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(results: Results, results_dir: Path, prefix: str) -> None:
    if results.rows:
        write_table(results_dir / f"{prefix}.md", results.rows, results.config)
        write_plot(results_dir / f"{prefix}.png", results.rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.quick:
        ensure_dataset(args.dataset_dir)
    results_dir = Path(args.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", run_config(args), args.overwrite)
    if args.merge_from:
        merge_rows(results, [Path(path) for path in args.merge_from])
        write_reports(results, results_dir, args.prefix)
        return {"config": results.config, "rows": results.rows}
    if args.workers > 1 and len(args.seeds) > 1:
        run_workers(args, sys.argv[1:] if argv is None else list(argv), results)
        write_reports(results, results_dir, args.prefix)
        return {"config": results.config, "rows": results.rows}
    runner = Runner(args)
    total = len(args.seeds) * len(args.fractions) * len(args.methods)
    done = 0
    for seed in args.seeds:
        for fraction in args.fractions:
            for method in [m for m in METHODS if m in args.methods]:
                done += 1
                if results.has(method, fraction, seed):
                    continue
                print(f"[{done}/{total}] {method} fraction={fraction} seed={seed}", flush=True)
                start = time.perf_counter()
                accuracy, extra = runner.row(method, fraction, seed)
                row = {
                    "method": method,
                    "train_fraction": fraction,
                    "seed": seed,
                    "accuracy": accuracy,
                    "epochs": row_epochs(args, method, fraction),
                    "wall_s": time.perf_counter() - start,
                    **extra,
                }
                results.add(row)
                write_reports(results, results_dir, args.prefix)
                print(f"    accuracy {accuracy:.4f} in {row['wall_s']:.0f} s", flush=True)
    write_reports(results, results_dir, args.prefix)
    return {"config": results.config, "rows": results.rows}


if __name__ == "__main__":
    main()
