#!/usr/bin/env python
"""Summary of tools/gpu_check.sh: versions, each part's status, each GPU test's outcome, the 224-px ratios (speed and
the teacher cache).

    python -m tools.gpu_summary --versions          # one line of versions (the check's first output)
    python -m tools.gpu_summary RESULTS_DIR [--dry-run]

Reads RESULTS_DIR/parts.tsv (name, exit status, seconds per part), tests.xml (pytest's JUnit XML),
speed_224.json and teacher_cache_224.json; writes gpu_check.json and gpu_check.md there, and replaces machine paths
in the logs and the XML by placeholders so the folder can be committed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "timm", "accelerate", "datasets", "safetensors", "huggingface_hub")
TEXT_FILES = ("tests.log", "speed.log", "tests.xml", "profile.log", "teacher_cache.log")


def versions() -> dict[str, Any]:
    """Python, the packages the check uses, and the GPU torch sees (None without CUDA)."""
    found: dict[str, Any] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        found["cuda"] = torch.version.cuda
        found["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    except Exception as error:  # a broken torch is exactly what this line must report
        found["torch_error"] = repr(error)
    return found


def read_parts(results: Path) -> dict[str, dict[str, Any]]:
    parts = {}
    path = results / "parts.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, status, seconds = line.split("\t")
            # timeout(1) exits 124 when it stopped the part at its limit (137 after its kill).
            parts[name] = {"exit_status": int(status), "seconds": int(seconds), "timed_out": status in ("124", "137")}
    return parts


def read_tests(results: Path) -> dict[str, str]:
    """Each test's outcome from pytest's JUnit XML: passed, failed, error or skipped (with the reason)."""
    path = results / "tests.xml"
    if not path.is_file():
        return {}
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = tag if tag != "failure" else "failed"
                if tag == "skipped":
                    outcome += f": {element.get('message', '')}"
                break
        outcomes[name] = outcome
    return outcomes


def read_speed(results: Path) -> dict[str, Any] | None:
    path = results / "speed_224.json"
    if not path.is_file():
        return None
    speed = json.loads(path.read_text())
    if "timings" not in speed:  # a --dry_run writes nothing; anything else is not a speed result
        return None
    return {
        "targets": speed["targets"],
        "paired_ratios": speed["paired_ratios"],
        "median_step_ms": {name: t["median_s"] * 1e3 for name, t in speed["timings"].items()},
        "peak_memory_mib": {name: b / 2**20 for name, b in speed["peak_memory_bytes"].items()},
        "stage2_switch": speed["stage2_switch"],
        "loader": speed.get("loader"),
        "setup": speed["setup"],
    }


def read_teacher_cache(results: Path) -> dict[str, Any] | None:
    """The teacher-cache speed result (benchmarks/speed/teacher_cache.py): its paired ratios, target and build."""
    path = results / "teacher_cache_224.json"
    if not path.is_file():
        return None
    cache = json.loads(path.read_text())
    if "timings" not in cache:
        return None
    return {
        "ratios": {name: cache[name] for name in ("cached_vs_plain", "cached_vs_live", "live_vs_plain")},
        "target": cache["target"],
        "median_step_ms": {name: t["median_s"] * 1e3 for name, t in cache["timings"].items()},
        "build_vs_live_forward_per_image": cache["build"]["build_vs_live_forward_per_image"],
        "teacher": cache["setup"]["teacher"],
        "batch_size": cache["setup"]["batch_size"],
    }


def strip_machine_paths(text: str) -> str:
    """Site-packages and the repository become placeholders; other absolute paths under home/tmp lose their
    folders."""
    text = re.sub(r"/[^\s\"'<>:]*?/(site|dist)-packages/", "<site-packages>/", text)
    text = text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    return re.sub(r"/(?:tmp|root|home|opt|usr|work)(?:/[^\s\"'<>:/]+)+/", "<path>/", text)


def summarise(results: Path, dry_run: bool) -> dict[str, Any]:
    for name in TEXT_FILES:
        path = results / name
        if path.is_file():
            path.write_text(strip_machine_paths(path.read_text(errors="replace")))
    summary = {
        "dry_run": dry_run,
        "versions": versions(),
        "parts": read_parts(results),
        "tests": read_tests(results),
        "speed_224": None if dry_run else read_speed(results),
        "teacher_cache_224": None if dry_run else read_teacher_cache(results),
        "command": "bash tools/gpu_check.sh" + (" --dry-run" if dry_run else ""),
    }
    (results / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "gpu_check.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    v = summary["versions"]
    lines = [
        "# GPU check" + (" (dry run)" if summary["dry_run"] else ""),
        "",
        f"`{summary['command']}` on {', '.join(v.get('gpus') or ['no GPU'])}; "
        + ", ".join(f"{name} {v.get(name)}" for name in ("python", *PACKAGES, "cuda")),
        "",
        "| part | exit status | seconds |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {p['exit_status']} | {p['seconds']} |" for name, p in summary["parts"].items()]
    lines += ["", "| test | outcome |", "| --- | --- |"]
    lines += [f"| {name} | {outcome} |" for name, outcome in summary["tests"].items()]
    speed = summary["speed_224"]
    if speed:
        setup = speed["setup"]
        lines += [
            "",
            f"Speed, `{setup['command']}` (batch {setup['batch_size']}, bf16 {setup['bf16']}, "
            f"{setup['repeats']} repeats):",
            "",
            "| ratio | paired median | target | met |",
            "| --- | --- | --- | --- |",
        ]
        for name, target in speed["targets"].items():
            lines.append(f"| {name} | {target['value']:.3f} | <= {target['max']} | {target['met']} |")
        lines += ["", "| configuration | median step ms | peak MiB |", "| --- | --- | --- |"]
        for name, ms in speed["median_step_ms"].items():
            lines.append(f"| {name} | {ms:.1f} | {speed['peak_memory_mib'][name]:.0f} |")
        loader = speed.get("loader")
        if loader:
            lines += ["", "| loader workers | images/s |", "| --- | --- |"]
            lines += [f"| {w} | {rate:.0f} |" for w, rate in loader["loader_images_per_s"].items()]
            steps = ", ".join(f"{name} {rate:.0f}" for name, rate in loader["training_images_per_s"].items())
            lines += ["", f"Training steps, images/s: {steps}."]
    cache = summary.get("teacher_cache_224")
    if cache:
        target = cache["target"]
        lines += [
            "",
            f"Teacher cache, teacher `{cache['teacher']}`, batch {cache['batch_size']} (paired medians; target "
            f"cached / plain <= {target['cached_vs_plain_at_most']}, met: {target['met']}):",
            "",
            "| ratio | paired median |",
            "| --- | --- |",
        ]
        lines += [f"| {name} | {value:.3f} |" for name, value in cache["ratios"].items()]
        lines += [f"| cache build / live forward, per image | {cache['build_vs_live_forward_per_image']:.2f} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", help="The folder gpu_check.sh wrote.")
    parser.add_argument("--dry-run", action="store_true", help="The check ran with --dry-run.")
    parser.add_argument("--versions", action="store_true", help="Print the versions as one line and stop.")
    args = parser.parse_args(argv)
    if args.versions:
        print("versions:", json.dumps(versions()), flush=True)
        return
    if args.results is None:
        parser.error("RESULTS_DIR is required (or --versions).")
    summary = summarise(Path(args.results), args.dry_run)
    print(markdown(summary))
    failed = [name for name, part in summary["parts"].items() if part["exit_status"] != 0]
    print(f"parts that failed: {failed or 'none'}", file=sys.stderr if failed else sys.stdout)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
