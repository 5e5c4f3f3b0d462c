#!/usr/bin/env python
"""Stage 1 trained from a teacher cache against the plain student step and against the live teacher.

Configurations, each with its own copy of the same student (same weights), timed on the same batches:

    plain          transformers.Trainer step of the student, labels only
    dearkd_s1      DearKDTrainer stage 1 with the live teacher (logit KD + early-layer alignment)
    dearkd_cached  DearKDTrainer stage 1 reading a teacher cache: no teacher loaded
    teacher_fwd    the teacher's no-grad forward alone

A real cache of the benchmark's training images (the embedded Fashion-MNIST subset, ``NUM_BATCHES`` batches) is
written first with ``write_teacher_cache`` into a temporary folder, for the student's grid, alignment pairs and
normalisation as the live DearKDTrainer resolves them. The timed batches are ``dearkd_cached``'s own training loader's
(``get_train_dataloader``: replayed views with the teacher's logits and targets read from the cache, as in training);
``plain`` and ``dearkd_s1`` get the same batches' images and labels. A step, the interleaved and rotated timing and
the peak memory are ``benchmarks.speed``'s (``measure.py``); ratios are paired (the median over repeats of one step
over the other in the same repeat), so load from other processes largely cancels.

Beside the steps:

- data loading per batch: the cached trainer's training loader (replay + reading the cache's rows) against the live
  trainer's (``with_transforms``' random crop and flip), same images, 0 workers, whole epochs interleaved;
- the cache's build time per image-view (``write_teacher_cache`` wall time / (images x views), data digest and Arrow
  writes included) against the live teacher's no-grad forward per image at the same batch size (``teacher_fwd``);
- a check that the cached batches carry the teacher's outputs: the live teacher's logits and targets on the first
  batch against the cached ones (fp16).

    python -m benchmarks.speed.teacher_cache                                 # 28 px DeiT-Ti, resnet18 teacher
    python -m benchmarks.speed.teacher_cache --teacher resnet50 \
        --output benchmarks/results/speed_teacher_cache_resnet50.json
    python -m benchmarks.speed.teacher_cache --preset deit_tiny_224 --repeats 6  # 224 px RGB DeiT-Ti, resnet50
    python -m benchmarks.speed.teacher_cache --quick --output /tmp/cache.json   # smoke run, seconds

Flags are ``benchmarks.speed``'s (its generator and loader-worker flags are not used here) plus ``--num_views`` and
``--note``. Writes the JSON and a markdown table beside it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from dearkd_hf import DearKDConfig, DearKDTrainer
from dearkd_hf.alignment import teacher_feature_channels, teacher_outputs
from dearkd_hf.data.collators import collate_fn
from dearkd_hf.data.loading import DataTrainingArguments, load_image_datasets
from dearkd_hf.data.transforms import ReplayableView, with_transforms
from dearkd_hf.models.teachers import load_teacher
from dearkd_hf.teacher_cache import write_teacher_cache

from . import (
    NUM_BATCHES,
    RESULTS_DIR,
    build_parser,
    dry_run_settings,
    make_student,
    make_teacher,
    portable_command,
    resolve_args,
    training_args,
)
from .measure import (
    make_step,
    make_teacher_forward,
    paired_ratio,
    paired_ratio_quartiles,
    resident_bytes,
    step_peak_bytes,
    summarise,
    time_steps,
)

TARGET = 1.05  # a stage-1 step from the cache <= 1.05x the plain student step (paired medians)
OUTPUTS = {None: "speed_teacher_cache.json", "deit_tiny_224": "speed_teacher_cache_224.json"}
TEACHER_KEYS = ("teacher_logits", "teacher_targets")
COMMAND = "python -m benchmarks.speed.teacher_cache"  # as recorded in the results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser(__doc__.split("\n\n")[0], results_name="speed_teacher_cache")
    parser.add_argument("--num_views", type=int, default=None, help="Views stored per image (default 2; quick 1).")
    parser.add_argument("--note", default=None, help="A line recorded in the results (e.g. what else ran).")
    args = resolve_args(parser, parser.parse_args(argv))
    if args.num_views is None:
        args.num_views = 1 if args.quick else 2
    if args.num_views < 1:
        parser.error(f"--num_views {args.num_views}: store at least one view per image.")
    if args.output is None:
        name = "speed_teacher_cache_quick.json" if args.quick else OUTPUTS[args.preset]
        args.output = str(RESULTS_DIR / name)
    return args


# ---- the cache, the trainers, the batches ----


def build_cache(live: DearKDTrainer, teacher: torch.nn.Module, raw, stats, folder: str, args: argparse.Namespace):
    """Write a cache of ``raw`` for the student as ``live`` resolved it; returns it and the build's wall seconds.

    The benchmark's batches are normalised with ``stats`` and fed to the teacher as they are (no processor), so the
    writing teacher is described with those statistics: it sees exactly the live trainer's teacher inputs.
    """
    geometry, pairs = live.geometry, live.alignment_pairs
    writer = load_teacher(copy.deepcopy(teacher), mean=stats, std=stats).to(live.args.device)
    layers = [pair.teacher_layer for pair in pairs]
    channels = teacher_feature_channels(writer, layers, geometry.image_size)
    view = ReplayableView(geometry.image_size, stats, stats, geometry.num_channels)
    start = time.perf_counter()
    cache = write_teacher_cache(
        writer,
        raw,
        folder,
        view=view,
        grid=geometry.grid,
        pairs=pairs,
        target_channels=channels,
        num_views=args.num_views,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=False,
        report=lambda *_: None,
    )
    return cache, time.perf_counter() - start


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: [t.to(device) for t in value] if isinstance(value, list) else value.to(device)
        for key, value in batch.items()
    }


def without_teacher(step):
    """A step fed the batch's images and labels alone (the plain Trainer's forward takes no other keys)."""

    def run(batch: dict[str, Any]) -> None:
        step({key: value for key, value in batch.items() if key not in TEACHER_KEYS})

    return run


def cache_fidelity(live: DearKDTrainer, batch: dict[str, Any]) -> dict[str, float]:
    """How far the cached outputs on a batch lie from the live teacher's on the same images (fp16 storage): the largest
    difference over the largest magnitude, for the logits and for the worst of the alignment targets."""
    layers = [pair.teacher_layer for pair in live.alignment_pairs]
    logits, targets = teacher_outputs(
        live.teacher, batch["pixel_values"], live.student_normalization, layers, live.geometry.grid
    )

    def relative(cached: torch.Tensor, reference: torch.Tensor) -> float:
        return float((cached.float() - reference.float()).abs().max() / reference.float().abs().max())

    return {
        "logits_max_relative_error": relative(batch["teacher_logits"], logits),
        "targets_max_relative_error": max(
            (relative(c, t) for c, t in zip(batch["teacher_targets"], targets, strict=True)), default=0.0
        ),
    }


def loader_times(loaders: dict[str, Any], epochs: int) -> dict[str, list[float]]:
    """Seconds per batch of each loader over whole epochs (iterator start included), interleaved with a rotating
    order; one untimed epoch each first."""
    names = list(loaders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(epochs + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, count = time.perf_counter(), 0
            for _ in loaders[name]:
                count += 1
            if r:
                times[name].append((time.perf_counter() - start) / count)
    return times


# ---- the run ----


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run_settings(args)
    started = time.perf_counter()
    hf_logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    train = load_image_datasets(DataTrainingArguments(), seed=args.seed)["train"]
    num_labels = train.features["label"].num_classes
    raw = train.select(range(NUM_BATCHES * args.batch_size))
    stats = (0.5,) * args.num_channels  # no processor is given to the trainers: the teacher takes these as they are
    live_data = with_transforms({"train": raw}, args.image_size, stats, stats, num_channels=args.num_channels)["train"]
    teacher_module = make_teacher(args, num_labels)

    with tempfile.TemporaryDirectory() as work:
        output_dir = os.path.join(work, "trainer")

        def dearkd(**extra: Any) -> DearKDTrainer:
            config = training_args(DearKDConfig, args, output_dir)
            student = make_student(args, num_labels)
            return DearKDTrainer(
                model=student, args=config, train_dataset=live_data, data_collator=collate_fn, **extra
            )

        plain = Trainer(model=make_student(args, num_labels), args=training_args(TrainingArguments, args, output_dir))
        live = dearkd(teacher_model=copy.deepcopy(teacher_module))
        cache, build_s = build_cache(live, teacher_module, raw, stats, os.path.join(work, "cache"), args)
        cached = dearkd(teacher_cache=cache)
        trainers = {"plain": plain, "dearkd_s1": live, "dearkd_cached": cached}
        for trainer in trainers.values():
            trainer.create_optimizer()
            trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's train loop, which we bypass
            if args.bf16:  # as train() would: accelerate puts the model's forward under autocast (in place)
                trainer.accelerator.prepare_model(trainer.model)

        cached_loader, live_loader = cached.get_train_dataloader(), live.get_train_dataloader()
        batches = [to_device(batch, device) for batch in cached_loader]
        fidelity = cache_fidelity(live, batches[0])
        teacher_alone = load_teacher(copy.deepcopy(teacher_module)).to(device)
        steps = {
            "plain": without_teacher(make_step(plain, device)),
            "dearkd_s1": without_teacher(make_step(live, device)),
            "dearkd_cached": make_step(cached, device),
            "teacher_fwd": make_teacher_forward(teacher_alone, device, args.bf16),
        }
        times, cpu_times = time_steps(steps, batches, args.warmup, args.repeats)
        memory = {}
        for name, step in steps.items():
            trainer = trainers.get(name)
            teacher = teacher_alone if name == "teacher_fwd" else live.teacher if name == "dearkd_s1" else None
            memory[name] = resident_bytes(trainer, teacher) + step_peak_bytes(step, batches[0], device)
        loading = loader_times({"live": live_loader, "cached": cached_loader}, args.repeats)

    medians = {name: statistics.median(t) for name, t in times.items()}
    loader_medians = {name: statistics.median(t) for name, t in loading.items()}
    num_images, views = len(raw), args.num_views
    build_per_image = build_s / (num_images * views)
    forward_per_image = medians["teacher_fwd"] / args.batch_size
    pairs = {
        "cached_vs_plain": ("dearkd_cached", "plain"),
        "cached_vs_live": ("dearkd_cached", "dearkd_s1"),
        "live_vs_plain": ("dearkd_s1", "plain"),
    }
    paired = {key: paired_ratio(times[a], times[b]) for key, (a, b) in pairs.items()}
    result = {
        **paired,
        "target": {"cached_vs_plain_at_most": TARGET, "on": "paired", "met": paired["cached_vs_plain"] <= TARGET},
        "paired_quartiles": {key: paired_ratio_quartiles(times[a], times[b]) for key, (a, b) in pairs.items()},
        "ratios_of_medians": {
            "cached_vs_plain": medians["dearkd_cached"] / medians["plain"],
            "cached_vs_live": medians["dearkd_cached"] / medians["dearkd_s1"],
            "live_vs_plain": medians["dearkd_s1"] / medians["plain"],
        },
        "cpu_time_paired_ratios": {
            "cached_vs_plain": paired_ratio(cpu_times["dearkd_cached"], cpu_times["plain"]),
            "cached_vs_live": paired_ratio(cpu_times["dearkd_cached"], cpu_times["dearkd_s1"]),
        },
        "timings": {name: summarise(t) for name, t in times.items()},
        "cpu_timings": {name: summarise(t) for name, t in cpu_times.items()},
        "raw_times_s": times,
        "raw_cpu_times_s": cpu_times,
        "peak_memory_bytes": memory,
        "loader": {
            "seconds_per_batch": {name: summarise(t) for name, t in loading.items()},
            "cached_vs_live_paired": paired_ratio(loading["cached"], loading["live"]),
            # With 0 loader workers a batch is loaded in the training process, between steps.
            "cached_vs_plain_with_loading_0_workers": (medians["dearkd_cached"] + loader_medians["cached"])
            / (medians["plain"] + loader_medians["live"]),
            "raw_seconds_per_batch": loading,
            "how": "the trainers' own training loaders (0 workers), whole epochs of "
            f"{NUM_BATCHES} batches interleaved; live: with_transforms' random crop + flip; cached: the stored "
            "view replayed + the cache's rows read (logits, targets)",
        },
        "build": {
            "wall_s": build_s,
            "images": num_images,
            "views": views,
            "batch_size": args.batch_size,
            "seconds_per_image_view": build_per_image,
            "live_teacher_forward_seconds_per_image": forward_per_image,
            "build_vs_live_forward_per_image": build_per_image / forward_per_image,
            "how": "write_teacher_cache wall time (data digest, view replay, teacher forward with feature hooks, "
            "pooling, Arrow shards, reload) / (images x views); the live forward: teacher_fwd's median / batch size",
        },
        "cache_fidelity": fidelity,
        "setup": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
            "run_wall_s": time.perf_counter() - started,
            "torch": torch.__version__,
            "student": {
                "image_size": args.image_size,
                "patch_size": args.patch_size,
                "num_channels": args.num_channels,
                "hidden_size": args.hidden_size,
                "num_hidden_layers": args.num_hidden_layers,
                "num_attention_heads": args.num_attention_heads,
                "grid": list(live.geometry.grid),
                "alignment_pairs": [str(pair) for pair in live.alignment_pairs],
            },
            "teacher": args.teacher,
            "preset": args.preset,
            "bf16": args.bf16,
            "batch_size": args.batch_size,
            "batches": NUM_BATCHES,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "quick": args.quick,
            "note": args.note,
            "command": f"{COMMAND} {shlex.join(portable_command(sys.argv[1:] if argv is None else argv)[1:])}",
        },
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2), encoding="utf-8")
    output.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"Wrote {output} and {output.with_suffix('.md').name}")
    return result


def markdown(result: dict[str, Any]) -> str:
    setup, build, loader = result["setup"], result["build"], result["loader"]
    student, target = setup["student"], result["target"]
    device = f"{setup['device']} ({setup['device_name']})" if setup["device_name"] else setup["device"]
    lines = [
        f"# Stage 1 from a teacher cache: {student['image_size']} px, teacher {setup['teacher']}",
        "",
        f"`{setup['command']}`",
        "",
        f"Student {student['hidden_size']} wide, {student['num_hidden_layers']} blocks, patch {student['patch_size']} "
        f"({student['num_channels']} input channel(s), grid {student['grid'][0]}x{student['grid'][1]}, pairs "
        f"{', '.join(student['alignment_pairs']) or 'none'}); teacher timm `{setup['teacher']}`, random weights; "
        f"batch {setup['batch_size']}, {setup['batches']} distinct batches, {setup['repeats']} interleaved repeats "
        f"after {setup['warmup']} warm-up; {device}, {setup['torch_threads']} "
        f"torch thread(s), {setup['cpu_count']} cores; load average (1, 5, 15 min) "
        f"{setup['load_average_1_5_15_before']} before and {setup['load_average_1_5_15_after']} after; the whole "
        f"run took {setup['run_wall_s'] / 60:.1f} min.",
    ]
    if setup["note"]:
        lines += ["", setup["note"]]
    lines += [
        "",
        "| configuration | median ms | q1-q3 ms | process CPU ms (median) | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for name, t in result["timings"].items():
        cpu = result["cpu_timings"][name]["median_s"]
        mem = result["peak_memory_bytes"][name] / 2**20
        lines.append(
            f"| {name} | {t['median_s'] * 1e3:.1f} | {t['q1_s'] * 1e3:.1f}-{t['q3_s'] * 1e3:.1f} | "
            f"{cpu * 1e3:.1f} | {mem:.1f} |"
        )
    verdict = "met" if target["met"] else "missed"
    of_medians, cpu_ratios = result["ratios_of_medians"], result["cpu_time_paired_ratios"]

    def spread(key: str) -> str:
        q1, q3 = result["paired_quartiles"][key]
        return f"{q1:.3f}-{q3:.3f}"

    lines += [
        "",
        "| ratio | paired | q1-q3 of the per-repeat ratios | of medians | process CPU time (paired) |",
        "|---|---|---|---|---|",
        f"| dearkd_cached / plain (target <= {target['cached_vs_plain_at_most']:.2f}: **{verdict}**) | "
        f"**{result['cached_vs_plain']:.3f}** | {spread('cached_vs_plain')} | {of_medians['cached_vs_plain']:.3f} | "
        f"{cpu_ratios['cached_vs_plain']:.3f} |",
        f"| dearkd_cached / dearkd_s1 (live teacher) | {result['cached_vs_live']:.3f} | {spread('cached_vs_live')} | "
        f"{of_medians['cached_vs_live']:.3f} | {cpu_ratios['cached_vs_live']:.3f} |",
        f"| dearkd_s1 / plain | {result['live_vs_plain']:.3f} | {spread('live_vs_plain')} | "
        f"{of_medians['live_vs_plain']:.3f} | |",
        "",
        "| data loading, per batch | median ms | q1-q3 ms |",
        "|---|---|---|",
    ]
    for name, t in loader["seconds_per_batch"].items():
        label = "cached (replay + cache rows)" if name == "cached" else "live (with_transforms)"
        lines.append(f"| {label} | {t['median_s'] * 1e3:.1f} | {t['q1_s'] * 1e3:.1f}-{t['q3_s'] * 1e3:.1f} |")
    lines += [
        f"| cached / live (paired) | {loader['cached_vs_live_paired']:.2f}x | |",
        "",
        f"Step + loading with 0 loader workers (the batch loaded in the training process), dearkd_cached / plain: "
        f"{loader['cached_vs_plain_with_loading_0_workers']:.3f} (ratio of medians).",
        "",
        f"Cache build: {build['wall_s']:.1f} s for {build['images']} images x {build['views']} views (batch "
        f"{build['batch_size']}): {build['seconds_per_image_view'] * 1e3:.2f} ms per image-view, against "
        f"{build['live_teacher_forward_seconds_per_image'] * 1e3:.2f} ms per image for the live teacher's no-grad "
        f"forward ({build['build_vs_live_forward_per_image']:.2f}x).",
        "",
        f"Cached outputs against the live teacher on the same batch (fp16 storage), max |cached - live| / max |live|: "
        f"logits {result['cache_fidelity']['logits_max_relative_error']:.1e}, alignment targets "
        f"{result['cache_fidelity']['targets_max_relative_error']:.1e}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
