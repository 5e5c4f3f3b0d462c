"""``python -m benchmarks.data_efficiency``: flags, default sizes, and the loop over rows."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS_DIR, ROOT, run_workers
from dearkd_hf.data.loading import EMBEDDED_DATASET

from .harness import Results, Runner, ensure_dataset, row_epochs, run_config
from .methods import METHOD_NAMES, methods_text
from .report import write_reports

DESCRIPTION = "Test accuracy of DearKD, its baselines and ablations, for fractions of Fashion-MNIST's training set."

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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.data_efficiency",
        description=DESCRIPTION,
        epilog="methods:\n" + methods_text(2),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    parser.add_argument(
        "--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES, help="Rows to run (see below)."
    )
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
    parser.add_argument(
        "--timm_teacher",
        default=None,
        help="A timm model name (e.g. resnet18, the teacher examples/demo.sh trains), from random weights, as every "
        "row's teacher instead of the transformers ResNet of --teacher. Its teachers, students and sets go to a "
        "subfolder of --work_dir named after it, so they never meet the default teacher's.",
    )
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
        "each writes <work_dir>/workers/<results dir name>/seeds-*.log and its own results file there, and a re-run "
        "keeps the rows the workers of a killed run finished. Default: 2 (1 on a one-core machine).",
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
    if args.timm_teacher is not None:
        if args.teacher is not None:
            parser.error("--teacher and --timm_teacher: give one (--teacher is a transformers ResNet's overrides).")
        import timm  # only here: every benchmark parses these flags, few name a timm teacher

        if not timm.is_model(args.timm_teacher):
            parser.error(f"--timm_teacher={args.timm_teacher}: not a timm model name (e.g. resnet18).")
    for name, value in SIZES["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.timm_teacher is not None:
        args.teacher = None  # no transformers ResNet, so none of its overrides
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
    if args.timm_teacher is not None:
        args.work_dir = str(Path(args.work_dir) / f"timm-{args.timm_teacher}")
    args.prefix = prefix
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the rows the flags ask for, rewriting the results file and the reports after each."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.quick:
        ensure_dataset(args.dataset_dir)
    results_dir = Path(args.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", run_config(args), args.overwrite)
    if args.merge_from:
        for path in args.merge_from:
            results.merge(path, label=f"--merge_from {path}")
        write_reports(results, results_dir, args.prefix)
        return {"config": results.config, "rows": results.rows}
    if args.workers > 1 and len(args.seeds) > 1:
        run_workers(args, sys.argv[1:] if argv is None else list(argv), results, "benchmarks.data_efficiency")
        write_reports(results, results_dir, args.prefix)
        return {"config": results.config, "rows": results.rows}
    runner = Runner(args)
    total = len(args.seeds) * len(args.fractions) * len(args.methods)
    done = 0
    for seed in args.seeds:
        for fraction in args.fractions:
            for method in [m for m in METHOD_NAMES if m in args.methods]:
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
