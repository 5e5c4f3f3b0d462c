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

Each row's synthesis is one whole generate.py run from an empty folder (an earlier set of that row is deleted), so
``synthesis_s`` (its wall time, the meta-learning warm-up included) and ``images_per_s = num_images / synthesis_s``
are those of an uninterrupted run. Rows are appended to ``<results_dir>/<prefix>.json`` as they finish
(``{"config", "rows": [{"method", "seed", "num_images", "synthesis_s", "images_per_s", "accuracy",
"full_data_accuracy", ...}]}``) and skipped on a re-run; ``<prefix>.md`` (table and the issue's targets) and
``<prefix>.png`` follow. ``<prefix>`` is ``datafree``, ``datafree_quick`` with --quick.

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
STATISTICS = ("teacher_agreement", "teacher_confidence", "same_class_cosine")  # of set_statistics
TARGETS = dict(share=0.90, std_points=2.0, bpid_points=1.0, speedup=20.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.datafree",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is benchmarks.data_efficiency's (e.g. --quick, --num_generated, --gen_iterations, "
        "--work_dir, --results_dir, --max_eval_samples).",
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
    quick = "--quick" in rest
    work = ROOT / "outputs" / "benchmarks" / ("datafree_quick" if quick else "datafree")
    defaults = [f"--work_dir={work}"] if not any(arg.startswith("--work_dir") for arg in rest) else []
    args.bench = benchmark_args([*defaults, *rest, "--workers=1"])
    args.prefix = "datafree_quick" if quick else "datafree"
    args.work_dir = args.bench.work_dir  # the workers' logs and results files go there
    size = "quick" if quick else "full"
    for name, value in {**FAST_SIZES[size], **STUDENT_SIZES[size]}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def fast_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"method": "fast", **{name: getattr(args, name) for name in FAST_SIZES["full"]}}


def config(args: argparse.Namespace) -> dict[str, Any]:
    """What changes a row's number: the data-efficiency configuration, the fast method's flags and the data-free
    students' settings."""
    names = [*STUDENT_SIZES["full"], "datafree_teacher_labels", "datafree_stop_fraction"]
    students = {name: getattr(args, name) for name in names}
    return {**run_config(args.bench), "fast_flags": fast_flags(args), **students}


def num_images(args: argparse.Namespace, method: str) -> int:
    return args.fast_num_generated if METHODS[method][0] == "fast" else args.bench.num_generated


def synthesise(runner: Runner, args: argparse.Namespace, method: str, seed: int) -> tuple[str, float]:
    """One whole generate.py run from an empty folder: the set's path and its wall time."""
    kind, bpid = METHODS[method]
    flags = fast_flags(args) if kind == "fast" else None
    runner.ensure_teacher(FRACTION, seed)  # trained outside the timing
    shutil.rmtree(runner.generated_dir(FRACTION, seed, bpid, flags), ignore_errors=True)
    start = time.perf_counter()
    dataset = runner.generated_set(FRACTION, seed, bpid, flags, num_images=num_images(args, method))
    return dataset, time.perf_counter() - start


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
    runner: Runner, args: argparse.Namespace, method: str, seed: int, dataset: str, row: str | None = None
) -> float:
    """A DearKD student (the ``dearkd`` row's alignment and MHCA) on a generated set alone, with the data-free
    students' settings (its epochs: ``datafree_steps`` on the method's number of images); evaluated on the real
    test set. ``row`` names its folder (default ``student-<method>``)."""
    epochs = datafree_epochs(args, method)
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
            dataset, synthesis_s = synthesise(runner, args, method, seed)
            teacher = runner.ensure_teacher(FRACTION, seed)
            accuracy = train_datafree(runner, args, method, seed, dataset)
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
            "num_images": statistics.mean(row["num_images"] for row in own),
            **{
                name: statistics.mean(row[name] for row in own)
                for name in STATISTICS
                if all(name in row for row in own)  # rows from before these were recorded lack them
            },
        }
    return out


def paired_gain(rows: list[dict[str, Any]], method: str, baseline: str) -> tuple[float, int]:
    """Mean accuracy gain (points) of ``method`` over ``baseline`` on the seeds both have, and their number."""
    by = {(row["method"], row["seed"]): row["accuracy"] for row in rows}
    seeds = sorted({seed for m, seed in by if m == method} & {seed for m, seed in by if m == baseline})
    if not seeds:
        return float("nan"), 0
    return statistics.mean(100 * (by[method, s] - by[baseline, s]) for s in seeds), len(seeds)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, on the rows there are (a target lacking its rows is left out)."""
    stats, checks = summary(rows), []
    for method, s in stats.items():
        share = TARGETS["share"]
        checks.append(
            dict(
                target=f"{method} >= {share:.0%} of full-data DearKD",
                value=f"{s['share']:.0%}",
                met=s["share"] >= share,
            )
        )
        if s["n"] > 1:
            limit = TARGETS["std_points"]
            checks.append(
                dict(target=f"{method} seed std <= {limit:g} points", value=f"{s['std']:.2f}", met=s["std"] <= limit)
            )
    for kind in ("deepinversion", "fast"):
        gain, n = paired_gain(rows, f"{kind}_bpid", kind)
        if n:
            need = TARGETS["bpid_points"]
            checks.append(
                dict(
                    target=f"{kind}_bpid >= {kind} + {need:g} (paired, n={n})", value=f"{gain:+.2f}", met=gain >= need
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
        "seeds; images/s is of a whole generate.py run (warm-up included).",
        "",
        "| method | images | accuracy (mean ± std, n) | full-data DearKD | share | images/s | synthesis s | "
        "teacher agrees | teacher confidence | same-class cosine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in stats.items():
        lines.append(
            f"| {method} | {s['num_images']:.0f} | {s['accuracy']:.2f} ± {spread(s)} (n={s['n']}) | "
            f"{s['full_data_accuracy']:.2f} | {s['share']:.0%} | {s['images_per_s']:.1f} | {s['synthesis_s']:.0f} | "
            + " | ".join(f"{s[name]:.3f}" if name in s else "-" for name in STATISTICS)
            + " |"
        )
    real = [row for row in rows if all(f"real_{name}" in row for name in STATISTICS)]
    if real:
        lines.append(
            "| (real test images) | | | | | | | "
            + " | ".join(f"{statistics.mean(row[f'real_{name}'] for row in real):.3f}" for name in STATISTICS)
            + " |"
        )
    lines += [
        "",
        "The last three columns are how the teacher sees the first 1,024 images of each set, in batches of the "
        "generation batch size: the share it classifies as their label, its mean top probability, and BPID's intra "
        "term (the mean cosine of batch-centred pre-logit features over same-class pairs: lower is more diverse).",
    ]
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
