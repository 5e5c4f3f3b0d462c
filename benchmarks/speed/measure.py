"""How the speed benchmark measures: one training step, the teacher's forward alone, interleaved timing, and a
step's peak memory (METHOD of measurement in the package docstring)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from transformers import Trainer

from dearkd_hf.models.teachers import Teacher


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    _sync(device)
    return torch.cuda.memory_allocated(device)


def make_step(trainer: Trainer, device: torch.device):
    model, optimizer = trainer.model, trainer.optimizer

    def step(batch: dict[str, torch.Tensor]) -> None:
        trainer.training_step(model, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)

    return step


def make_teacher_forward(teacher: Teacher, device: torch.device, bf16: bool):
    """The teacher's no-grad forward, under the same autocast as the trainers' steps."""
    module = teacher.module

    def step(batch: dict[str, torch.Tensor]) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            module(batch["pixel_values"])
        _sync(device)

    return step


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def resident_bytes(trainer: Trainer | None, teacher: Teacher | None) -> int:
    """Tensors a configuration keeps between steps: its model (with aligners), optimizer state and teacher."""
    tensors = []
    if trainer is not None:
        tensors += list(trainer.model.parameters()) + list(trainer.model.buffers())
        for state in trainer.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    if teacher is not None:
        tensors += list(teacher.module.parameters()) + list(teacher.module.buffers())
    return tensor_bytes(tensors)


def step_peak_bytes(step, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """Peak bytes allocated during one step above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(batch)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(batch)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def time_steps(
    steps: dict[str, Any], batches: list, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved timing: each repeat runs every configuration once on the same batch, in a rotating order.

    Returns wall-clock and process CPU times per configuration, one entry per timed repeat.
    """
    names = list(steps)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        batch = batches[r % len(batches)]
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name](batch)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if r >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
    return wall, cpu


def ratios_of(times: dict[str, list[float]]) -> dict[str, float]:
    """The contract's ratios from medians of step times."""
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "stage1_vs_deit": med["dearkd_s1"] / med["deit_kd"],
        "stage1_vs_limit": med["dearkd_s1"] / (med["plain"] + med["teacher_fwd"]),
        "stage2_vs_plain": med["dearkd_s2"] / med["plain"],
    }


def paired_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """The same ratios as medians over repeats of per-repeat ratios: steps of one repeat run back to back, so
    load from other processes largely cancels."""
    n = len(times["plain"])
    per_repeat = [ratios_of({name: [t[i]] for name, t in times.items()}) for i in range(n)]
    return {key: statistics.median(r[key] for r in per_repeat) for key in per_repeat[0]}


def summarise(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2], "min_s": min(times), "n": len(times)}


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repeats of one configuration's time over another's in the same repeat (load cancels)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def paired_ratio_quartiles(numerator: list[float], denominator: list[float]) -> list[float]:
    """The first and third quartiles of the per-repeat ratios of :func:`paired_ratio`: their spread."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return [q[0], q[2]]
