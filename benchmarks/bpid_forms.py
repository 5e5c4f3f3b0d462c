#!/usr/bin/env python
"""BPID's form, one form at a time: DeepInversion sets with each form of BPID's terms, and their data-free students.

Each form replaces the two terms of ``DeepInversionGenerator._bpid_terms`` (METHOD.md section 5): the intra term
(diversity within a class) and the boundary term (each image kept inside its class). For each (form, seed), with
``benchmarks.datafree``'s teacher of the seed, its DeepInversion setting and its data-free student (2,000 steps,
soft KD, mixup/CutMix, teacher labels, distillation to the end), a generated set is made and a student trained on
it alone, evaluated on the real test set; ``plain`` (no BPID) is the paired baseline of every form with the same
iterations and images. The forms:

    plain             DeepInversion without BPID
    cosine            the library's BPID: mean centred cosine of same-class pairs + hinge at margin 1
    hinge             only same-class pairs more alike than 0.5 are pushed apart: mean relu(cos - 0.5)
    contrastive       intra-class InfoNCE (temperature 0.1) between each image and an augmented view of it (per-image
                      random scale 0.7-1, shift, flip), as in CMI: it stops pushing once images are told apart
    deep_bound        no intra term; the boundary hinge at margin 8 (images kept deep inside their class)
    hinge_deep_bound  hinge + the boundary hinge at margin 8
    margin_spread     no intra term; each image's margin pulled to its own target, spread over [0, 8] by its rank
                      among its class in the batch (images at every distance from the boundary)
    plain_it500, cosine_it500   plain and cosine with 500 iterations per batch on 640 images (about 1.15x the synthesis
                      cost): whether BPID helps once DeepInversion's images have converged further

Writes ``<results_dir>/bpid_forms.{json,md}`` (``bpid_forms_quick`` with --quick); a (form, seed) already there is
skipped. One process; for two cores run two with other ``--forms`` and ``--results_dir``, then ``--merge_from``.

    python -m benchmarks.bpid_forms --forms plain cosine hinge --seeds 0 1
    python -m benchmarks.bpid_forms --quick          # tiny models and sets: a smoke run
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from accelerate import PartialState

from benchmarks.data_efficiency import RESULTS_DIR, Results, Runner, merge_rows, run_config
from benchmarks.datafree import FRACTION, set_statistics, train_datafree
from benchmarks.datafree import parse_args as datafree_args
from dearkd_hf.inversion import DeepInversionGenerator, InversionConfig, write_dataset
from dearkd_hf.inversion.losses import (
    bpid_boundary,
    bpid_intra,
    centred_features,
    class_margin,
    same_class_pairs,
)
from dearkd_hf.teachers import TeacherOutput, load_teacher

Term = Callable[[DeepInversionGenerator, TeacherOutput, torch.Tensor, torch.Tensor], torch.Tensor]
HINGE = 0.5  # the hinge form's cosine threshold
TEMPERATURE = 0.1  # the contrastive form's
DEEP_MARGIN = 8.0  # deep_bound's margin, and the top of margin_spread's targets
VIEW_SEED = 1234  # the contrastive views come from torch's global generator, seeded with VIEW_SEED + seed


def hinge_intra(features: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """``mean_{(i,j) in P} relu(z_i . z_j - threshold)``: only pairs more alike than ``threshold`` are pushed."""
    z = centred_features(features)
    return F.relu(z @ z.T - threshold)[same_class_pairs(labels)].mean()


def contrastive_intra(
    features: torch.Tensor, view_features: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Intra-class InfoNCE: image i's view must be nearer to image i than to the other images of its class,
    ``-mean_i log softmax_{j: y_j = y_i}(z_i . z'_j / T)[i]``."""
    logits = centred_features(features) @ centred_features(view_features).T / temperature
    logits = logits.masked_fill(labels[:, None] != labels[None, :], float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(labels), device=labels.device))


def rank_in_class(labels: torch.Tensor) -> torch.Tensor:
    """Each image's rank among its class in the batch, scaled to [0, 1] (0 for a class seen once)."""
    same = labels[:, None] == labels[None, :]
    earlier = torch.tril(same, diagonal=-1).sum(dim=1).float()
    return earlier / (same.sum(dim=1) - 1).clamp(min=1).float()


def margin_spread(logits: torch.Tensor, labels: torch.Tensor, top: float) -> torch.Tensor:
    """``mean_i |(l_i[y_i] - max_{c != y_i} l_i[c]) - top * rank_i|``."""
    return (class_margin(logits, labels) - top * rank_in_class(labels)).abs().mean()


def random_view(pixels: torch.Tensor) -> torch.Tensor:
    """Per image: scale in [0.7, 1], a shift that keeps the crop inside the image, and a horizontal flip half the
    time (torch's global generator)."""
    n = len(pixels)
    scale = torch.empty(n).uniform_(0.7, 1.0)
    shift_x = (torch.rand(n) * 2 - 1) * (1 - scale)
    shift_y = (torch.rand(n) * 2 - 1) * (1 - scale)
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False).to(pixels.device)
    return F.grid_sample(pixels, grid, padding_mode="border", align_corners=False)


def cosine_term(gen, output, pixels, labels):
    return bpid_intra(output.pre_logits, labels)


def hinge_term(gen, output, pixels, labels):
    return hinge_intra(output.pre_logits, labels, HINGE)


def contrastive_term(gen, output, pixels, labels):
    view = gen.teacher.forward_with_features(random_view(pixels))
    return contrastive_intra(output.pre_logits, view.pre_logits, labels, TEMPERATURE)


def bound_term(gen, output, pixels, labels):
    return bpid_boundary(output.logits, labels, gen.config.bpid_margin)


def spread_term(gen, output, pixels, labels):
    return margin_spread(output.logits, labels, DEEP_MARGIN)


class Form(NamedTuple):
    """BPID's terms (None: left out; neither: no BPID), the boundary margin, and the DeepInversion budget."""

    description: str
    intra: Term | None
    bound: Term | None
    margin: float = 1.0
    iterations: int = 100
    images: int = 2560


FORMS = {
    "plain": Form("DeepInversion, no BPID", None, None),
    "cosine": Form("the library's BPID", cosine_term, bound_term),
    "hinge": Form(f"relu(cos - {HINGE}) + bound", hinge_term, bound_term),
    "contrastive": Form(f"intra-class InfoNCE, T {TEMPERATURE}, + bound", contrastive_term, bound_term),
    "deep_bound": Form(f"bound at margin {DEEP_MARGIN:g} only", None, bound_term, DEEP_MARGIN),
    "hinge_deep_bound": Form(f"hinge + bound at margin {DEEP_MARGIN:g}", hinge_term, bound_term, DEEP_MARGIN),
    "margin_spread": Form(f"margins spread over [0, {DEEP_MARGIN:g}]", None, spread_term),
    "plain_it500": Form("plain, 500 iterations, 640 images", None, None, iterations=500, images=640),
    "cosine_it500": Form("cosine, 500 iterations, 640 images", cosine_term, bound_term, iterations=500, images=640),
}


class FormGenerator(DeepInversionGenerator):
    """DeepInversion whose BPID terms are a form's."""

    form: Form

    def _bpid_terms(self, output, pixels, labels):
        named = (("bpid_intra", self.form.intra), ("bpid_bound", self.form.bound))
        return {name: term(self, output, pixels, labels) for name, term in named if term is not None}


def baseline(name: str) -> str:
    """The plain form a form is paired with: the one with its iterations and images."""
    budget = (FORMS[name].iterations, FORMS[name].images)
    return next(n for n, f in FORMS.items() if no_bpid(f) and (f.iterations, f.images) == budget)


def no_bpid(form: Form) -> bool:
    return form.intra is None and form.bound is None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bpid_forms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="Tiny models, 16 images, 2 iterations, 2 steps.")
    parser.add_argument("--work_dir", default=None, help="Default: benchmarks.datafree's (its teachers are reused).")
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument("--overwrite", action="store_true", help="Discard results made with another config.")
    parser.add_argument(
        "--merge_from",
        nargs="+",
        default=[],
        help="Results files of other runs (same config) whose rows this one lacks are added first: run two "
        "processes with other --results_dir, then merge.",
    )
    return parser.parse_args(argv)


def datafree(args: argparse.Namespace, form: Form) -> argparse.Namespace:
    """benchmarks.datafree's arguments for the form's budget."""
    images, iterations = (16, 2) if args.quick else (form.images, form.iterations)
    flags = [f"--num_generated={images}", f"--gen_iterations={iterations}"]
    flags += ["--quick", "--gen_batch_size=8"] if args.quick else []
    flags += [f"--work_dir={args.work_dir}"] if args.work_dir else []
    return datafree_args(flags)


def synthesise(runner: Runner, bench: argparse.Namespace, name: str, seed: int) -> str:
    """The form's set from the seed's teacher, written afresh (an earlier one is deleted)."""
    form = FORMS[name]
    teacher = runner.ensure_teacher(FRACTION, seed)
    output_dir = runner.work / f"bpid_form-{name}-s{seed}"
    shutil.rmtree(output_dir, ignore_errors=True)
    config = InversionConfig(
        batch_size=bench.gen_batch_size,
        resolution=28,
        iterations=bench.gen_iterations,
        tv=bench.gen_tv,
        r_bn=bench.gen_r_bn,
        jitter=bench.gen_jitter,
        flip=bench.gen_jitter > 0,
        bpid_weight=0.0 if no_bpid(form) else 1.0,
        bpid_margin=form.margin,
        seed=seed,
    )
    generator = FormGenerator(load_teacher(teacher), config, device="cpu")
    generator.form = form
    torch.manual_seed(VIEW_SEED + seed)
    write_dataset(generator, str(output_dir), bench.num_generated, state=PartialState(cpu=True), progress=False)
    return str(output_dir)


def run_form(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    free = datafree(args, FORMS[name])
    runner = Runner(free.bench)
    start = time.perf_counter()
    dataset = synthesise(runner, free.bench, name, seed)
    synthesis_s = time.perf_counter() - start
    teacher = str(runner.teacher_dir(FRACTION, seed))
    accuracy = train_datafree(runner, free, "deepinversion", seed, dataset, row=f"bpid_form-student-{name}")
    return {
        "method": name,  # the results key
        "train_fraction": FRACTION,
        "seed": seed,
        "description": FORMS[name].description,
        "iterations": free.bench.gen_iterations,
        "num_images": free.bench.num_generated,
        "margin": FORMS[name].margin,
        "accuracy": accuracy,
        "synthesis_s": synthesis_s,
        **set_statistics(teacher, dataset, free.bench.gen_batch_size),
    }


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """One line per form: mean accuracy, and the mean paired difference to its plain baseline over shared seeds."""
    by_key = {(row["method"], row["seed"]): row for row in rows}
    lines = [
        "# BPID's form: DeepInversion's data-free students (Fashion-MNIST test accuracy, %)",
        "",
        "Generated by `python -m benchmarks.bpid_forms`; the JSON next to this file holds every row. Paired: the "
        "mean difference to the plain form of the same iterations and images over the seeds both have (each seed's in "
        "brackets); std is over seeds.",
        "",
        "| form | what | iterations | images | accuracy per seed | mean ± std | paired vs plain | same-class cosine "
        "| teacher confidence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(row["method"] for row in rows):
        mine = sorted((row for row in rows if row["method"] == name), key=lambda row: row["seed"])
        plain = baseline(name)
        diffs = [
            100 * (row["accuracy"] - by_key[(plain, row["seed"])]["accuracy"])
            for row in mine
            if (plain, row["seed"]) in by_key
        ]
        each = ", ".join(f"{diff:+.2f}" for diff in diffs)
        paired = "-" if name == plain or not diffs else f"{statistics.mean(diffs):+.2f} ({each}; n={len(diffs)})"
        per_seed = " / ".join(f"{100 * row['accuracy']:.2f}" for row in mine)
        accuracies = [100 * row["accuracy"] for row in mine]
        spread = f" ± {statistics.stdev(accuracies):.2f}" if len(accuracies) > 1 else ""
        cosine = statistics.mean(row["same_class_cosine"] for row in mine)
        confidence = statistics.mean(row["teacher_confidence"] for row in mine)
        lines.append(
            f"| {name} | {mine[0]['description']} | {mine[0]['iterations']} | {mine[0]['num_images']} | {per_seed} | "
            f"{statistics.mean(accuracies):.2f}{spread} | {paired} | {cosine:.3f} | "
            f"{confidence:.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    prefix = "bpid_forms_quick" if args.quick else "bpid_forms"
    results_dir = Path(args.results_dir)
    bench = datafree(args, FORMS["plain"]).bench
    config = {**run_config(bench), "num_generated": None, "gen_iterations": None}  # each row has its own
    results = Results(results_dir / f"{prefix}.json", config, args.overwrite)
    merge_rows(results, [Path(path) for path in args.merge_from])
    for seed in args.seeds:
        for name in args.forms:
            if not results.has(name, FRACTION, seed):
                print(f"form {name}, seed {seed}", flush=True)
                results.add(run_form(args, name, seed))
                write_table(results.rows, results_dir / f"{prefix}.md")
    write_table(results.rows, results_dir / f"{prefix}.md")
    return {"config": results.config, "rows": results.rows}


if __name__ == "__main__":
    main()
