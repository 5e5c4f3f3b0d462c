"""Throughput beside the step: how fast the data loader and the data-free generator feed a training step."""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch import nn

from dearkd_hf.data.collators import MixupCollator
from dearkd_hf.data.loading import DataTrainingArguments, load_image_datasets
from dearkd_hf.data.recipes import get_recipe
from dearkd_hf.data.transforms import with_transforms
from dearkd_hf.inversion import DeepInversionGenerator, InversionConfig

from .measure import _sync


def loader_speed(args: argparse.Namespace, device: torch.device, step_s: dict[str, float]) -> dict[str, Any]:
    """Training-loader images/s at each worker count, beside the training steps' images/s.

    The loader is the one a `--recipe deit` run trains with: the embedded Fashion-MNIST images served as
    image_size RGB through the recipe's timm transforms, its mixup/CutMix collator and repeated-augmentation
    sampler; persistent workers, memory pinned on CUDA. After one untimed batch per worker (their start-up),
    `loader_batches` batches (at least two per worker) are timed.
    """
    recipe = get_recipe("deit")
    dataset = load_image_datasets(DataTrainingArguments(), seed=args.seed)["train"]
    num_labels = dataset.features["label"].num_classes
    stats = (0.5,) * args.num_channels
    dataset = with_transforms({"train": dataset}, args.image_size, stats, stats, args.num_channels, recipe=recipe)
    collator = MixupCollator(num_classes=num_labels, **recipe.data)
    sampler = RepeatAugSampler(
        dataset["train"],
        num_replicas=1,
        rank=0,
        num_repeats=recipe.training["repeated_augmentations"],
        selected_round=0,
    )
    rows = {}
    for workers in args.loader_workers:
        loader = torch.utils.data.DataLoader(
            dataset["train"],
            batch_size=args.batch_size,
            sampler=sampler,
            collate_fn=collator,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )
        batches, timed = iter(loader), max(args.loader_batches, 2 * workers)  # every worker delivers twice
        for _ in range(max(1, workers)):
            next(batches)
        start = time.perf_counter()
        for _ in range(timed):
            next(batches)
        rows[str(workers)] = args.batch_size * timed / (time.perf_counter() - start)
        del batches, loader
    steps = {name: args.batch_size / step_s[name] for name in ("plain", "dearkd_s1", "dearkd_s2")}
    enough = [int(w) for w, rate in rows.items() if rate >= steps["dearkd_s1"]]
    return {
        "loader_images_per_s": rows,
        "training_images_per_s": steps,
        "workers_that_keep_stage1_fed": min(enough) if enough else None,
        "batch_size": args.batch_size,
        "batches_timed": args.loader_batches,
        "transform": "recipe deit: timm create_transform (rand-m9-mstd0.5-inc1, bicubic, random erasing 0.25), "
        "Mixup 0.8 / CutMix 1.0 / smoothing 0.1 collator, RepeatAugSampler(3)",
    }


def generator_speed(args: argparse.Namespace, teacher: nn.Module, device: torch.device) -> dict[str, Any]:
    """Images per second of DeepInversion + BPID with this teacher, batch and resolution."""
    config = InversionConfig(
        iterations=args.gen_iterations, batch_size=args.gen_batch_size, resolution=args.image_size, seed=args.seed
    )
    generator = DeepInversionGenerator(copy.deepcopy(teacher), config, device=device)
    labels = generator.batch_labels(0)
    generator.generate_batch([0, 0, 1, 1], seed=0)  # warm-up (untimed)
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(_step: int, _loss: float) -> None:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    _sync(device)
    start = last[0] = time.perf_counter()
    generator.generate_batch(labels, seed=1, callback=on_step)
    _sync(device)
    elapsed = time.perf_counter() - start
    per_iteration = statistics.median(step_times)
    return {
        "batch_size": args.gen_batch_size,
        "iterations": args.gen_iterations,
        "resolution": args.image_size,
        "batch_s": elapsed,
        "iteration_median_s": per_iteration,
        "images_per_s": args.gen_batch_size / elapsed,
        # DeepInversion's default is 2000 iterations per batch: what a real data-free run gets.
        "images_per_s_at_2000_iterations": args.gen_batch_size / (2000 * per_iteration),
    }
