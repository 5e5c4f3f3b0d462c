#!/usr/bin/env python
"""Accuracy of DearKD trained from a teacher cache (examples/cache_teacher.py, ``run.py --teacher_cache``) against
DearKD with the live teacher, paired by seed, at the same epochs and with otherwise identical flags.

Two settings, each run through an existing harness (its runner, teachers and flags), not a copy of it:

    fmnist_10pct   benchmarks.data_efficiency at train fraction 0.1 (6000 images, 30 epochs, its 64-wide student and
                   small ResNet teacher): the live row is that harness's ``dearkd`` row
    grid_cell      one cell of benchmarks.robustness: task fmnist10, 450 training images, 250 steps, teacher resnet18
                   (timm, trained by the harness), its 96-wide 4-block student: the live row is its ``dearkd`` row

For each setting and seed: the live-teacher row (library defaults, the harness's own ``dearkd`` flags), then ONE
cache of ``--cache_views`` (16) views per training image written by examples/cache_teacher.py with the run's data and
student flags and seed, then one row per ``--views`` K (16, 4, 1: a 16-view cache serves each through
``--teacher_cache_views K``) with the live row's flags plus ``--teacher_cache DIR --teacher_cache_views K``.

Rows are appended to ``<results_dir>/<prefix>.json`` as they finish and skipped on a re-run (``prefix``:
``teacher_cache``, ``teacher_cache_quick`` with --quick). The JSON holds ``rows`` (one per setting, K, seed:
``accuracy``, ``live_accuracy`` of the same seed, ``bytes_per_view``, ``stage1_vs_plain``, the cache's size and build
time), ``live`` (the live rows) and ``caches`` (one per setting and seed). ``<prefix>.md``: mean ± std per (setting,
K), paired differences against live, and the target: K=16's mean within 0.5 points of live's.

``stage1_vs_plain`` (a stage-1 step from the cache over a plain labels-only step) is read from the speed benchmark's
teacher-cache results file under benchmarks/results (a ``*cache*speed*.json`` / ``*speed*cache*.json``, or
``--speed_results``) when one exists; null otherwise.

    python -m benchmarks.teacher_cache --dataset_dir outputs/fashion_mnist_full  # about 1 hour on 2 CPU cores
    python -m benchmarks.teacher_cache --quick  # embedded subset, tiny models: about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the cache script's per-shard bar would fill the workers' logs

import torch  # noqa: E402

from benchmarks import data_efficiency, robustness  # noqa: E402
from benchmarks.data_efficiency import RESULTS_DIR, ROOT, load_example, stored_path  # noqa: E402
from dearkd_hf.data.loading import DataTrainingArguments  # noqa: E402
from dearkd_hf.scripts.model_arguments import ModelArguments  # noqa: E402
from dearkd_hf.teacher_cache import CACHE_FILE, bytes_per_view  # noqa: E402

SETTINGS = ("fmnist_10pct", "grid_cell")
TARGET_POINTS = 0.5  # K = max(views): its mean within this many points of the live teacher's mean
# The flags of examples/cache_teacher.py that a run's argv shares with it (data and student), besides --seed.
CACHE_SCRIPT_FLAGS = {f.name for f in fields(DataTrainingArguments)} | {f.name for f in fields(ModelArguments)}
SPEED_PATTERNS = ("*cache*speed*.json", "*speed*cache*.json")
# The ratio's names in that file, first found wins: a stage-1 step from the cache over a plain labels-only step.
SPEED_KEYS = ("stage1_vs_plain", "cached_vs_plain")

SIZES = {
    "full": dict(views=[16, 4, 1], fraction=0.1, grid_task="fmnist10", grid_images=450, grid_steps=250),
    "quick": dict(views=[2, 1], fraction=0.1, grid_task="fmnist10", grid_images=40, grid_steps=3),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.teacher_cache",
        description=__doc__.split("\n\n")[0],
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


# ---- the two settings, each through its own harness ----


class FashionMnist10:
    """benchmarks.data_efficiency at one fraction: its runner, teachers, ``dearkd`` row and flags."""

    name = "fmnist_10pct"

    def __init__(self, args: argparse.Namespace):
        quick = ["--quick", "--max_train_samples=40", "--max_eval_samples=40"] if args.quick else []
        self.args = data_efficiency.parse_args(
            [
                *quick,
                f"--dataset_dir={args.dataset_dir}",
                f"--work_dir={Path(args.work_dir) / self.name}",
                "--fractions",
                str(args.fraction),
                f"--threads={args.threads}",
            ]
        )
        self.fraction = args.fraction
        self.runner = data_efficiency.Runner(self.args)
        self.method = data_efficiency.BY_NAME["dearkd"]
        self.epochs = data_efficiency.epochs_for(self.args, self.fraction)

    def config(self) -> dict[str, Any]:
        return {"harness": "data_efficiency", "method": "dearkd", "fraction": self.fraction, "epochs": self.epochs}

    def teacher(self, seed: int) -> str:
        return self.runner.ensure_teacher(self.fraction, seed)

    def run_flags(self, seed: int, output_dir: Path) -> list[str]:
        """The data and student flags of the live row (as Runner.student_row builds them)."""
        a = self.args
        flags = self.runner.common(self.fraction, seed, output_dir, self.epochs)
        return [
            *flags,
            f"--dataset_name={a.dataset_dir}",
            "--model_type=dearkd_vit",
            f"--config_overrides={a.student}",
        ]

    def row(self, seed: int, name: str = "dearkd", extra: tuple[str, ...] = ()) -> dict[str, Any]:
        m = self.method
        flags = (*m.flags, *extra)
        start = time.perf_counter()
        accuracy = self.runner.student_row(
            name,
            self.fraction,
            seed,
            beta=m.beta,
            stop_epoch=m.stop_epoch(self.epochs),
            mhca=m.mhca,
            epochs=self.epochs,
            flags=flags,
        )
        return {
            "accuracy": accuracy,
            "epochs": self.epochs,
            "flags": list(flags),
            "wall_s": time.perf_counter() - start,
        }


class GridCell:
    """One cell of benchmarks.robustness: its runner, teachers, ``dearkd`` row (library defaults) and flags."""

    name = "grid_cell"

    def __init__(self, args: argparse.Namespace):
        self.args = robustness.parse_args(
            [
                *(["--quick"] if args.quick else []),
                f"--dataset_dir={args.dataset_dir}",
                f"--work_dir={Path(args.work_dir) / self.name}",
                "--tasks",
                args.grid_task,
                "--teachers",
                args.grid_teacher,
                "--train_images",
                str(args.grid_images),
                "--steps",
                str(args.grid_steps),
                f"--threads={args.threads}",
            ]
        )
        self.cell = (args.grid_task, args.grid_images, args.grid_steps, args.grid_teacher)
        self.runner = robustness.Runner(self.args)
        self.epochs = self.runner.epochs(args.grid_images, args.grid_steps)

    def config(self) -> dict[str, Any]:
        task, n, steps, teacher = self.cell
        return {
            "harness": "robustness",
            "method": "dearkd",
            "task": task,
            "train_images": n,
            "steps": steps,
            "teacher": teacher,
            "epochs": self.epochs,
            **robustness.run_config(self.args),
        }

    def teacher(self, seed: int) -> str:
        task, n, _, teacher = self.cell
        return self.runner.teacher(task, n, teacher, seed)[0]

    def run_flags(self, seed: int, output_dir: Path) -> list[str]:
        """The data and student flags of the live row (as Runner.student builds them)."""
        task, n, _, _ = self.cell
        flags = self.runner.common(task, n, seed, output_dir, self.epochs)
        return [*flags, "--model_type=dearkd_vit", f"--config_overrides={self.args.student}"]

    def row(self, seed: int, name: str = "dearkd", extra: tuple[str, ...] = ()) -> dict[str, Any]:
        if extra:  # the harness's variant mechanism: a DearKD row with extra run.py flags
            self.args.variants[name] = list(extra)
        row = self.runner.row(name, self.cell, seed)
        return {k: row[k] for k in ("accuracy", "epochs", "flags", "wall_s", "log", "commit") if k in row}


SETTING_CLASSES = {cls.name: cls for cls in (FashionMnist10, GridCell)}


def cache_argv(run_flags: list[str], teacher: str, seed: int, num_views: int, output_dir: Path) -> list[str]:
    """examples/cache_teacher.py's argv for a run: the run's data and student flags (those the cache script shares with
    run.py), its seed and teacher, the views, and the cache folder."""
    shared = [flag for flag in run_flags if flag.partition("=")[0][2:] in CACHE_SCRIPT_FLAGS]
    return [
        f"--teacher_model_name_or_path={teacher}",
        *shared,
        f"--seed={seed}",
        f"--num_views={num_views}",
        f"--output_dir={output_dir}",
    ]


def cache_info(folder: Path) -> dict[str, Any]:
    """What a finished cache holds: views, images, stored bytes per view (fp16 logits and targets, view parameters)
    and in all, and the bytes its files take on disk."""
    config = json.loads((folder / CACHE_FILE).read_text())
    tokens = math.prod(config["student"]["grid"])
    shapes = [(tokens, channels) for channels in config["student"]["target_channels"]]
    per_view = bytes_per_view(len(config["teacher"]["id2label"]), config["logits"]["top_k"], shapes)
    on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {
        "num_views": config["num_views"],
        "num_images": config["data"]["num_images"],
        "bytes_per_view": per_view,
        "payload_bytes": per_view * config["num_views"] * config["data"]["num_images"],
        "disk_bytes": on_disk,
    }


# ---- results ----


def run_config(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        # As robustness names it: the folder's name, so that committed results hold no machine paths.
        "dataset": "embedded subset" if args.quick else Path(args.dataset_dir).name,
        "cache_views": args.cache_views,
        "settings": {name: setting.config() for name, setting in settings.items()},
    }


class Results:
    """The JSON file (``rows``, ``live``, ``caches``), rewritten atomically after each record."""

    KEYS = {"rows": ("setting", "K", "seed"), "live": ("setting", "seed"), "caches": ("setting", "seed")}

    def __init__(self, path: Path, config: dict[str, Any], overwrite: bool):
        self.path, self.config = path, config
        self.data: dict[str, list[dict[str, Any]]] = {kind: [] for kind in self.KEYS}
        if path.is_file() and not overwrite:
            saved = json.loads(path.read_text())
            if saved.get("config") != config:
                raise SystemExit(f"{path} holds rows of another configuration; pass --overwrite to discard them.")
            self.data = {kind: saved.get(kind, []) for kind in self.KEYS}

    def get(self, kind: str, **key: Any) -> dict[str, Any] | None:
        return next((r for r in self.data[kind] if all(r[k] == v for k, v in key.items())), None)

    def add(self, kind: str, record: dict[str, Any]) -> None:
        key = {k: record[k] for k in self.KEYS[kind]}
        self.data[kind] = [r for r in self.data[kind] if any(r[k] != v for k, v in key.items())] + [record]
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"config": self.config, **self.data}, indent=2))
        os.replace(tmp, self.path)

    def merge(self, path: Path) -> None:
        other = json.loads(path.read_text())
        if other.get("config") != self.config:
            raise SystemExit(f"{path}: made with another configuration; it cannot be merged.")
        for kind, keys in self.KEYS.items():
            for record in other.get(kind, []):
                if self.get(kind, **{k: record[k] for k in keys}) is None:
                    self.data[kind].append(record)
        self.save()


# ---- the speed benchmark's ratio ----


def speed_ratio(args: argparse.Namespace) -> tuple[Any, str | None]:
    """``stage1_vs_plain`` from the speed benchmark's teacher-cache results (a number, or one per K), and the file it
    came from; (None, None) when there is no such file or it holds no such key."""
    if args.speed_results:
        candidates = [Path(args.speed_results)]
    else:
        candidates = sorted({p for pattern in SPEED_PATTERNS for p in RESULTS_DIR.rglob(pattern)})
    for path in candidates:
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for key in SPEED_KEYS:
            value = _find_key(data, key)
            if value is not None:
                return value, f"`{stored_path(str(path))}` (key `{key}`)"
    return None, None


def _find_key(data: Any, key: str) -> Any:
    if isinstance(data, dict):
        if key in data:
            return data[key]
        for value in data.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def ratio_for(value: Any, k: int) -> float | None:
    """The ratio of K views: one number for every K, or a mapping by K (str or int keys)."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        for key in (str(k), k, f"K={k}", f"k{k}"):
            if isinstance(value.get(key), (int, float)):
                return float(value[key])
    return None


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
    if results.get("live", setting=name, seed=seed) is None:
        print(f"[{name} seed={seed}] live teacher", flush=True)
        row = setting.row(seed)
        results.add("live", {"setting": name, "seed": seed, **row})
        print(f"    accuracy {row['accuracy']:.4f} in {row['wall_s']:.0f} s", flush=True)
    live = results.get("live", setting=name, seed=seed)

    folder = Path(args.work_dir) / "caches" / f"{name}-s{seed}"
    cache = results.get("caches", setting=name, seed=seed)
    if cache is None:
        print(f"[{name} seed={seed}] cache of {args.cache_views} views", flush=True)
        teacher = setting.teacher(seed)
        argv = cache_argv(setting.run_flags(seed, folder), teacher, seed, args.cache_views, folder)
        start = time.perf_counter()
        load_example("cache_teacher").main(argv)
        build_s = time.perf_counter() - start
        cache = {"setting": name, "seed": seed, **cache_info(folder), "build_s": build_s}
        results.add("caches", cache)
        print(f"    {cache['disk_bytes'] / 1e6:.1f} MB on disk in {build_s:.0f} s", flush=True)

    ratio, _ = speed_ratio(args)
    for k in sorted(args.views if views is None else views, reverse=True):
        if results.get("rows", setting=name, K=k, seed=seed) is not None:
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
        results.add("rows", record)
        print(f"    accuracy {record['accuracy']:.4f} in {record['wall_s']:.0f} s", flush=True)


def unit_done(args: argparse.Namespace, results: Results, setting: str, seed: int) -> bool:
    """Whether a (setting, seed) has its live row, its cache and every cache row."""
    rows = [results.get("rows", setting=setting, K=k, seed=seed) for k in args.views]
    return results.get("live", setting=setting, seed=seed) is not None and all(r is not None for r in rows)


def _portable(flag: str, folder: Path) -> str:
    """A flag naming the cache folder, with the folder as the results store paths (no machine paths)."""
    return flag.replace(str(folder), stored_path(str(folder))) if str(folder) in flag else flag


def run_workers(args: argparse.Namespace, argv: list[str], results: Results, units: list[tuple[str, int]]) -> None:
    """This script once per group of (setting, seed) units, in parallel, each with its own results file and log under
    ``<work_dir>/workers/``; then fold their records in."""
    workers_dir = Path(args.work_dir) / "workers"
    workers_dir.mkdir(parents=True, exist_ok=True)
    groups = [units[i :: args.workers] for i in range(min(args.workers, len(units)))]
    passed = [a for a in argv if a != "--overwrite"]  # later flags win: --workers=1, --results_dir
    running = []
    for group in groups:
        name = "units-" + "-".join(f"{s}{seed}" for s, seed in group)
        path = workers_dir / name / f"{args.prefix}.json"
        if args.overwrite:
            path.unlink(missing_ok=True)
        own = Results(path, results.config, overwrite=False)  # resumes what a killed worker of this group finished
        for kind, keys in Results.KEYS.items():  # and what this file already has is not run again
            for record in results.data[kind]:
                key = {k: record[k] for k in keys}
                if (record["setting"], record["seed"]) in group and own.get(kind, **key) is None:
                    own.data[kind].append(record)
        own.save()
        command = [sys.executable, "-m", "benchmarks.teacher_cache", *passed, "--workers=1"]
        command += [f"--results_dir={own.path.parent}", "--units", *(f"{s}:{seed}" for s, seed in group)]
        log = open(workers_dir / f"{name}.log", "w")  # noqa: SIM115 (closed below, after the process ends)
        print(f"worker {name}: log in {log.name}", flush=True)
        running.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log, own.path))
    failed = []
    for process, log, _ in running:
        if process.wait() != 0:
            failed.append(log.name)
        log.close()
    for *_, path in running:
        if path.is_file():
            results.merge(path)
    if failed:
        raise SystemExit(f"workers failed (their finished rows are kept); see {', '.join(failed)}")


# ---- the report ----


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else math.nan,
        "n": len(values),
    }


def _fmt(s: dict[str, float], sign: str = "") -> str:
    spread = "" if math.isnan(s["std"]) else f" ± {s['std']:.2f}"
    return f"{s['mean']:{sign}.2f}{spread}"


def summary(results: Results) -> dict[str, Any]:
    """Per (setting, K): accuracy mean/std (%), live's over the same seeds, the paired difference; per setting the
    target check on the largest K."""
    out: dict[str, Any] = {}
    rows = results.data["rows"]
    for setting in sorted({r["setting"] for r in rows}, key=lambda s: SETTINGS.index(s) if s in SETTINGS else 99):
        per_k = {}
        for k in sorted({r["K"] for r in rows if r["setting"] == setting}, reverse=True):
            mine = [r for r in rows if r["setting"] == setting and r["K"] == k]
            per_k[k] = {
                "accuracy": _mean_std([100 * r["accuracy"] for r in mine]),
                "live": _mean_std([100 * r["live_accuracy"] for r in mine]),
                "paired": _mean_std([100 * (r["accuracy"] - r["live_accuracy"]) for r in mine]),
                "seeds": sorted(r["seed"] for r in mine),
            }
        top = max(per_k)
        diff = per_k[top]["accuracy"]["mean"] - per_k[top]["live"]["mean"]
        caches = [c for c in results.data["caches"] if c["setting"] == setting]
        out[setting] = {
            "K": per_k,
            "target": {"K": top, "diff": diff, "met": abs(diff) <= TARGET_POINTS},
            "caches": caches,
        }
    return out


def write_table(path: Path, results: Results, args: argparse.Namespace) -> None:
    stats = summary(results)
    _, speed_file = speed_ratio(args)
    lines = [
        "# Teacher cache: accuracy of DearKD from K cached views against the live teacher (test accuracy, %)",
        "",
        f"Generated by `python -m benchmarks.teacher_cache{' --quick' if args.quick else ''}`. Per setting and seed: "
        "DearKD with the live teacher (the harness's",
        "`dearkd` row, library defaults), and the same run with `--teacher_cache DIR --teacher_cache_views K` from "
        f"one {args.cache_views}-view",
        "cache (examples/cache_teacher.py, same data and student flags and seed). Mean ± std over seeds; paired: "
        "cache minus live",
        "on the same seed.",
        "",
        "| setting | K | seeds | cache | live | paired (cache - live) | bytes per view | stage1_vs_plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, s in stats.items():
        for k, v in s["K"].items():
            ratio = next((r["stage1_vs_plain"] for r in results.data["rows"] if r["setting"] == setting), None)
            per_view = next((c["bytes_per_view"] for c in s["caches"]), "-")
            lines.append(
                f"| {setting} | {k} | {len(v['seeds'])} | {_fmt(v['accuracy'])} | {_fmt(v['live'])} | "
                f"{_fmt(v['paired'], '+')} | {per_view} | {'-' if ratio is None else f'{ratio:.3f}'} |"
            )
    lines += ["", f"Target: K={max(args.views)}'s mean within {TARGET_POINTS} points of the live teacher's mean.", ""]
    for setting, s in stats.items():
        t = s["target"]
        others = "; ".join(
            f"K={k}: {_fmt(v['paired'], '+')}" for k, v in s["K"].items() if k != t["K"]
        )  # where the smaller caches land
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"- `{setting}`: K={t['K']} - live = {t['diff']:+.2f} points: **{verdict}**; {others or '-'}")
    lines += ["", "Caches (one per setting and seed):", ""]
    lines += ["| setting | seed | images | views | bytes per view | payload (MB) | on disk (MB) | build (s) |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for setting, s in stats.items():
        for c in sorted(s["caches"], key=lambda c: c["seed"]):
            lines.append(
                f"| {setting} | {c['seed']} | {c['num_images']} | {c['num_views']} | {c['bytes_per_view']} | "
                f"{c['payload_bytes'] / 1e6:.1f} | {c['disk_bytes'] / 1e6:.1f} | {c['build_s']:.0f} |"
            )
    lines += [
        "",
        "`stage1_vs_plain`: "
        + (
            f"read from {speed_file}: the speed benchmark's own setup (its student, teacher and batch, see that "
            "file), one number for every row, not a timing of these settings' runs."
            if speed_file
            else "null: no speed results for the teacher cache (`benchmarks/results/*cache*speed*.json`) were found."
        ),
        "",
        "Configuration:",
        "",
        "```json",
        json.dumps(results.config, indent=2),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def refresh_speed(results: Results, args: argparse.Namespace) -> None:
    """Fill ``stage1_vs_plain`` of every row from the speed results now present (null when there are none)."""
    ratio, _ = speed_ratio(args)
    for row in results.data["rows"]:
        row["stage1_vs_plain"] = ratio_for(ratio, row["K"])
    results.save()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.quick and not args.report_only:
        data_efficiency.ensure_dataset(args.dataset_dir)
    settings = {name: SETTING_CLASSES[name](args) for name in args.settings}
    results_dir = Path(args.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", run_config(args, settings), args.overwrite)
    # What the workers of an earlier, killed run finished (in another grouping) is kept (also by --report_only).
    if not args.overwrite and not args.units:
        for path in sorted((Path(args.work_dir) / "workers").glob(f"*/{args.prefix}.json")):
            if json.loads(path.read_text()).get("config") == results.config:
                results.merge(path)
    if not args.report_only:
        if args.units:
            units = [(unit.partition(":")[0], int(unit.partition(":")[2])) for unit in args.units]
        else:
            # Snake order: dealt round-robin to the workers, each gets a mix of the settings (they differ in cost).
            units = [(name, seed) for i, seed in enumerate(args.seeds) for name in args.settings[:: (-1) ** i]]
        units = [unit for unit in units if not unit_done(args, results, *unit)]
        if args.workers > 1 and len(units) > 1:
            run_workers(args, argv, results, units)
        else:
            run_units(args, settings, units, results)
    if results.data["rows"]:
        refresh_speed(results, args)
        if not args.units:
            write_table(results_dir / f"{args.prefix}.md", results, args)
    return {"config": results.config, **results.data}


if __name__ == "__main__":
    main()
