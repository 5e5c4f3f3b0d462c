#!/usr/bin/env python
"""Step time and peak memory of DearKD's ViT students against transformers' ViT / DeiT of the same size.

Rows, all DeiT-Ti-sized (224 px, patch 16, 192 wide, 12 blocks, 3 heads, MLP 768, 1000 labels), random weights:

    hf_deit           transformers DeiTForImageClassificationWithTeacher, sdpa        (the reference, 1.00)
    hf_vit            transformers ViTForImageClassification, sdpa
    dearkd            DearKDViTForImageClassification, library defaults (MHCA in every block), sdpa
    dearkd_eager      the same with attn_implementation="eager" (MHCA's bias added to materialised logits)
    dearkd_attn_drop  the defaults with attention_probs_dropout_prob=0.1 (the default until it became 0.0), sdpa
    dearkd_no_mhca    the defaults with mhca_layers=[] (plain attention), sdpa

A training step is forward, cross-entropy on `logits`, backward (no optimizer); inference is an eval-mode forward
under `torch.inference_mode`. Every row sees the same batch. Repeats are interleaved (one step of each row per
repeat, the order rotated each repeat) so load from other processes hits all rows alike; each row's ratio is the
median over repeats of its step time over the reference's step time in the same repeat (paired), next to the ratio
of medians; under load from other processes the ratio of minima (each row's least disturbed step) and the paired
ratio of process CPU time (`time.process_time`: with one thread, the work done, not the time spent waiting for a
core; with more, OpenMP threads spin while they wait and count) are given too.

Peak memory is measured apart, in a fresh process per row and mode: after building the model and batch and one
warm-up step, the peak resident set size is reset (`/proc/self/clear_refs`, Linux), one step runs, and the row
reports VmHWM - VmRSS before the step: the process's RSS growth at the step's peak (activations, gradients,
allocator and kernel workspaces; parameters and the batch excluded), with glibc's mmap / trim thresholds fixed at
128 KiB so freed blocks leave RSS. Not tracemalloc: it sees no tensor memory.

The results name the CPU (`/proc/cpuinfo`'s model name) and whether the process flushes subnormal floats to zero
(`torch.set_flush_denormal`, read by its effect since torch has no getter), before and after the timing: the
benchmark never sets it, and x86 CPUs slow down on subnormals, which MHCA's bias produced before it was floored.

    python -m benchmarks.speed.students --threads 2                # results/speed_students.{json,md}
    taskset -c 1 env OMP_NUM_THREADS=1 python -m benchmarks.speed.students --threads 1 \
        --output benchmarks/results/speed_students_1thread.json   # one thread pinned to one core
    python -m benchmarks.speed.students --quick --output /tmp/s.json  # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTConfig, ViTForImageClassification  # noqa: E402

from dearkd_hf import DearKDViTConfig, DearKDViTForImageClassification  # noqa: E402

from .measure import paired_ratio  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
REFERENCE = "hf_deit"
ROWS = ("hf_deit", "hf_vit", "dearkd", "dearkd_eager", "dearkd_attn_drop", "dearkd_no_mhca")
TARGET = 1.10  # the default MHCA student's paired ratio to hf_deit at most, in training and in inference
SIZES = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, num_labels=1000)
QUICK_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--batch_size", type=int, default=None, help="Batch size (default 16; quick 4).")
    parser.add_argument("--image_size", type=int, default=None, help="Input side (default 224; quick 64).")
    parser.add_argument("--repeats", type=int, default=None, help="Timed interleaved repeats (default 10; quick 2).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per row and mode first.")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="Rows to run (hf_deit always).")
    parser.add_argument("--no_memory", action="store_true", help="Skip the per-row peak-memory processes.")
    parser.add_argument("--quick", action="store_true", help="A tiny model and sizes: a smoke run.")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/speed_students.json).")
    parser.add_argument("--memory_row", nargs=2, default=None, help=argparse.SUPPRESS)  # internal: ROW MODE
    args = parser.parse_args(argv)
    quick = {"batch_size": 4, "image_size": 64, "repeats": 2}
    full = {"batch_size": 16, "image_size": 224, "repeats": 10}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if REFERENCE not in args.rows:
        args.rows.insert(0, REFERENCE)
    return args


def build(row: str, args: argparse.Namespace) -> torch.nn.Module:
    sizes = dict(QUICK_SIZES if args.quick else SIZES, image_size=args.image_size, patch_size=16)
    torch.manual_seed(0)
    if row == "hf_deit":
        return DeiTForImageClassificationWithTeacher._from_config(DeiTConfig(**sizes), attn_implementation="sdpa")
    if row == "hf_vit":
        return ViTForImageClassification._from_config(ViTConfig(**sizes), attn_implementation="sdpa")
    overrides = {
        "dearkd": {},
        "dearkd_eager": {},
        "dearkd_attn_drop": {"attention_probs_dropout_prob": 0.1},
        "dearkd_no_mhca": {"mhca_layers": []},
    }[row]
    implementation = "eager" if row == "dearkd_eager" else "sdpa"
    config = DearKDViTConfig(**sizes, **overrides)
    return DearKDViTForImageClassification._from_config(config, attn_implementation=implementation)


def make_step(model: torch.nn.Module, mode: str, pixel_values: torch.Tensor, labels: torch.Tensor):
    if mode == "train":
        model.train()

        def step() -> None:
            F.cross_entropy(model(pixel_values=pixel_values).logits, labels).backward()
            model.zero_grad(set_to_none=True)

    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(pixel_values=pixel_values)

    return step


def batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    num_labels = (QUICK_SIZES if args.quick else SIZES)["num_labels"]
    return pixel_values, torch.randint(0, num_labels, (args.batch_size,), generator=generator)


def time_rows(args: argparse.Namespace) -> tuple[dict, dict]:
    """Wall and process-CPU seconds, each {mode: {row: [per repeat]}}, rows interleaved and rotated per repeat."""
    pixel_values, labels = batch(args)
    models = {row: build(row, args) for row in args.rows}
    times: dict[str, dict[str, list[float]]] = {}
    cpu_times: dict[str, dict[str, list[float]]] = {}
    for mode in ("train", "inference"):
        steps = {row: make_step(model, mode, pixel_values, labels) for row, model in models.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times[mode] = {row: [] for row in steps}
        cpu_times[mode] = {row: [] for row in steps}
        for repeat in range(args.repeats):
            shift = repeat % len(args.rows)
            for row in args.rows[shift:] + args.rows[:shift]:
                start, cpu_start = time.perf_counter(), time.process_time()
                steps[row]()
                times[mode][row].append(time.perf_counter() - start)
                cpu_times[mode][row].append(time.process_time() - cpu_start)
            print(f"  {mode} repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
    return times, cpu_times


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def flushes_denormals() -> bool:
    """Whether this thread flushes subnormal floats to zero (`torch.set_flush_denormal(True)`), read by its effect:
    a subnormal times one is zero then."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


def _status_kib(name: str) -> int:
    return int(re.search(rf"^{name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def memory_row(row: str, mode: str, args: argparse.Namespace) -> None:
    """(Run in a fresh process.) Print the RSS growth at one step's peak, in MiB, as JSON."""
    pixel_values, labels = batch(args)
    step = make_step(build(row, args), mode, pixel_values, labels)
    step()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    step()
    print(json.dumps({"peak_rss_delta_mib": (_status_kib("VmHWM") - before) / 1024}))


# Fixed glibc thresholds: blocks of 128 KiB and more are mmapped and go back to the system when freed, so RSS tracks
# the live tensors instead of keeping the warm-up step's freed blocks (which would hide the measured step's peak).
MALLOC_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    flags = ["--batch_size", str(args.batch_size), "--image_size", str(args.image_size)]
    flags += (["--threads", str(args.threads)] if args.threads else []) + (["--quick"] if args.quick else [])
    memory: dict[str, dict[str, float]] = {}
    for mode in ("train", "inference"):
        memory[mode] = {}
        for row in args.rows:
            command = [sys.executable, "-m", "benchmarks.speed.students", "--memory_row", row, mode, *flags]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=MALLOC_ENV)
            memory[mode][row] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_delta_mib"]
    return memory


def summarise(times: dict, cpu_times: dict) -> dict[str, dict[str, dict[str, float]]]:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for mode, rows in times.items():
        reference, cpu = rows[REFERENCE], cpu_times[mode]
        summary[mode] = {
            row: {
                "median_s": statistics.median(values),
                "paired_ratio": paired_ratio(values, reference),
                "ratio_of_medians": statistics.median(values) / statistics.median(reference),
                "min_s": min(values),
                "ratio_of_minima": min(values) / min(reference),
                "cpu_median_s": statistics.median(cpu[row]),
                "cpu_paired_ratio": paired_ratio(cpu[row], cpu[REFERENCE]),
            }
            for row, values in rows.items()
        }
    return summary


def table(result: dict) -> str:
    lines = [
        "| row | train s (median / min) | train ratio (paired / of minima) | train CPU-time ratio (paired) | "
        "train peak RSS Δ MiB | inference s (median / min) | inference ratio (paired / of minima) | "
        "inference CPU-time ratio (paired) | inference peak RSS Δ MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary, memory = result["summary"], result.get("memory") or {}
    for row in summary["train"]:
        cells = [row]
        for mode in ("train", "inference"):
            stats = summary[mode][row]
            peak = memory.get(mode, {}).get(row)
            peak_cell = "-" if peak is None else f"{peak:.0f}"
            times = f"{stats['median_s']:.3f} / {stats['min_s']:.3f}"
            ratios = f"{stats['paired_ratio']:.2f} / {stats['ratio_of_minima']:.2f}"
            cells += [times, ratios, f"{stats['cpu_paired_ratio']:.2f}", peak_cell]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_row:
        memory_row(*args.memory_row, args)
        return None
    load_before = os.getloadavg()
    flush_before = flushes_denormals()
    times, cpu_times = time_rows(args)
    flush_after = flushes_denormals()
    memory = None if args.no_memory else measure_memory(args)
    summary = summarise(times, cpu_times)
    met = None
    if "dearkd" in summary["train"]:
        met = {mode: summary[mode]["dearkd"]["paired_ratio"] <= TARGET for mode in summary}
    result = {
        "command": "python -m benchmarks.speed.students " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: getattr(args, k) for k in ("threads", "batch_size", "image_size", "repeats", "warmup")},
        "sizes": dict(QUICK_SIZES if args.quick else SIZES, patch_size=16),
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpu_model": cpu_model(),
            "flush_denormal_before_after": [flush_before, flush_after],
            "cpu_count": os.cpu_count(),
            "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "target": {"dearkd_paired_ratio_at_most": TARGET, "met": met},
        "times_s": times,
        "cpu_times_s": cpu_times,
        "summary": summary,
        "memory": memory,
        "memory_method": "fresh process per row and mode, glibc mmap/trim thresholds 128 KiB; VmHWM reset after a "
        "warm-up step; VmHWM - VmRSS before the measured step",
    }
    text = table(result)
    env = result["environment"]
    machine = (
        f"CPU: {env['cpu_model']} (process pinned to CPUs {env['cpu_affinity']} of {env['cpu_count']}, "
        f"OMP_NUM_THREADS={env['omp_num_threads']}); flush-to-zero of subnormal floats (torch.set_flush_denormal): "
        f"{'on' if flush_before else 'off'} before the timing, {'on' if flush_after else 'off'} after "
        "(the benchmark never sets it)."
    )
    print(machine)
    print(text)
    output = Path(args.output) if args.output else RESULTS_DIR / "speed_students.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    markdown = [
        "# DearKD students vs transformers' ViT / DeiT of the same size (step time, peak memory)",
        "",
        f"Generated by `{result['command']}`; the JSON next to this file holds every repeat. "
        f"Batch {args.batch_size}, {args.image_size} px, {args.repeats} interleaved repeats, "
        f"{env['torch_threads']} threads, torch {env['torch']}, transformers {env['transformers']}. "
        f"Load average (1/5/15 min) {env['load_average_1_5_15_before']} before, "
        f"{env['load_average_1_5_15_after']} after (shared cores: paired ratios are the fair read).",
        "",
        machine,
        "",
        text,
        "",
        f"Target: `dearkd` paired ratio <= {TARGET} in training and inference: {met}.",
        "",
        "Peak RSS Δ: " + result["memory_method"] + " (see the script's docstring).",
    ]
    output.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    return result


if __name__ == "__main__":
    main()
