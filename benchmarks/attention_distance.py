#!/usr/bin/env python
"""The paper's mechanism in figures: mean attention distance per layer, and learning curves across the switch.

DearKD's argument (paper, METHOD.md sections 1 and 4): distilling a CNN's early layers gives the transformer's early
layers a CNN's locality (a small mean attention distance), and stopping distillation lets it "play to its strengths"
(accuracy keeps rising in stage 2, attention opens up again). This benchmark trains the data-efficiency benchmark's
rows (``benchmarks.data_efficiency``: Fashion-MNIST at 10%, its teacher and student, its schedule) through the same
runner, with two extra records that change nothing they train: an evaluation on the real test set after every
epoch (curve rows) and a checkpoint after the last stage-1 step (``--save_at_distillation_stop``). Then, per model,
it measures the mean attention distance of every layer with
:func:`dearkd_hf.attention_distance.attention_distances` (the definition ``AttentionDistanceCallback`` logs: per
head, query patch and image, then averaged) on the first ``--num_images`` real test images, model in eval mode.

    scratch                the plain-attention ViT on labels alone
    scratch_mhca           the DearKD ViT (MHCA) on labels alone: MHCA's own locality, without distillation
    deit                   logit KD only (distillation token, plain attention, beta 0, no stop)
    dearkd_stage1          DearKD's student at the end of stage 1 (the checkpoint after its last distillation step)
    dearkd                 DearKD's student at the end of training
    dearkd_no_mhca_stage1  DearKD with plain attention (mhca_layers=[]) at the end of stage 1
    dearkd_no_mhca         the same at the end of training
    dearkd_no_stop         DearKD that distils to the end (for the learning curves)

MHCA starts local by construction (its positional term is initialised to a locality prior), so the distillation
effect is read against the model of the same architecture: dearkd_stage1 against scratch_mhca, and
dearkd_no_mhca_stage1 against scratch and deit. The table's last section states each prediction on the early
layers' mean distance (by default the first half of the blocks, the ones DearKD aligns), paired by seed.

The learning curves (test accuracy and each logged loss component against epoch) are read from each run's own
``trainer_state.json`` (:func:`learning_curve`), for deit, dearkd and dearkd_no_stop, with the switch epoch marked.

    python -m benchmarks.attention_distance --seeds 0 1 2 --workers 3  # about 1 h on 2 shared CPU cores
    python -m benchmarks.attention_distance --quick                     # embedded subset, tiny models (smoke run)

Writes ``<results_dir>/attention_distance.{json,md,png}`` and ``attention_distance_curves.png`` (``*_quick`` with
``--quick``); rows already in the JSON are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

import dearkd_hf  # noqa: F401  (registers the DearKD ViT with the Auto classes)
from benchmarks.data_efficiency import cli as data_efficiency
from benchmarks.data_efficiency.harness import Results, Runner, ensure_dataset, run_config
from benchmarks.harness import RESULTS_DIR, ROOT, format_mean_std, mean_std, run_workers
from dearkd_hf.attention_distance import attention_distances
from dearkd_hf.data.loading import load_named_dataset
from dearkd_hf.data.transforms import build_transforms, processor_normalization

MODULE = "benchmarks.attention_distance"
FRACTION = 0.1
TRAINED = ("scratch", "scratch_mhca", "deit", "dearkd", "dearkd_no_mhca", "dearkd_no_stop")
# (model, trained row, weights): "final" is the row's saved student, "stage1" its checkpoint at the switch.
MODELS = (
    ("scratch", "scratch", "final"),
    ("scratch_mhca", "scratch_mhca", "final"),
    ("deit", "deit", "final"),
    ("dearkd_stage1", "dearkd", "stage1"),
    ("dearkd", "dearkd", "final"),
    ("dearkd_no_mhca_stage1", "dearkd_no_mhca", "stage1"),
    ("dearkd_no_mhca", "dearkd_no_mhca", "final"),
    ("dearkd_no_stop", "dearkd_no_stop", "final"),
)
CURVES = ("deit", "dearkd", "dearkd_no_stop")
# Rows evaluated after every epoch (the curves; DearKD's gives its stage-1 student's accuracy at the switch too):
# on 10k test images an evaluation costs about a third of an epoch here, so the other rows skip it.
EVALUATED = CURVES
# The paper's predictions, as (model, reference, sign of model - reference, claim), on the early layers' mean.
PREDICTIONS = (
    ("dearkd_stage1", "scratch_mhca", -1, "distillation lowers it against the same MHCA ViT trained from scratch"),
    ("dearkd_stage1", "deit", -1, "DearKD's stage 1 lowers it against DeiT"),
    ("dearkd_no_mhca_stage1", "scratch", -1, "alignment alone (plain attention) lowers it against scratch"),
    ("dearkd_no_mhca_stage1", "deit", -1, "alignment alone (plain attention) lowers it against DeiT"),
    ("dearkd", "dearkd_stage1", 1, "it rises again after the switch (DearKD)"),
    ("dearkd_no_mhca", "dearkd_no_mhca_stage1", 1, "it rises again after the switch (DearKD without MHCA)"),
)
EVAL_KEY = "eval_accuracy"
SWITCH_KEY = "distillation_stopped_at_epoch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attention_distance",
        description="Mean attention distance per layer and learning curves across DearKD's switch.",
    )
    parser.add_argument("--quick", action="store_true", help="Embedded subset and tiny models (smoke run).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Seeds (at least two for a spread).")
    parser.add_argument("--num_images", type=int, default=None, help="Real test images measured (1000; quick 32).")
    parser.add_argument("--work_dir", default=None, help="Teachers and students (outputs/benchmarks/...).")
    parser.add_argument("--results_dir", default=str(RESULTS_DIR), help="JSON, table and plots.")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="Processes, one per seeds.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument(
        "--early_layers",
        type=int,
        default=None,
        help="How many first layers the reading averages (default: half the depth, the blocks DearKD aligns).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Discard rows made with another configuration.")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: must be >= 1.")
    if args.num_images is None:
        args.num_images = 32 if args.quick else 1000
    if args.num_images < 1:
        parser.error(f"--num_images={args.num_images}: must be >= 1.")
    args.prefix = "attention_distance_quick" if args.quick else "attention_distance"
    if args.work_dir is None:
        args.work_dir = str(ROOT / "outputs" / "benchmarks" / args.prefix)
    # The data-efficiency benchmark's own setting (sizes, schedule, data), at its 10% fraction.
    setting = ["--fractions", str(FRACTION), f"--work_dir={args.work_dir}", f"--threads={args.threads}"]
    args.setting = data_efficiency.parse_args(setting + (["--quick"] if args.quick else []))
    return args


def benchmark_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **run_config(args.setting),
        "num_images": args.num_images,
        "fraction": FRACTION,
        "early_layers": args.early_layers,
    }


# ---- measurement ----


def real_test_pixels(dataset_dir: str, model_dir: Path, num_images: int) -> torch.Tensor:
    """The first ``num_images`` real test images, transformed as the student's evaluation sees them."""
    test = load_named_dataset(dataset_dir)["test"]
    test = test.select(range(min(num_images, len(test))))
    processor = AutoImageProcessor.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    size, channels = config.image_size, config.num_channels
    transform = build_transforms(
        size, *processor_normalization(processor, channels, fallback=(0.5,)), channels, train=False
    )
    return torch.stack(transform(test[:])["pixel_values"])


def layer_distances(model_dir: Path, pixels: torch.Tensor, batch_size: int = 250) -> list[float]:
    """Mean attention distance (pixels) of each layer over all of ``pixels`` (batches weighted by their size)."""
    model = AutoModelForImageClassification.from_pretrained(model_dir, attn_implementation="eager")
    totals: list[float] = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size]
        values = attention_distances(model, batch)
        totals = [t + v * len(batch) for t, v in zip(totals, values)] if totals else [v * len(batch) for v in values]
    return [total / len(pixels) for total in totals]


def learning_curve(trainer_state: dict[str, Any]) -> dict[str, Any]:
    """Test accuracy and each logged loss component against epoch, from a ``trainer_state.json``'s log history.

    Returns ``{"eval_accuracy": [[epoch, value], ...], "components": {name: [[epoch, value], ...]},
    "switch_epoch": epoch or None}``; components are the training logs' ``loss`` and ``loss_*`` entries.
    """
    accuracy, components, switch = [], {}, None
    for log in trainer_state["log_history"]:
        epoch = log.get("epoch")
        if SWITCH_KEY in log:
            switch = float(log[SWITCH_KEY])
        if epoch is None:
            continue
        if EVAL_KEY in log:
            accuracy.append([float(epoch), float(log[EVAL_KEY])])
        if "loss" in log:  # a training log (the final summary says train_loss)
            for name, value in log.items():
                if name == "loss" or name.startswith("loss_"):
                    components.setdefault(name, []).append([float(epoch), float(value)])
    return {"eval_accuracy": accuracy, "components": components, "switch_epoch": switch}


def stage1_checkpoint(output_dir: Path) -> Path:
    """The checkpoint ``--save_at_distillation_stop`` wrote (the only one these runs make)."""
    found = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not found:
        raise FileNotFoundError(f"{output_dir}: no checkpoint at the switch; was --save_at_distillation_stop given?")
    return found[0]


def measure(args: argparse.Namespace, method: str, output_dir: Path) -> dict[str, Any]:
    pixels = real_test_pixels(args.setting.dataset_dir, output_dir, args.num_images)
    measured: dict[str, Any] = {"distance": layer_distances(output_dir, pixels)}
    if any(trained == method and weights == "stage1" for _, trained, weights in MODELS):
        measured["distance_stage1"] = layer_distances(stage1_checkpoint(output_dir), pixels)
    measured["curve"] = learning_curve(json.loads((output_dir / "trainer_state.json").read_text()))
    return measured


# ---- running ----


class AttentionRunner(Runner):
    """The data-efficiency rows, each checkpointed at the switch, the curve rows also evaluated every epoch."""

    def row(self, name: str, fraction: float, seed: int) -> tuple[float, dict[str, Any]]:
        self.student_flags = ["--save_at_distillation_stop=true"]
        if name in EVALUATED:
            self.student_flags.append("--eval_strategy=epoch")
        return super().row(name, fraction, seed)


def run_rows(args: argparse.Namespace, results: Results) -> None:
    runner = AttentionRunner(args.setting)
    for seed in args.seeds:
        for method in TRAINED:
            if results.has(method, FRACTION, seed):
                continue
            print(f"{method} seed={seed}", flush=True)
            start = time.perf_counter()
            accuracy, _ = runner.row(method, FRACTION, seed)
            output_dir = runner.work / f"{method}-f{FRACTION}-s{seed}"
            row = {"method": method, "train_fraction": FRACTION, "seed": seed, "accuracy": accuracy}
            row.update(measure(args, method, output_dir))
            row["wall_s"] = time.perf_counter() - start
            results.add(row)
            print(f"    accuracy {accuracy:.4f}, distances {[round(d, 2) for d in row['distance']]}", flush=True)


# ---- report ----


def model_rows(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per model of :data:`MODELS`, one ``{"seed", "distance", "accuracy"}`` per seed that has it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model, trained, weights in MODELS:
        key = "distance_stage1" if weights == "stage1" else "distance"
        for row in sorted(rows, key=lambda r: r["seed"]):
            if row["method"] == trained and key in row:
                accuracy = row["accuracy"] if weights == "final" else _accuracy_at_switch(row["curve"])
                out.setdefault(model, []).append({"seed": row["seed"], "distance": row[key], "accuracy": accuracy})
    return out


def _accuracy_at_switch(curve: dict[str, Any]) -> float | None:
    """Test accuracy of the last evaluation at or before the switch (the stage-1 student's, evaluated per epoch)."""
    return None if curve["switch_epoch"] is None else accuracy_at(curve, curve["switch_epoch"])


def accuracy_at(curve: dict[str, Any], epoch: float) -> float | None:
    """Test accuracy of the last evaluation at or before ``epoch``."""
    before = [acc for at, acc in curve["eval_accuracy"] if at <= epoch + 1e-6]
    return before[-1] if before else None


def stage2_gains(rows: list[dict[str, Any]]) -> list[str]:
    """Does accuracy keep rising after the switch? Each curve row's test accuracy at DearKD's switch epoch and at
    the end (mean ± std over seeds), so DearKD's stage 2 reads against the same epochs of DeiT and of no stop."""
    switches = [r["curve"]["switch_epoch"] for r in rows if r["method"] == "dearkd" and r["curve"]["switch_epoch"]]
    if not switches:
        return []
    switch = statistics.mean(switches)
    lines = [
        f"| row | test acc at epoch {switch:g} (%) | at the end (%) | gain (paired, points) |",
        "|---|---|---|---|",
    ]
    for method in CURVES:
        pairs = [
            (accuracy_at(r["curve"], switch), r["curve"]["eval_accuracy"][-1][1])
            for r in rows
            if r["method"] == method and r["curve"]["eval_accuracy"]
        ]
        pairs = [(100 * a, 100 * b) for a, b in pairs if a is not None]
        if pairs:
            cells = [format_mean_std(mean_std(values)) for values in zip(*pairs)]
            cells.append(format_mean_std(mean_std(b - a for a, b in pairs), signed=True))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def per_layer(entries: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per layer, the mean and spread (:func:`benchmarks.harness.mean_std`) of the entries' distances."""
    return [mean_std([e["distance"][k] for e in entries]) for k in range(len(entries[0]["distance"]))]


def early_distance(distance: list[float], early_layers: int | None) -> float:
    """The mean distance of the first ``early_layers`` layers (default: the first half, the aligned blocks)."""
    count = early_layers or max(1, len(distance) // 2)
    return statistics.mean(distance[:count])


def predictions(models: dict[str, list[dict[str, Any]]], early_layers: int | None) -> list[dict[str, Any]]:
    """Each of :data:`PREDICTIONS` where both models exist: the paired (same seed) difference of the early layers'
    mean distance, its spread, and whether its sign is the predicted one."""
    checks = []
    for model, reference, sign, claim in PREDICTIONS:
        x = {e["seed"]: early_distance(e["distance"], early_layers) for e in models.get(model, [])}
        y = {e["seed"]: early_distance(e["distance"], early_layers) for e in models.get(reference, [])}
        seeds = sorted(set(x) & set(y))
        if seeds:
            diffs = [x[s] - y[s] for s in seeds]
            spread = mean_std(diffs)
            checks.append(
                {"model": model, "reference": reference, "claim": claim, **spread}
                | {"holds": spread["mean"] * sign > 0, "every_seed": all(d * sign > 0 for d in diffs)}
            )
    return checks


def reading(models: dict[str, list[dict[str, Any]]], early_layers: int | None) -> list[str]:
    lines = []
    for c in predictions(models, early_layers):
        verdict = "as predicted" if c["holds"] else "NOT as predicted"
        if c["holds"] and not c["every_seed"]:
            verdict += " on the mean, not on every seed"
        lines.append(
            f"- {c['claim']}: {c['model']} - {c['reference']} = {format_mean_std(c, signed=True)} px "
            f"(paired, n={c['n']}): "
            f"{verdict}"
        )
    return lines


def write_table(path: Path, results: Results) -> None:
    models = model_rows(results.rows)
    depth = max((len(e["distance"]) for entries in models.values() for e in entries), default=0)
    lines = [
        "# Mean attention distance per layer (pixels) and test accuracy",
        "",
        "Generated by `python -m benchmarks.attention_distance`; the JSON next to this file holds every row (with the "
        "learning curves). Mean ± std over seeds, on the first "
        f"{results.config['num_images']} real test images, eval mode.",
        "",
        "| model | " + " | ".join(f"layer {k}" for k in range(depth)) + " | test acc (%) | n |",
        "|---|" + "---|" * (depth + 2),
    ]
    for model, entries in models.items():
        cells = [format_mean_std(stats) for stats in per_layer(entries)]
        accuracies = [100 * e["accuracy"] for e in entries if e["accuracy"] is not None]
        acc = format_mean_std(mean_std(accuracies)) if accuracies else "-"
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {acc} | {len(entries)} |")
    early = results.config["early_layers"]
    lines += [
        "",
        f"The paper's predictions on the early layers' mean distance (first {early or 'half of the'} layers):",
        "",
        *reading(models, early),
    ]
    gains = stage2_gains(results.rows)
    if gains:
        lines += ["", "Does accuracy keep rising after the switch (from the runs' own per-epoch evaluations)?", ""]
        lines += gains
    lines += ["", "Configuration:", "", "```json", json.dumps(results.config, indent=2), "```", ""]
    path.write_text("\n".join(lines))


def write_plots(results_dir: Path, prefix: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, entries in model_rows(rows).items():
        stats = per_layer(entries)
        layers = list(range(len(stats)))
        means = [s["mean"] for s in stats]
        spread = [0.0 if math.isnan(s["std"]) else s["std"] for s in stats]
        ax.plot(layers, means, marker="o", label=model)
        ax.fill_between(
            layers, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)], alpha=0.2
        )
    ax.set_xticks(range(max((len(e["distance"]) for v in model_rows(rows).values() for e in v), default=0)))
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("mean attention distance (px)")
    ax.set_title("Mean attention distance per layer (real test images; ± std over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir / f"{prefix}.png", dpi=120)
    plt.close(fig)

    # DearKD drawn last: it equals dearkd_no_stop up to the switch (same seed, same steps) and would be hidden.
    order = {method: -i for i, method in enumerate(CURVES)}
    curves = sorted((r for r in rows if r["method"] in CURVES), key=lambda r: (order[r["method"]], r["seed"]))
    names = sorted({name for row in curves for name in row["curve"]["components"]})
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(4 * (1 + len(names)), 3.8), squeeze=False)
    colours = {method: f"C{i}" for i, method in enumerate(CURVES)}
    for row in curves:
        curve, colour = row["curve"], colours[row["method"]]
        label = f"{row['method']} s{row['seed']}"
        panels = [(axes[0][0], curve["eval_accuracy"])]
        panels += [(axes[0][1 + i], curve["components"].get(name, [])) for i, name in enumerate(names)]
        for ax, points in panels:
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], ".-", color=colour, alpha=0.8, label=label)
            if curve["switch_epoch"] is not None and row["method"] == "dearkd":
                ax.axvline(curve["switch_epoch"], color=colour, linestyle="--", alpha=0.5)
    for ax, title in zip(axes[0], ["test accuracy", *names]):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Learning curves from trainer_state.json (dashed: DearKD's switch)")
    fig.tight_layout()
    fig.savefig(results_dir / f"{prefix}_curves.png", dpi=110)
    plt.close(fig)


def write_reports(results: Results, results_dir: Path, prefix: str) -> None:
    if results.rows:
        write_table(results_dir / f"{prefix}.md", results)
        write_plots(results_dir, prefix, results.rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.quick:
        ensure_dataset(args.setting.dataset_dir)
    results_dir = Path(args.results_dir)
    results = Results(results_dir / f"{args.prefix}.json", benchmark_config(args), args.overwrite)
    if args.workers > 1 and len(args.seeds) > 1:
        run_workers(args, sys.argv[1:] if argv is None else list(argv), results, MODULE)
    else:
        run_rows(args, results)
    write_reports(results, results_dir, args.prefix)
    return {"config": results.config, "rows": results.rows}


if __name__ == "__main__":
    main()
