#!/usr/bin/env python
"""Step time and peak memory of DearKD's stages against their baselines, side by side in one process.

Configurations, each with its own copy of the same student (same weights) and teacher, run on the same batches:

    plain        transformers.Trainer step of the student, labels only                       (a)
    deit_kd      DearKDTrainer, beta=0, stage 1: DeiT hard logit distillation                (b)
    dearkd_s1    DearKDTrainer, stage 1: logit KD + early-layer alignment                    (c)
    dearkd_s2    DearKDTrainer after the switch (teacher released): labels alone             (d)
    teacher_fwd  the teacher's no-grad forward alone; limit = plain + teacher_fwd
    deit_kd_vit  (extra) as deit_kd with a plain-attention student (mhca_layers=[]): the cost of MHCA

A step is ``trainer.training_step(model, batch)`` (forward, loss, backward) plus ``optimizer.step()`` and
``zero_grad``; the optimizer is the Trainer's own (``create_optimizer``). Configurations are interleaved repeat by
repeat (rotating the order) so that load from other processes hits all of them alike; medians are reported.

Peak memory of a step = the bytes resident before it that belong to that configuration (student, aligners,
optimizer state, teacher) + the peak of what the step allocates on top. On CUDA the latter is
``max_memory_allocated - memory_allocated`` around one step; on CPU it is read from the PyTorch profiler's
allocator events (``profile_memory=True``: allocations and frees in time order, at op granularity), so it is exact
for tensors but ignores non-tensor process memory.

    python -m benchmarks.speed                         # DeiT-Ti-like student on 28x28 Fashion-MNIST, resnet18 teacher
    python -m benchmarks.speed --device cuda --batch_size 128 --repeats 50
    python -m benchmarks.speed --quick --output /tmp/speed.json   # smoke run, seconds
    python -m benchmarks.speed --preset deit_tiny_224            # users' scale: DeiT-Ti 224px RGB + resnet50

A preset sets the sizes of a named setting (see PRESETS; its values per device type where they differ); any flag
given explicitly wins over it. Presets are judged against their own targets on paired medians (PRESET_TARGETS).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from transformers import Trainer, TrainerState, TrainingArguments
from transformers.utils import logging as hf_logging

from benchmarks.harness import RESULTS_DIR, ROOT
from dearkd_hf import DearKDConfig, DearKDTrainer, DearKDViTConfig, DearKDViTForImageClassification
from dearkd_hf.data.collators import collate_fn
from dearkd_hf.data.loading import DataTrainingArguments, load_image_datasets
from dearkd_hf.data.transforms import with_transforms
from dearkd_hf.models.teachers import load_teacher

from .measure import (
    _allocated,
    make_step,
    make_teacher_forward,
    paired_ratios,
    ratios_of,
    resident_bytes,
    step_peak_bytes,
    summarise,
    time_steps,
)
from .throughput import generator_speed, loader_speed

TARGETS = {"stage1_vs_deit": 1.10, "stage1_vs_limit": 1.05, "stage2_vs_plain": 1.03}
TRAINER_CONFIGS = ("plain", "deit_kd", "dearkd_s1", "dearkd_s2", "deit_kd_vit")
# The users' scale: DeiT-Ti (192 wide, 12 blocks, 3 heads, patch 16) at 224 px RGB, a timm resnet50
# teacher, random weights. A value given as {"cpu": ..., "cuda": ...} depends on the device type.
PRESETS: dict[str, dict[str, Any]] = {
    "deit_tiny_224": dict(
        image_size=224,
        patch_size=16,
        num_channels=3,
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        teacher="resnet50",
        batch_size={"cpu": 16, "cuda": 128},
        bf16={"cpu": False, "cuda": True},
        repeats={"cpu": 6, "cuda": 30},
        warmup={"cpu": 1, "cuda": 5},
        gen_batch_size={"cpu": 4, "cuda": 64},
        gen_iterations={"cpu": 2, "cuda": 20},
        loader_workers={"cpu": [0, 1, 2], "cuda": [0, 1, 2, 4, 8, 12]},
        output="speed_224.json",
    ),
}
# A preset's targets, on paired medians (steps of one repeat back to back, so load from other processes cancels).
PRESET_TARGETS = {
    "stage1_vs_deit": 1.03,
    "stage1_vs_limit": 1.05,
    "stage2_vs_plain": 1.02,
    "stage1_peak_mem_vs_deit": 1.05,
}
NUM_BATCHES = 4  # distinct batches cycled through; every configuration sees the same one at each repeat


def build_parser(description: str, results_name: str = "speed") -> argparse.ArgumentParser:
    """The flags of a speed measurement (device, preset, sizes, teacher, repeats, threads, output), shared by
    ``benchmarks.speed`` and the benchmarks built on it (``benchmarks.speed.teacher_cache``, whose results file is
    ``results_name``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available).")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="A named setting (see PRESETS).")
    parser.add_argument("--batch_size", type=int, default=None, help="Training batch size (default 64; quick 8).")
    parser.add_argument("--repeats", type=int, default=None, help="Timed steps per configuration (default 10).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps per configuration first (default 2).")
    parser.add_argument("--quick", action="store_true", help="Tiny student and sizes: a smoke run of seconds.")
    parser.add_argument("--image_size", type=int, default=None, help="Input side (default 28, Fashion-MNIST).")
    parser.add_argument("--patch_size", type=int, default=None, help="Student patch side (default 4).")
    parser.add_argument("--num_channels", type=int, default=None, help="Input channels, 1 or 3 (default 1).")
    parser.add_argument("--hidden_size", type=int, default=None, help="Student width (default 192, DeiT-Ti).")
    parser.add_argument("--num_hidden_layers", type=int, default=None, help="Student depth (default 12).")
    parser.add_argument("--num_attention_heads", type=int, default=None, help="Student heads (default 3).")
    parser.add_argument("--teacher", default=None, help="timm CNN, built with pretrained=False (default resnet18).")
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (CUDA; default off)."
    )
    parser.add_argument("--gen_batch_size", type=int, default=None, help="Generator batch (default 64; quick 8).")
    parser.add_argument("--gen_iterations", type=int, default=None, help="Generator steps timed (default 20).")
    parser.add_argument(
        "--loader_workers",
        type=int,
        nargs="*",
        default=None,
        help="Measure the training loader (DeiT recipe) at these worker counts (default: none; preset: 0 1 2).",
    )
    parser.add_argument("--loader_batches", type=int, default=4, help="Loader batches timed per worker count.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (CPU default 1: on a shared machine 2 OpenMP threads slow steps down up to 50x).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", default=None, help=f"JSON path (default benchmarks/results/{results_name}[_quick].json)."
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the resolved settings as JSON and stop.")
    return parser


def resolve_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill what was not given from the preset, then from the defaults (quick or full); refuse inconsistent flags.
    ``args.output`` stays None when not given: each benchmark names its own results file."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset is not None and args.quick:
        parser.error("--preset and --quick are exclusive: a preset is a full-size setting.")
    device_type = torch.device(args.device).type
    for name, value in PRESETS.get(args.preset, {}).items():
        if name != "output" and getattr(args, name) is None:
            setattr(args, name, value[device_type] if isinstance(value, dict) else value)
    defaults = dict(
        batch_size=(8, 64),
        repeats=(2, 10),
        warmup=(1, 2),
        image_size=(16, 28),
        patch_size=(4, 4),
        num_channels=(1, 1),
        hidden_size=(32, 192),
        num_hidden_layers=(4, 12),
        num_attention_heads=(2, 3),
        teacher=("test_resnet", "resnet18"),
        bf16=(False, False),
        gen_batch_size=(8, 64),
        gen_iterations=(2, 20),
        loader_workers=([], []),
    )
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.num_channels not in (1, 3):
        parser.error(f"--num_channels {args.num_channels}: use 1 (grayscale) or 3 (RGB).")
    if args.bf16 and device_type != "cuda":
        parser.error("--bf16 needs --device cuda (CPU steps are timed in fp32).")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser(__doc__.split("\n\n")[0])
    args = resolve_args(parser, parser.parse_args(argv))
    if args.output is None:
        name = PRESETS[args.preset]["output"] if args.preset else "speed_quick.json" if args.quick else "speed.json"
        args.output = str(RESULTS_DIR / name)
    return args


# ---- models, data, trainers ----


def make_student(args: argparse.Namespace, num_labels: int, mhca_layers: list[int] | None = None) -> nn.Module:
    torch.manual_seed(args.seed)
    config = DearKDViTConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_channels=args.num_channels,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=4 * args.hidden_size,
        mhca_layers=mhca_layers,
        num_labels=num_labels,
    )
    return DearKDViTForImageClassification(config)


def make_teacher(args: argparse.Namespace, num_labels: int) -> nn.Module:
    torch.manual_seed(args.seed + 1)
    return timm.create_model(args.teacher, pretrained=False, num_classes=num_labels, in_chans=args.num_channels)


def make_batches(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, torch.Tensor]], int]:
    """NUM_BATCHES batches of the embedded Fashion-MNIST subset, transformed as training data, on the device."""
    dataset = load_image_datasets(DataTrainingArguments(), seed=args.seed)
    num_labels = dataset["train"].features["label"].num_classes
    train = dataset["train"].select(range(NUM_BATCHES * args.batch_size))
    stats = (0.5,) * args.num_channels  # no processor is given to the trainers: the teacher takes these as they are
    train = with_transforms({"train": train}, args.image_size, stats, stats, num_channels=args.num_channels)["train"]
    batches = []
    for i in range(NUM_BATCHES):
        examples = [train[j] for j in range(i * args.batch_size, (i + 1) * args.batch_size)]
        batches.append({k: v.to(device) for k, v in collate_fn(examples).items()})
    return batches, num_labels


def training_args(cls: type, args: argparse.Namespace, output_dir: str, **extra: Any) -> TrainingArguments:
    return cls(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        report_to="none",
        use_cpu=args.device == "cpu",
        save_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
        bf16=args.bf16,
        **extra,
    )


def build_trainers(
    args: argparse.Namespace, teacher: nn.Module, num_labels: int, output_dir: str
) -> dict[str, Trainer]:
    """One trainer per configuration, each with its own student copy (same initial weights) and teacher copy."""

    def dearkd(student: nn.Module, **extra: Any) -> DearKDTrainer:
        config = training_args(DearKDConfig, args, output_dir, **extra)
        return DearKDTrainer(model=student, teacher_model=copy.deepcopy(teacher), args=config)

    plain_args = training_args(TrainingArguments, args, output_dir)
    trainers = {
        "plain": Trainer(model=make_student(args, num_labels), args=plain_args),
        "deit_kd": dearkd(make_student(args, num_labels), beta=0.0),
        "dearkd_s1": dearkd(make_student(args, num_labels)),
        "dearkd_s2": dearkd(make_student(args, num_labels), distillation_stop_epoch=1.0, num_train_epochs=2),
        "deit_kd_vit": dearkd(make_student(args, num_labels, mhca_layers=[]), beta=0.0),
    }
    for trainer in trainers.values():
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's train loop, which we bypass
        if args.bf16:  # train() would prepare the model: accelerate puts its forward under autocast (in place)
            trainer.accelerator.prepare_model(trainer.model)
    return trainers


def switch_to_stage2(trainer: DearKDTrainer, device: torch.device) -> dict[str, Any]:
    """Cross the stop epoch as training would (the callback's on_step_begin) and check the teacher is released."""
    weight = weakref.ref(next(trainer.teacher.module.parameters()))
    before = _allocated(device)
    state = TrainerState(epoch=trainer.args.resolved_stop_epoch(2), num_train_epochs=2)
    trainer.distillation_stop.on_step_begin(trainer.args, state, trainer.control)
    gc.collect()
    after = _allocated(device)
    return {
        "stage_after_switch": trainer.stage,
        "teacher_is_none": trainer.teacher is None,
        "teacher_weights_freed": weight() is None,  # no reference left anywhere: the memory went back
        "device_memory_released_bytes": None if before is None else before - after,
    }


# ---- measurement ----


def targets_met(ratios: dict[str, float], paired: dict[str, float], preset: str | None) -> dict[str, Any]:
    """Each target's bound, the ratio it is judged on (a preset's: paired medians; otherwise wall medians), met."""
    bounds, judged, basis = (PRESET_TARGETS, paired, "paired") if preset else (TARGETS, ratios, "wall")
    return {
        name: {"max": bound, "on": basis, "value": judged[name], "met": judged[name] <= bound}
        for name, bound in bounds.items()
    }


def portable_command(argv: list[str], script: str = "python -m benchmarks.speed") -> list[str]:
    """The command line as recorded in results: how it is run (``script``), then ``argv`` with paths inside the
    repository relative to it and others by file name (results hold no machine paths)."""

    def portable(arg: str) -> str:
        flag, sep, value = arg.rpartition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if os.path.isabs(value):
            path = Path(value).resolve()
            value = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        return f"{flag}{sep}{value}"

    return [script, *(portable(arg) for arg in argv)]


def dry_run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--dry_run: the resolved settings (the output path made portable), printed as JSON and returned."""
    settings = {**vars(args), "output": portable_command([args.output])[1]}
    print(json.dumps(settings, indent=2))
    return settings


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run_settings(args)
    hf_logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches, num_labels = make_batches(args, device)
    teacher_module = make_teacher(args, num_labels)

    with tempfile.TemporaryDirectory() as output_dir:
        trainers = build_trainers(args, teacher_module, num_labels, output_dir)
        switch = switch_to_stage2(trainers["dearkd_s2"], device)
        teacher_alone = load_teacher(copy.deepcopy(teacher_module)).to(device)

        steps = {name: make_step(trainer, device) for name, trainer in trainers.items()}
        steps["teacher_fwd"] = make_teacher_forward(teacher_alone, device, args.bf16)
        times, cpu_times = time_steps(steps, batches, args.warmup, args.repeats)

        memory = {}
        for name, step in steps.items():
            trainer = trainers.get(name)
            teacher = teacher_alone if name == "teacher_fwd" else getattr(trainer, "teacher", None)
            memory[name] = resident_bytes(trainer, teacher) + step_peak_bytes(step, batches[0], device)

    medians = {name: statistics.median(t) for name, t in times.items()}
    limit = medians["plain"] + medians["teacher_fwd"]
    memory_ratio = {"stage1_peak_mem_vs_deit": memory["dearkd_s1"] / memory["deit_kd"]}
    ratios = {**ratios_of(times), **memory_ratio}
    paired = {**paired_ratios(times), **memory_ratio}
    generator = generator_speed(args, teacher_module, device)
    loader = loader_speed(args, device, medians) if args.loader_workers else None
    result = {
        **ratios,
        "generator_images_per_s": generator["images_per_s"],
        "targets": targets_met(ratios, paired, args.preset),
        "paired_ratios": paired,
        "cpu_time_ratios": ratios_of(cpu_times),
        "timings": {name: summarise(t) for name, t in times.items()},
        "cpu_timings": {name: summarise(t) for name, t in cpu_times.items()},
        "raw_times_s": times,
        "raw_cpu_times_s": cpu_times,
        "physical_limit_stage1_s": limit,
        "mhca_cost_deit_kd_vs_plain_attention": medians["deit_kd"] / medians["deit_kd_vit"],
        "peak_memory_bytes": memory,
        "peak_memory_method": (
            "cuda: resident tensors + torch.cuda.max_memory_allocated above the pre-step allocation"
            if device.type == "cuda"
            else "cpu: resident tensors + peak of the PyTorch profiler's allocator events during one step "
            "(tensors only, op granularity; not process RSS)"
        ),
        "stage2_switch": switch,
        "generator": generator,
        "loader": loader,
        "setup": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "student": {
                "image_size": args.image_size,
                "patch_size": args.patch_size,
                "hidden_size": args.hidden_size,
                "num_hidden_layers": args.num_hidden_layers,
                "num_attention_heads": args.num_attention_heads,
                "mhca_layers": "all (deit_kd_vit: none)",
                "parameters": sum(p.numel() for p in make_student(args, num_labels).parameters()),
            },
            "teacher": args.teacher,
            "preset": args.preset,
            "num_channels": args.num_channels,
            "bf16": args.bf16,
            "teacher_parameters": sum(p.numel() for p in teacher_module.parameters()),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "quick": args.quick,
            "command": " ".join(portable_command(argv if argv is not None else sys.argv[1:])),
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print_table(result)
    print(f"\nWrote {args.output}")
    return result


def print_table(result: dict[str, Any]) -> None:
    mem = result["peak_memory_bytes"]
    print(f"\n{'config':<12} {'median ms':>10} {'q1-q3 ms':>16} {'peak MiB':>9}")
    for name, t in result["timings"].items():
        iqr = f"{t['q1_s'] * 1e3:.1f}-{t['q3_s'] * 1e3:.1f}"
        print(f"{name:<12} {t['median_s'] * 1e3:>10.1f} {iqr:>16} {mem[name] / 2**20:>9.1f}")
    print(f"{'limit (a+t)':<12} {result['physical_limit_stage1_s'] * 1e3:>10.1f}")
    print()
    print(f"{'ratio':<24} {'wall':>6} {'paired':>7} {'cpu':>6}")
    for name in ("stage1_vs_deit", "stage1_vs_limit", "stage2_vs_plain", "stage1_peak_mem_vs_deit"):
        target = result["targets"].get(name)
        verdict = "" if target is None else f"(target <= {target['max']:.2f} on {target['on']}: "
        verdict += "" if target is None else "ok)" if target["met"] else "MISSED)"
        cpu = result["cpu_time_ratios"].get(name, result[name])
        print(f"{name:<24} {result[name]:>6.3f} {result['paired_ratios'][name]:>7.3f} {cpu:>6.3f}  {verdict}")
    print(f"{'MHCA cost (deit_kd)':<24} {result['mhca_cost_deit_kd_vs_plain_attention']:.3f} x plain attention")
    gen = result["generator"]
    print(
        f"generator: {gen['images_per_s']:.1f} images/s at {gen['iterations']} iterations "
        f"({gen['images_per_s_at_2000_iterations']:.3f} images/s at DeepInversion's 2000)"
    )
    loader = result["loader"]
    if loader:
        rates = ", ".join(f"{w} workers {rate:.0f}" for w, rate in loader["loader_images_per_s"].items())
        steps = ", ".join(f"{name} {rate:.0f}" for name, rate in loader["training_images_per_s"].items())
        print(f"loader images/s: {rates}; training steps images/s: {steps}")
    switch = result["stage2_switch"]
    print(
        f"stage-2 switch: teacher is None: {switch['teacher_is_none']}; its weights freed: "
        f"{switch['teacher_weights_freed']}; device memory released: "
        f"{switch['device_memory_released_bytes']}"
    )


if __name__ == "__main__":
    main()
