#!/usr/bin/env python
"""Data-free DearKD against the full-data DearKD student: accuracy and synthesis speed of each synthesis method.

For each seed, with ``benchmarks.data_efficiency``'s runner (its teacher, student, schedule and flags): the teacher of
the full training set, its full-data DearKD student (the ``dearkd`` row), and for each method a generated set from
that teacher (examples/generate.py: ``num_generated`` images for DeepInversion, ``--fast_num_generated`` for the
cheap fast method) and a DearKD student trained on that set alone (``--datafree_steps`` steps, soft KD,
mixup/CutMix, the teacher's probabilities as the label term's targets, distillation to the end), evaluated on the
real test set. The methods (METHOD.md section 5):

    deepinversion        DeepInversion (--method deepinversion, bpid_weight=0), ``gen_iterations`` steps per batch
    deepinversion_bpid   the same with BPID (bpid_weight=1)
    fast                 the amortised generator (--method fast, bpid_weight=0), ``--fast_steps`` per batch after
                         ``--fast_warmup`` meta-learning tasks
    fast_bpid            the same with BPID
    fast_rounds          fast in student-aware rounds: ``--rounds`` generate.py runs extend one set by equal parts,
                         each after the first with ``--student_model_name_or_path`` the previous round's student
                         (a data-free student trained ``--round_student_steps`` steps on the set so far) and
                         ``--adi_scale`` ``--round_adi_scale``; the row's student is trained on the whole set

Each row's synthesis is one whole generate.py run from an empty folder (an earlier set of that row is deleted), so
``synthesis_s`` (its wall time, the meta-learning warm-up included) and ``images_per_s = num_images / synthesis_s``
are those of an uninterrupted run (``fast_rounds``: its generate.py runs together, and its round students' training
is ``round_training_s``); ``training_s`` is the row's student's training, its evaluation included. Rows are
appended to ``<results_dir>/<prefix>.json`` as they finish (``{"config", "rows": [{"method", "seed", "num_images",
"synthesis_s", "images_per_s", "training_s", "accuracy", "full_data_accuracy", ...}]}``) and skipped on a re-run;
``<prefix>.md`` (table and the issue's targets) and ``<prefix>.png`` follow. ``<prefix>`` is ``datafree``,
``datafree_quick`` with --quick.

    python -m benchmarks.datafree --seeds 0 1 2 --workers 3  # other flags go to benchmarks.data_efficiency
    python -m benchmarks.datafree --quick              # embedded subset, tiny models: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from torchvision.transforms.functional import pil_to_tensor

from benchmarks.data_efficiency import BY_NAME, Results, Runner, ensure_dataset, row_epochs, run_config
from benchmarks.data_efficiency import parse_args as benchmark_args
from benchmarks.harness import ROOT, mean_std, run_workers
from dearkd_hf.inversion.losses import bpid_intra
from dearkd_hf.models.teachers import load_teacher

METHODS = {
    "deepinversion": ("deepinversion", False),
    "deepinversion_bpid": ("deepinversion", True),
    "fast": ("fast", False),
    "fast_bpid": ("fast", True),
    "fast_rounds": ("fast", False),
}
FRACTION = 1.0  # the full training set's teacher, and the full-data student
# The fast method's generate.py flags, full and --quick, as gen_tv etc. are DeepInversion's: chosen for the 28 px
# teacher (a narrow generator: at width 8 a step costs about 0.6 teacher passes more; see benchmarks/README.md).
FAST_SIZES = {
    "full": dict(fast_steps=2, fast_warmup=200, fast_width=8),
    "quick": dict(fast_steps=2, fast_warmup=2, fast_width=8),
}
# The data-free students' own settings (full, --quick): images of the fast rows (synthesis is cheap there, so they
# get more), optimizer steps of every data-free student (the same for all methods, whatever their number of images),
# mixup/CutMix between generated images, and the teacher's probabilities as the label term's targets on every view
# (run.py --teacher_labels). They distil to the end (--datafree_stop_fraction 1): a stage 2 would train on the
# generation targets alone. benchmarks/README.md has the measurements behind each.
STUDENT_SIZES = {
    "full": dict(fast_num_generated=25600, datafree_steps=2000, datafree_mixup=0.8, datafree_cutmix=1.0),
    "quick": dict(fast_num_generated=32, datafree_steps=2, datafree_mixup=0.8, datafree_cutmix=1.0),
}
# The fast_rounds row's rounds (full, --quick): generate.py runs that share its images, the competition term's weight
# from the second round on, and the optimizer steps of each round's student (the last round's student is the row's).
ROUNDS_SIZES = {
    "full": dict(rounds=3, round_adi_scale=10.0, round_student_steps=625),
    "quick": dict(rounds=2, round_adi_scale=10.0, round_student_steps=2),
}
STATISTICS = ("teacher_agreement", "teacher_confidence", "same_class_cosine")  # of set_statistics
TARGETS = dict(share=0.90, std_points=2.0, bpid_points=1.0, speedup=20.0)
# The later, higher bar, for every row (whatever its method or schedule): its share of the full-data student and its
# seed std; and fast_rounds' total time against the fast row's.
TARGETS_95 = dict(share=0.95, std_points=1.5, time_ratio=2.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.datafree",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is benchmarks.data_efficiency's (e.g. --quick, --num_generated, --gen_iterations, "
        "--work_dir, --results_dir, --max_eval_samples, --timm_teacher).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="Rows to run, in this order."
    )
    for name in FAST_SIZES["full"]:
        parser.add_argument(
            f"--{name}", type=int, default=None, help=f"generate.py --{name} (default {FAST_SIZES['full'][name]})."
        )
    full = STUDENT_SIZES["full"]
    parser.add_argument(
        "--fast_num_generated",
        type=int,
        default=None,
        help=f"Images generated for the fast rows (default {full['fast_num_generated']}; the DeepInversion rows "
        "make --num_generated).",
    )
    parser.add_argument(
        "--datafree_steps",
        type=int,
        default=None,
        help=f"Optimizer steps of every data-free student (default {full['datafree_steps']}): its epochs are "
        "steps * batch_size / images, so methods that afford more images are not also given more training.",
    )
    parser.add_argument(
        "--datafree_mixup",
        type=float,
        default=None,
        help=f"Mixup alpha of the data-free students ({full['datafree_mixup']}).",
    )
    parser.add_argument(
        "--datafree_cutmix",
        type=float,
        default=None,
        help=f"CutMix alpha of the data-free students ({full['datafree_cutmix']}).",
    )
    parser.add_argument(
        "--datafree_teacher_labels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run.py --teacher_labels for the data-free students: the label term learns the teacher's probabilities "
        "on each view rather than the generation targets (default on).",
    )
    parser.add_argument(
        "--datafree_stop_fraction",
        type=float,
        default=1.0,
        help="Where the data-free students stop distilling, as a fraction of their run (default 1: they distil to "
        "the end; a stage 2 would train on the generation targets alone).",
    )
    rounds = ROUNDS_SIZES["full"]
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"fast_rounds: generate.py runs, each adding an equal share of --fast_num_generated (default "
        f"{rounds['rounds']}).",
    )
    parser.add_argument(
        "--round_adi_scale",
        type=float,
        default=None,
        help=f"fast_rounds: generate.py --adi_scale from the second round on (default {rounds['round_adi_scale']:g}).",
    )
    parser.add_argument(
        "--round_student_steps",
        type=int,
        default=None,
        help=f"fast_rounds: optimizer steps of each round's student but the last (default "
        f"{rounds['round_student_steps']}).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Discard results made with another config.")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="Processes that split the seeds (one core each).",
    )
    args, rest = parser.parse_known_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: must be >= 1.")
    if args.rounds is not None and args.rounds < 2:
        parser.error(f"--rounds={args.rounds}: must be >= 2 (one round is the fast row).")
    quick = "--quick" in rest
    work = ROOT / "outputs" / "benchmarks" / ("datafree_quick" if quick else "datafree")
    defaults = [f"--work_dir={work}"] if not any(arg.startswith("--work_dir") for arg in rest) else []
    args.bench = benchmark_args([*defaults, *rest, "--workers=1"])
    args.prefix = "datafree_quick" if quick else "datafree"
    args.work_dir = args.bench.work_dir  # the workers' logs and results files go there
    size = "quick" if quick else "full"
    for name, value in {**FAST_SIZES[size], **STUDENT_SIZES[size], **ROUNDS_SIZES[size]}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def fast_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"method": "fast", **{name: getattr(args, name) for name in FAST_SIZES["full"]}}


def config(args: argparse.Namespace) -> dict[str, Any]:
    """What changes a row's number: the data-efficiency configuration, the fast method's flags and the data-free
    students' settings."""
    names = [*STUDENT_SIZES["full"], "datafree_teacher_labels", "datafree_stop_fraction"]
    # The rounds' settings change only the fast_rounds row: a results file without it does not depend on them.
    names += list(ROUNDS_SIZES["full"]) if "fast_rounds" in args.methods else []
    students = {name: getattr(args, name) for name in names}
    return {**run_config(args.bench), "fast_flags": fast_flags(args), **students}


def num_images(args: argparse.Namespace, method: str) -> int:
    return args.fast_num_generated if METHODS[method][0] == "fast" else args.bench.num_generated


def synthesise(runner: Runner, args: argparse.Namespace, method: str, seed: int) -> tuple[str, float, dict[str, Any]]:
    """One whole generate.py run from an empty folder (``fast_rounds``: its rounds, :func:`synthesise_rounds`): the
    set's path, its wall time and the row's extra fields."""
    kind, bpid = METHODS[method]
    flags = fast_flags(args) if kind == "fast" else None
    runner.ensure_teacher(FRACTION, seed)  # trained outside the timing
    if method == "fast_rounds":
        return synthesise_rounds(runner, args, seed)
    shutil.rmtree(runner.generated_dir(FRACTION, seed, bpid, flags), ignore_errors=True)
    start = time.perf_counter()
    dataset = runner.generated_set(FRACTION, seed, bpid, flags, num_images=num_images(args, method))
    return dataset, time.perf_counter() - start, {}


def synthesise_rounds(runner: Runner, args: argparse.Namespace, seed: int) -> tuple[str, float, dict[str, Any]]:
    """The fast_rounds set, from an empty folder: ``--rounds`` generate.py runs, each extending the set by an equal
    share of ``--fast_num_generated``; after each but the last a data-free student is trained on the set so far
    (``--round_student_steps`` steps) and the next run rewards images on which it disagrees with the teacher
    (``--student_model_name_or_path``, ``--adi_scale`` ``--round_adi_scale``). Returns the set, the generate.py runs'
    wall time, and the round students' training time and real test accuracies."""
    flags = fast_flags(args)
    rounds = {"rounds": args.rounds, "adi": args.round_adi_scale, "steps": args.round_student_steps}
    folder = runner.generated_dir(FRACTION, seed, False, {**flags, **rounds})
    shutil.rmtree(folder, ignore_errors=True)
    total = args.fast_num_generated
    synthesis_s = training_s = 0.0
    student, accuracies = {}, []
    for index in range(args.rounds):
        images = round(total * (index + 1) / args.rounds)
        start = time.perf_counter()
        dataset = runner.generated_set(FRACTION, seed, False, {**flags, **student}, images, output_dir=folder)
        synthesis_s += time.perf_counter() - start
        if index == args.rounds - 1:
            break
        start = time.perf_counter()
        row = f"student-fast_rounds-round{index}"
        epochs = args.round_student_steps * args.bench.batch_size / images
        accuracies.append(train_datafree(runner, args, "fast_rounds", seed, dataset, row=row, epochs=epochs))
        training_s += time.perf_counter() - start
        own = runner.work / f"{row}-f{FRACTION}-s{seed}"
        student = {"student_model_name_or_path": own, "adi_scale": args.round_adi_scale}
    return dataset, synthesis_s, {"round_training_s": training_s, "round_student_accuracy": accuracies}


def set_statistics(
    teacher: str, dataset: str, batch_size: int, split: str | None = None, limit: int = 1024
) -> dict[str, float]:
    """How the teacher sees the first ``limit`` images of a saved set (``split`` of a saved dataset dict), in
    batches of ``batch_size`` (a generated set's own batches): ``teacher_agreement`` (share it classifies as their
    label), ``teacher_confidence`` (mean top probability) and ``same_class_cosine`` (BPID's intra term,
    ``bpid_intra``, averaged over the batches): the diversity BPID acts on, comparable across methods and with real
    images."""
    model = load_teacher(teacher)
    model.module.eval()
    images = datasets.load_from_disk(dataset)
    images = images[split] if split else images
    images = images.select(range(min(limit, len(images))))
    mode = "L" if model.num_channels == 1 else "RGB"
    pixels = torch.stack([pil_to_tensor(image.convert(mode)).float() / 255 for image in images["image"]])
    labels = torch.tensor(images["label"])
    mean = torch.tensor(model.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.std).view(1, -1, 1, 1)
    agree, confidence, cosine = [], [], []
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x, y = pixels[start : start + batch_size], labels[start : start + batch_size]
            output = model.forward_with_features((x - mean) / std)
            probabilities = output.logits.softmax(-1)
            agree.append((probabilities.argmax(-1) == y).float().mean().item())
            confidence.append(probabilities.amax(-1).mean().item())
            cosine.append(bpid_intra(output.pre_logits, y).item())
    return {
        "teacher_agreement": statistics.mean(agree),
        "teacher_confidence": statistics.mean(confidence),
        "same_class_cosine": statistics.mean(cosine),
    }


def train_full_data(runner: Runner, args: argparse.Namespace, seed: int) -> float:
    """The data-efficiency ``dearkd`` row on the real training set; it depends on its flags alone, so a finished
    one (whatever the data-free rows' settings) is reused."""
    epochs = row_epochs(args.bench, "dearkd", FRACTION)
    dearkd = BY_NAME["dearkd"]
    runner.student_flags = []
    return runner.student_row(
        "dearkd",
        FRACTION,
        seed,
        beta=dearkd.beta,
        stop_epoch=dearkd.stop_epoch(epochs),
        mhca=dearkd.mhca,
        epochs=epochs,
        reuse=True,
    )


def datafree_epochs(args: argparse.Namespace, method: str) -> float:
    """Epochs that make ``datafree_steps`` optimizer steps on the method's generated set."""
    return args.datafree_steps * args.bench.batch_size / num_images(args, method)


def train_datafree(
    runner: Runner,
    args: argparse.Namespace,
    method: str,
    seed: int,
    dataset: str,
    row: str | None = None,
    epochs: float | None = None,
) -> float:
    """A DearKD student (the ``dearkd`` row's alignment and MHCA) on a generated set alone, with the data-free
    students' settings (its epochs: default ``datafree_steps`` on the method's number of images); evaluated on the
    real test set. ``row`` names its folder (default ``student-<method>``)."""
    epochs = epochs or datafree_epochs(args, method)
    runner.student_flags = [
        f"--mixup={args.datafree_mixup}",
        f"--cutmix={args.datafree_cutmix}",
        f"--teacher_labels={args.datafree_teacher_labels}",
    ]
    dearkd = BY_NAME["dearkd"]
    return runner.student_row(
        row or f"student-{method}",
        FRACTION,
        seed,
        beta=dearkd.beta,
        stop_epoch=args.datafree_stop_fraction * epochs,
        mhca=dearkd.mhca,
        epochs=epochs,
        dataset=dataset,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bench = args.bench
    torch.set_num_threads(bench.threads)
    if not bench.quick:
        ensure_dataset(bench.dataset_dir)
    results_dir = Path(bench.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", config(args), args.overwrite)
    if args.workers > 1 and len(args.seeds) > 1:
        run_workers(args, sys.argv[1:] if argv is None else list(argv), results, "benchmarks.datafree")
    else:
        run_rows(args, results)
    write_reports(results.rows, results.config, results_dir, args.prefix)
    copy_samples(results.rows, Path(bench.work_dir), results_dir / f"{args.prefix}_samples")
    return {"config": results.config, "rows": results.rows}


def copy_samples(rows: list[dict[str, Any]], work_dir: Path, folder: Path) -> None:
    """Each row's samples.png (generate.py's grid, one row per class) as ``<folder>/<method>-s<seed>.png``, for the
    rows whose set is still in the work dir."""
    for row in rows:
        grid = work_dir / row["dataset"] / "samples.png"
        if grid.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, folder / f"{row['method']}-s{row['seed']}.png")


def run_rows(args: argparse.Namespace, results: Results) -> None:
    """This process's rows: for each seed its full-data student, then each method's synthesis and student."""
    bench = args.bench
    results_dir = Path(bench.results_dir)
    runner = Runner(bench)
    for seed in args.seeds:
        full = [row["full_data_accuracy"] for row in results.rows if row["seed"] == seed]
        real = None  # the teacher on real test images: one reference per seed, shared by its rows
        for method in dict.fromkeys(args.methods):  # in the order given: the cheap fast rows can go first
            if results.has(method, FRACTION, seed):
                continue
            if not full:
                print(f"full-data DearKD student, seed {seed}", flush=True)
                full = [train_full_data(runner, args, seed)]
            print(f"{method} seed={seed}", flush=True)
            dataset, synthesis_s, extra = synthesise(runner, args, method, seed)
            teacher = runner.ensure_teacher(FRACTION, seed)
            start = time.perf_counter()
            accuracy = train_datafree(runner, args, method, seed, dataset)
            training_s = time.perf_counter() - start
            if real is None:
                test = set_statistics(teacher, bench.dataset_dir, bench.gen_batch_size, split="test")
                real = {f"real_{name}": value for name, value in test.items()}
            images = num_images(args, method)
            results.add(
                {
                    "method": method,
                    "seed": seed,
                    "train_fraction": FRACTION,  # of the teacher and the full-data student (the results key)
                    "num_images": images,
                    "epochs": datafree_epochs(args, method),
                    "synthesis_s": synthesis_s,
                    "images_per_s": images / synthesis_s,
                    "training_s": training_s,
                    **extra,
                    "accuracy": accuracy,
                    "full_data_accuracy": full[0],
                    "share_of_full_data": accuracy / full[0],
                    "dataset": Path(dataset).name,
                    **set_statistics(teacher, dataset, bench.gen_batch_size),
                    **real,  # the same on real test images (shuffled classes), for reference
                }
            )
            write_reports(results.rows, results.config, results_dir, args.prefix)
            print(f"    accuracy {accuracy:.4f} ({synthesis_s:.0f} s synthesis)", flush=True)


# ---- report ----


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: mean and std (points) of accuracy, mean full-data accuracy, share of it, images/s; n seeds."""
    out = {}
    for method in METHODS:
        own = [row for row in rows if row["method"] == method]
        if not own:
            continue
        accuracy = mean_std(100 * row["accuracy"] for row in own)
        full = statistics.mean(100 * row["full_data_accuracy"] for row in own)
        out[method] = {
            "n": accuracy["n"],
            "accuracy": accuracy["mean"],
            "std": accuracy["std"],
            "full_data_accuracy": full,
            "share": accuracy["mean"] / full,
            "images_per_s": statistics.mean(row["images_per_s"] for row in own),
            "synthesis_s": statistics.mean(row["synthesis_s"] for row in own),
            **(
                {
                    "training_s": statistics.mean(row["training_s"] for row in own),
                    "total_s": statistics.mean(total_seconds(row) for row in own),
                }
                if all("training_s" in row for row in own)  # rows from before it was recorded lack it
                else {}
            ),
            "num_images": statistics.mean(row["num_images"] for row in own),
            **{
                name: statistics.mean(row[name] for row in own)
                for name in STATISTICS
                if all(name in row for row in own)  # rows from before these were recorded lack them
            },
        }
    return out


def total_seconds(row: dict[str, Any]) -> float:
    """A row's wall time from no images to its trained student: synthesis, any round students, the student."""
    return row["synthesis_s"] + row.get("round_training_s", 0.0) + row["training_s"]


def paired_gain(rows: list[dict[str, Any]], method: str, baseline: str) -> tuple[float, int]:
    """Mean accuracy gain (points) of ``method`` over ``baseline`` on the seeds both have, and their number."""
    by = {(row["method"], row["seed"]): row["accuracy"] for row in rows}
    seeds = sorted({seed for m, seed in by if m == method} & {seed for m, seed in by if m == baseline})
    if not seeds:
        return float("nan"), 0
    return statistics.mean(100 * (by[method, s] - by[baseline, s]) for s in seeds), len(seeds)


def share_checks(method: str, s: dict[str, Any], bar: dict[str, float]) -> list[dict[str, Any]]:
    """``method``'s share of the full-data student against ``bar["share"]`` and, over several seeds, its std
    against ``bar["std_points"]``. The share to a tenth of a point: 94.5% must not read as 95%."""
    share, limit = bar["share"], bar["std_points"]
    value = f"{s['share']:.1%}"
    checks = [dict(target=f"{method} >= {share:.0%} of full-data DearKD", value=value, met=s["share"] >= share)]
    if s["n"] > 1:
        std = dict(target=f"{method} seed std <= {limit:g} points", value=f"{s['std']:.2f}", met=s["std"] <= limit)
        checks.append(std)
    return checks


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, on the rows there are (a target lacking its rows is left out)."""
    stats, checks = summary(rows), []
    for method, s in stats.items():  # both bars, so a row between them reads as meeting one and missing the other
        checks += share_checks(method, s, TARGETS) + share_checks(method, s, TARGETS_95)
    for kind in ("deepinversion", "fast"):
        gain, n = paired_gain(rows, f"{kind}_bpid", kind)
        if n:
            need = TARGETS["bpid_points"]
            checks.append(
                dict(
                    target=f"{kind}_bpid >= {kind} + {need:g} (paired, n={n})", value=f"{gain:+.2f}", met=gain >= need
                )
            )
    if "fast_rounds" in stats:
        s = stats["fast_rounds"]
        if "total_s" in s and "total_s" in stats.get("fast", {}):
            ratio, need = s["total_s"] / stats["fast"]["total_s"], TARGETS_95["time_ratio"]
            checks.append(
                dict(
                    target=f"fast_rounds synthesis + training time <= {need:g}x fast's",
                    value=f"{ratio:.2f}x",
                    met=ratio <= need,
                )
            )
    for fast, slow in (("fast", "deepinversion"), ("fast_bpid", "deepinversion_bpid")):
        if fast in stats and slow in stats:
            speedup = stats[fast]["images_per_s"] / stats[slow]["images_per_s"]
            gain, _ = paired_gain(rows, fast, slow)
            need = TARGETS["speedup"]
            checks.append(
                dict(
                    target=f"{fast} images/s >= {need:g}x {slow}'s at equal or better accuracy",
                    value=f"{speedup:.1f}x, {gain:+.2f} points",
                    met=speedup >= need and gain >= 0,
                )
            )
    return checks


def spread(stats: dict[str, float]) -> str:
    return "-" if stats["n"] == 1 else f"{stats['std']:.2f}"  # one seed has no spread


def write_reports(rows: list[dict[str, Any]], config: dict[str, Any], results_dir: Path, prefix: str) -> None:
    stats = summary(rows)
    lines = [
        "# Data-free DearKD: accuracy and synthesis speed (Fashion-MNIST test accuracy, %)",
        "",
        "Generated by `python -m benchmarks.datafree`; the JSON next to this file holds every row. Std is over "
        "seeds; images/s is of a whole generate.py run (warm-up included; fast_rounds: its runs together); training s "
        "is the student's; total s adds both, and fast_rounds' round students.",
        "",
        "| method | images | accuracy (mean ± std, n) | full-data DearKD | share | images/s | synthesis s | "
        "training s | total s | teacher agrees | teacher confidence | same-class cosine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in stats.items():
        lines.append(
            f"| {method} | {s['num_images']:.0f} | {s['accuracy']:.2f} ± {spread(s)} (n={s['n']}) | "
            f"{s['full_data_accuracy']:.2f} | {s['share']:.1%} | {s['images_per_s']:.1f} | {s['synthesis_s']:.0f} | "
            + " | ".join(f"{s[name]:.0f}" if name in s else "-" for name in ("training_s", "total_s"))
            + " | "
            + " | ".join(f"{s[name]:.3f}" if name in s else "-" for name in STATISTICS)
            + " |"
        )
    real = [row for row in rows if all(f"real_{name}" in row for name in STATISTICS)]
    if real:
        lines.append(
            "| (real test images) | | | | | | | | | "
            + " | ".join(f"{statistics.mean(row[f'real_{name}'] for row in real):.3f}" for name in STATISTICS)
            + " |"
        )
    lines += [
        "",
        "The last three columns are how the teacher sees the first 1,024 images of each set, in batches of the "
        "generation batch size: the share it classifies as their label, its mean top probability, and BPID's intra "
        "term (the mean cosine of batch-centred pre-logit features over same-class pairs: lower is more diverse).",
    ]
    lines += [
        "",
        "Every row (seconds of wall time; round students: fast_rounds' students between its rounds):",
        "",
        "| method | seed | accuracy | share of full data | synthesis s | round students s | training s | total s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        timed = "training_s" in row
        lines.append(
            f"| {row['method']} | {row['seed']} | {100 * row['accuracy']:.2f} | {row['share_of_full_data']:.1%} | "
            f"{row['synthesis_s']:.0f} | {row.get('round_training_s', 0.0):.0f} | "
            + (f"{row['training_s']:.0f} | {total_seconds(row):.0f} |" if timed else "- | - |")
        )
    lines += ["", "Targets:", ""]
    lines += [f"- {c['target']}: {c['value']} ({'met' if c['met'] else 'missed'})" for c in targets(rows)]
    lines += ["", "Configuration:", "", "```json", json.dumps(config, indent=2), "```"]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{prefix}.md").write_text("\n".join(lines) + "\n")
    write_plot(rows, results_dir / f"{prefix}.png")


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against images/s (log scale), one marker per row, with 90% of the full-data accuracy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        own = [row for row in rows if row["method"] == method]
        if own:
            ax.scatter([r["images_per_s"] for r in own], [100 * r["accuracy"] for r in own], label=method)
    if rows:
        full = statistics.mean(100 * row["full_data_accuracy"] for row in rows)
        ax.axhline(TARGETS["share"] * full, color="gray", linestyle="--", label=f"{TARGETS['share']:.0%} of full data")
    ax.set_xscale("log")
    ax.set_xlabel("images/s of synthesis")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
