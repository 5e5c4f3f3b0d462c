"""The data-efficiency harness: the configuration that rows depend on, the results file's keys, and the runner.

The runner trains each row through the example scripts' ``main()`` (what a user runs); the report
(:mod:`.report`) and the methods (:mod:`.methods`) are separate, and the results file and the workers are every
benchmark's (:mod:`benchmarks.harness`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.harness import ROOT
from dearkd_hf.config import DEFAULT_STOP_FRACTION
from dearkd_hf.scripts.cli import parse_config_overrides

from .methods import BY_NAME

EXAMPLES = ROOT / "examples"


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


# ---- the config that results depend on, and the results file's keys ----


def stored_path(path: str) -> str:
    """A path as the results store it: relative to the repository when inside it (committed results hold no machine
    paths), else absolute. Inside it as written counts even when a symbolic link (e.g. ``outputs/``) leads out."""
    for absolute in (Path(os.path.abspath(path)), Path(path).resolve()):
        if absolute.is_relative_to(ROOT):
            return absolute.relative_to(ROOT).as_posix()
    return str(Path(path).resolve())


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a row's number; rows from a different config are never mixed in. ``timm_teacher``
    is there only when set (results of the default teacher predate it)."""
    timm_teacher = getattr(args, "timm_teacher", None)
    return {
        "dataset_dir": stored_path(args.dataset_dir),
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
        **({"timm_teacher": timm_teacher} if timm_teacher else {}),
    }


class Results(harness.Results):
    """The data-efficiency results file: rows keyed by (method, train fraction, seed)."""

    KEYS = {"rows": lambda row: (row["method"], float(row["train_fraction"]), int(row["seed"]))}


# ---- rows ----


class Runner:
    """Trains the rows through the example scripts' ``main()``; models and generated sets go to ``args.work_dir``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work_dir)
        self.train_teacher = load_example("train_teacher")
        self.run = load_example("run")
        self.generate = load_example("generate")
        # Appended to every student row's run.py flags (later flags win): how other benchmarks ask the same rows for
        # more records (e.g. an evaluation per epoch) without changing what they train.
        self.student_flags: list[str] = []

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
        """The (fraction, seed) teacher, resumable epoch by epoch (a timm resnet18 on the full set takes over an hour
        of one core)."""
        output_dir = self.teacher_dir(fraction, seed)
        timm_teacher = getattr(self.args, "timm_teacher", None)
        if timm_teacher:
            model = [f"--model_name_or_path={timm_teacher}"]  # timm builds it from random weights
        else:
            model = ["--model_type=resnet", f"--config_overrides={self.args.teacher}"]
        argv = [
            *model,
            f"--dataset_name={self.args.dataset_dir}",
            *self.common(fraction, seed, output_dir, epochs_for(self.args, fraction)),
        ]
        return harness.train_resumable(self.train_teacher.main, argv, output_dir)["eval_accuracy"]

    def ensure_teacher(self, fraction: float, seed: int) -> str:
        """The (fraction, seed) teacher's folder, trained now if a previous run did not leave it. A finished one made
        with other ``--teacher`` overrides (its saved config differs on one of them) is refused, not reused."""
        folder = self.teacher_dir(fraction, seed)
        if not (folder / "DONE").is_file():
            print(f"  (re)training the teacher of fraction {fraction}, seed {seed}", flush=True)
            self.train_teacher_row(fraction, seed)
        elif not getattr(self.args, "timm_teacher", None):  # a timm teacher has a work subfolder per name
            saved = json.loads((folder / "config.json").read_text())
            wanted = parse_config_overrides(self.args.teacher)
            differ = {key: saved.get(key) for key, value in wanted.items() if saved.get(key) != value}
            if differ:
                raise SystemExit(
                    f"--teacher={self.args.teacher}: the finished teacher in {folder} was made with {differ}; pass "
                    "another --work_dir, or delete that folder to train it again."
                )
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
        reuse: bool = False,
        flags: tuple[str, ...] = (),
    ) -> float:
        """examples/run.py on the real data (or a generated set, evaluated on the real test set).

        The teacher is the (fraction, seed) teacher of the work dir unless ``teacher`` names another folder. With
        ``reuse``, a finished run in the row's folder with the very same flags is not trained again (its accuracy is
        read back); only for rows whose inputs those flags pin down (not a generated set that may have grown).
        ``flags``: more examples/run.py flags (the method's own).
        """
        a = self.args
        teacher = teacher or self.ensure_teacher(fraction, seed)
        output_dir = self.work / f"{method}-f{fraction}-s{seed}"
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
        argv += [*self.student_flags, *flags]
        done = output_dir / "DONE"
        finished = json.loads(done.read_text()) if reuse and done.is_file() else {}
        if finished.get("argv") in (argv, self.portable(argv)):  # an older DONE holds the machine's paths
            return finished["eval_accuracy"]
        shutil.rmtree(output_dir, ignore_errors=True)
        accuracy = self.run.main(argv)["eval_accuracy"]
        done.write_text(json.dumps({"argv": self.portable(argv), "eval_accuracy": accuracy}))
        return accuracy

    def portable(self, argv: list[str]) -> list[str]:
        """``argv`` with the work dir and the dataset dir written as ``<work_dir>`` and ``<dataset_dir>``: a finished
        row is recognised from another checkout (a worktree whose ``outputs`` links here) or after the folder moved."""
        places = {str(self.work): "<work_dir>", str(self.args.dataset_dir): "<dataset_dir>"}
        for place, name in places.items():
            argv = [arg.replace(place, name) for arg in argv]
        return argv

    def generated_dir(self, fraction: float, seed: int, bpid: bool, flags: dict[str, Any] | None = None) -> Path:
        """Where :meth:`generated_set` writes the (fraction, seed) set; its generator settings are in the name, so a
        set made with other settings is kept, never resumed with these ones."""
        a = self.args
        priors = f"tv{a.gen_tv:g}-rbn{a.gen_r_bn:g}-j{a.gen_jitter}-it{a.gen_iterations}-b{a.gen_batch_size}"
        extra = "".join(f"-{key}{value}" for key, value in (flags or {}).items())
        return self.work / f"generated-{'bpid' if bpid else 'di'}-f{fraction}-s{seed}-{priors}{extra}"

    def generated_set(
        self,
        fraction: float,
        seed: int,
        bpid: bool,
        flags: dict[str, Any] | None = None,
        num_images: int | None = None,
        output_dir: Path | None = None,
    ) -> str:
        """examples/generate.py from the (fraction, seed) teacher; resumes, extends or reuses a set. ``flags``: more
        generate.py flags (name: value), e.g. ``{"method": "fast"}``; ``num_images``: default ``num_generated``;
        ``output_dir``: default :meth:`generated_dir` (a set extended in rounds with other flags names its own)."""
        a = self.args
        output_dir = output_dir or self.generated_dir(fraction, seed, bpid, flags)
        argv = [
            f"--teacher_model_name_or_path={self.ensure_teacher(fraction, seed)}",
            f"--num_images={num_images or a.num_generated}",
            f"--output_dir={output_dir}",
            f"--batch_size={a.gen_batch_size}",
            "--resolution=28",
            f"--bpid_weight={1.0 if bpid else 0.0}",
            f"--tv={a.gen_tv}",
            f"--r_bn={a.gen_r_bn}",
            f"--jitter={a.gen_jitter}",
            f"--flip={a.gen_jitter > 0}",
            f"--seed={seed}",
        ]
        flags = flags or {}
        if flags.get("method", "deepinversion") == "deepinversion":
            argv.append(f"--iterations={a.gen_iterations}")
        self.generate.main(argv + [f"--{key}={value}" for key, value in flags.items()])
        return str(output_dir)

    def row(self, name: str, fraction: float, seed: int) -> tuple[float, dict[str, Any]]:
        """Train and evaluate one row as ``methods.METHODS`` describes it: its accuracy and extra fields."""
        method = BY_NAME[name]
        if method.kind == "teacher":
            return self.train_teacher_row(fraction, seed), {}
        epochs = row_epochs(self.args, name, fraction)
        train = functools.partial(
            self.student_row,
            name,
            fraction,
            seed,
            beta=method.beta,
            stop_epoch=method.stop_epoch(epochs),
            mhca=method.mhca,
            epochs=epochs,
            flags=method.flags,
        )
        if method.kind == "student":
            return train(), {}
        start = time.perf_counter()
        dataset = self.generated_set(fraction, seed, method.bpid)
        generation_s = time.perf_counter() - start
        return train(dataset=dataset), {"generation_s": generation_s, "num_generated": self.args.num_generated}


def epochs_for(args: argparse.Namespace, fraction: float) -> float:
    """Epochs on ``fraction`` of the real training set (the same for every method at that fraction)."""
    if args.epochs is not None:
        return args.epochs[0] if len(args.epochs) == 1 else args.epochs[args.fractions.index(fraction)]
    return min(args.max_epochs, args.full_set_epochs / fraction)


def row_epochs(args: argparse.Namespace, method: str, fraction: float) -> float:
    """A row's epochs: the fraction's schedule, or ``--datafree_epochs`` for the data-free rows."""
    return args.datafree_epochs if BY_NAME[method].kind == "datafree" else epochs_for(args, fraction)
