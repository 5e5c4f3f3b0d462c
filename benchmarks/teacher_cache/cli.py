"""``python -m benchmarks.teacher_cache``: flags, the results file, and the runs (live row, cache, cache rows) of
each (setting, seed) unit, in this process or split between workers."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import data_efficiency, harness, robustness
from benchmarks.data_efficiency import load_example, stored_path
from benchmarks.harness import RESULTS_DIR, fields, fold_in_workers, run_workers, workers_dir

from .report import ratio_for, refresh_speed, speed_ratio, write_table
from .settings import SETTING_CLASSES, SETTINGS, cache_argv, cache_info

DESCRIPTION = (
    "Accuracy of DearKD trained from a teacher cache (examples/cache_teacher.py, ``run.py --teacher_cache``) against\n"
    "DearKD with the live teacher, paired by seed, at the same epochs and with otherwise identical flags."
)

SIZES = {
    "full": dict(views=[16, 4, 1], fraction=0.1, grid_task="fmnist10", grid_images=450, grid_steps=250),
    "quick": dict(views=[2, 1], fraction=0.1, grid_task="fmnist10", grid_images=40, grid_steps=3),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.teacher_cache",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="Embedded subset, tiny models, 1 seed, K in {2, 1}.")
    parser.add_argument("--dataset_dir", default=None, help="Full Fashion-MNIST (default outputs/fashion_mnist_full).")
    parser.add_argument(
        "--work_dir", default=None, help="Teachers, caches, students (default outputs/benchmarks/...)."
    )
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Seeds (default 0 1 2; quick 0).")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--views", type=int, nargs="+", default=None, help="K of the cache rows (16 4 1; quick 2 1).")
    parser.add_argument(
        "--cache_views", type=int, default=None, help="Views stored per image (default: the largest --views)."
    )
    parser.add_argument("--grid_teacher", default=None, help="The grid cell's teacher (resnet18; quick small_resnet).")
    parser.add_argument("--speed_results", default=None, help="The speed benchmark's teacher-cache JSON.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="Processes that split the (setting, seed) units between them, one core each; merged at the end.",
    )
    parser.add_argument("--units", nargs="+", default=None, help=argparse.SUPPRESS)  # a worker's SETTING:SEED units
    parser.add_argument("--overwrite", action="store_true", help="Discard rows made with another configuration.")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Fold in the workers' finished rows, rewrite the table; train nothing.",
    )
    args = parser.parse_args(argv)
    for name, value in SIZES["quick" if args.quick else "full"].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.grid_teacher = args.grid_teacher or ("small_resnet" if args.quick else "resnet18")
    args.cache_views = args.cache_views or max(args.views)
    if min(args.views) < 1 or max(args.views) > args.cache_views:
        parser.error(f"--views {args.views}: each K must lie in [1, --cache_views={args.cache_views}].")
    return robustness.with_default_locations(args, "teacher_cache")


# ---- results ----


def run_config(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        # As robustness names it: the folder's name, so that committed results hold no machine paths.
        "dataset": "embedded subset" if args.quick else Path(args.dataset_dir).name,
        "cache_views": args.cache_views,
        "settings": {name: setting.config() for name, setting in settings.items()},
    }


class Results(harness.Results):
    """The teacher-cache results file: ``rows`` (one per setting, K, seed), ``live`` (the live-teacher rows) and
    ``caches`` (one per setting and seed)."""

    KEYS = {
        "rows": fields("setting", "K", "seed"),
        "live": fields("setting", "seed"),
        "caches": fields("setting", "seed"),
    }


# ---- the runs ----


def run_units(
    args: argparse.Namespace, settings: dict[str, Any], units: list[tuple[str, int]], results: Results
) -> None:
    """The units' rows by priority: every unit's live row, cache and largest-K row (the target's pair) first, then
    the next K of every unit, and so on; a run stopped early leaves the target's rows complete over the seeds."""
    for k in sorted(args.views, reverse=True):
        for name, seed in units:
            run_unit(args, settings[name], seed, results, views=[k])


def run_unit(
    args: argparse.Namespace,
    setting: Any,
    seed: int,
    results: Results,
    views: list[int] | None = None,
) -> None:
    """One (setting, seed): the live row and the cache unless done, then the cache rows of ``views`` (default: all
    of ``--views``), from the most views down."""
    name = setting.name
    if results.get((name, seed), "live") is None:
        print(f"[{name} seed={seed}] live teacher", flush=True)
        row = setting.row(seed)
        results.add({"setting": name, "seed": seed, **row}, "live")
        print(f"    accuracy {row['accuracy']:.4f} in {row['wall_s']:.0f} s", flush=True)
    live = results.get((name, seed), "live")

    folder = Path(args.work_dir) / "caches" / f"{name}-s{seed}"
    cache = results.get((name, seed), "caches")
    if cache is None:
        print(f"[{name} seed={seed}] cache of {args.cache_views} views", flush=True)
        teacher = setting.teacher(seed)
        argv = cache_argv(setting.run_flags(seed, folder), teacher, seed, args.cache_views, folder)
        start = time.perf_counter()
        load_example("cache_teacher").main(argv)
        build_s = time.perf_counter() - start
        cache = {"setting": name, "seed": seed, **cache_info(folder), "build_s": build_s}
        results.add(cache, "caches")
        print(f"    {cache['disk_bytes'] / 1e6:.1f} MB on disk in {build_s:.0f} s", flush=True)

    ratio, _ = speed_ratio(args)
    for k in sorted(args.views if views is None else views, reverse=True):
        if results.get((name, k, seed)) is not None:
            continue
        print(f"[{name} seed={seed}] cache K={k}", flush=True)
        row = setting.row(seed, f"dearkd_cache_k{k}", (f"--teacher_cache={folder}", f"--teacher_cache_views={k}"))
        row["flags"] = [_portable(flag, folder) for flag in row["flags"]]
        record = {
            "setting": name,
            "K": k,
            "seed": seed,
            "accuracy": row.pop("accuracy"),
            "live_accuracy": live["accuracy"],
            "bytes_per_view": cache["bytes_per_view"],
            "stage1_vs_plain": ratio_for(ratio, k),
            "cache_views": cache["num_views"],
            "cache_disk_bytes": cache["disk_bytes"],
            "cache_build_s": cache["build_s"],
            **row,
        }
        results.add(record)
        print(f"    accuracy {record['accuracy']:.4f} in {record['wall_s']:.0f} s", flush=True)


def unit_done(args: argparse.Namespace, results: Results, setting: str, seed: int) -> bool:
    """Whether a (setting, seed) has its live row, its cache and every cache row."""
    rows = [results.get((setting, k, seed)) for k in args.views]
    return results.get((setting, seed), "live") is not None and all(r is not None for r in rows)


def unit_of(record: dict[str, Any]) -> str:
    """The (setting, seed) unit a record belongs to, as ``--units`` names it: ``SETTING:SEED``."""
    return f"{record['setting']}:{record['seed']}"


def _portable(flag: str, folder: Path) -> str:
    """A flag naming the cache folder, with the folder as the results store paths (no machine paths)."""
    return flag.replace(str(folder), stored_path(str(folder))) if str(folder) in flag else flag


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.quick and not args.report_only:
        data_efficiency.ensure_dataset(args.dataset_dir)
    settings = {name: SETTING_CLASSES[name](args) for name in args.settings}
    results_dir = Path(args.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", run_config(args, settings), args.overwrite)
    # What the workers of an earlier, killed run finished (in another grouping) is kept (also by --report_only), before
    # the units left to run are counted.
    if not args.overwrite and not args.units:
        fold_in_workers(results, workers_dir(args.work_dir, results))
    if not args.report_only:
        if args.units:
            units = [(unit.partition(":")[0], int(unit.partition(":")[2])) for unit in args.units]
        else:
            # Snake order: dealt round-robin to the workers, each gets a mix of the settings (they differ in cost).
            units = [(name, seed) for i, seed in enumerate(args.seeds) for name in args.settings[:: (-1) ** i]]
        units = [unit for unit in units if not unit_done(args, results, *unit)]
        if args.workers > 1 and len(units) > 1:
            # One worker per group of units, each given as SETTING:SEED after --units (its records follow it).
            by_unit = [f"{name}:{seed}" for name, seed in units]
            run_workers(args, argv, results, "benchmarks.teacher_cache", by_unit, "--units", unit_of)
        else:
            run_units(args, settings, units, results)
    if results.rows:
        refresh_speed(results, args)
        if not args.units:
            write_table(results_dir / f"{args.prefix}.md", results, args)
    return {"config": results.config, **results.tables}
