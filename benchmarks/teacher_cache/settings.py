"""The teacher-cache benchmark's two settings, each run through an existing benchmark's harness (its runner,
teachers and flags, not a copy of them), and the cache built for a run of one: examples/cache_teacher.py's argv and
what the finished cache holds."""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from benchmarks import data_efficiency, robustness
from dearkd_hf.data.loading import DataTrainingArguments
from dearkd_hf.scripts.model_arguments import ModelArguments
from dearkd_hf.teacher_cache import CACHE_FILE, bytes_per_view

SETTINGS = ("fmnist_10pct", "grid_cell")
# The flags of examples/cache_teacher.py that a run's argv shares with it (data and student), besides --seed.
CACHE_SCRIPT_FLAGS = {f.name for f in fields(DataTrainingArguments)} | {f.name for f in fields(ModelArguments)}


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
