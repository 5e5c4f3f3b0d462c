#!/usr/bin/env python
"""Where a DearKD stage-1 step spends its time beyond DeiT KD's: torch.profiler on one step of each, side by side.

Builds the trainers of the speed benchmark (`python -m benchmarks.speed`: same presets and flags, e.g. `--preset
deit_tiny_224`), warms them up, profiles `--steps` steps of `deit_kd` and `dearkd_s1` and prints, per operator, the
time each spends (device time on CUDA, self CPU time on CPU) and the difference, largest first, with the number of
calls. Also the step's wall time and
its total device (or CPU) operator time, which tell whether the step is bound by the device or by launching work.

    python -m tools.profile_step --preset deit_tiny_224 --device cuda --profile_output profile_224.txt
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import speed

CONFIGS = ("deit_kd", "dearkd_s1")


def op_times(prof, device_type: str) -> dict[str, tuple[float, int]]:
    """Per operator: total self time in ms on the device (CUDA) or CPU, and the call count."""
    rows = {}
    for event in prof.key_averages():
        if device_type == "cuda":
            spent = getattr(event, "self_device_time_total", None)
            if spent is None:
                spent = event.self_cuda_time_total
        else:
            spent = event.self_cpu_time_total
        rows[event.key] = (spent / 1e3, event.count)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="Profiled steps per configuration.")
    parser.add_argument("--top", type=int, default=30, help="Operators listed.")
    parser.add_argument("--profile_output", default=None, help="Also write the report to this file.")
    own, rest = parser.parse_known_args(argv)
    args = speed.parse_args(rest)
    if args.dry_run:
        print(f"would profile {CONFIGS} with {vars(args)}")
        return ""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches, num_labels = speed.make_batches(args, device)
    teacher = speed.make_teacher(args, num_labels)
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as output_dir, contextlib.redirect_stdout(out):
        trainers = speed.build_trainers(args, teacher, num_labels, output_dir)
        steps = {name: speed.make_step(trainers[name], device) for name in CONFIGS}
        for r in range(args.warmup + 3):
            for step in steps.values():
                step(batches[r % len(batches)])
        wall, tables, totals = {}, {}, {}
        for name, step in steps.items():
            times = []
            for r in range(max(args.repeats, 5)):
                start = time.perf_counter()
                step(batches[r % len(batches)])
                times.append(time.perf_counter() - start)
            wall[name] = statistics.median(times) * 1e3
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                for r in range(own.steps):
                    step(batches[r % len(batches)])
            tables[name] = {k: (ms / own.steps, n // own.steps) for k, (ms, n) in op_times(prof, device.type).items()}
            totals[name] = sum(ms for k, (ms, _) in tables[name].items() if not k.startswith("ProfilerStep"))

    unit = "device" if device.type == "cuda" else "self CPU"
    command = speed.portable_command(argv if argv is not None else sys.argv[1:], "python -m tools.profile_step")
    lines = [f"command: {' '.join(command)}"]
    lines += [
        f"{name}: wall {wall[name]:.1f} ms/step (median), {unit} operator time {totals[name]:.1f} ms/step"
        for name in CONFIGS
    ]
    lines.append(f"\n{'operator':<58} {'deit_kd ms':>10} {'s1 ms':>8} {'delta':>8} {'calls d/s1':>11}")
    a, b = tables[CONFIGS[0]], tables[CONFIGS[1]]
    keys = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, (0, 0))[0] - a.get(k, (0, 0))[0]))
    for key in keys[: own.top]:
        (ta, na), (tb, nb) = a.get(key, (0.0, 0)), b.get(key, (0.0, 0))
        lines.append(f"{key[:58]:<58} {ta:>10.3f} {tb:>8.3f} {tb - ta:>+8.3f} {na:>5}/{nb:<5}")
    report = "\n".join(lines) + "\n"
    print(report)
    if own.profile_output:
        Path(own.profile_output).write_text(report)
    return report


if __name__ == "__main__":
    main()
