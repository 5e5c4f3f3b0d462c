"""What every benchmark shares: its results file, its worker processes, and mean ± std over seeds.

- :class:`Results`: a benchmark's JSON results file, ``{"config": {...}, "<table>": [record, ...], ...}`` (most
  benchmarks have one table, ``rows``). A benchmark subclasses it to name its tables and how a record is keyed
  (``KEYS``). The file is rewritten whole and atomically after each record, so a killed run loses at most the record
  in progress; records made with another configuration are never mixed in.
- :func:`run_workers`: the benchmark once per group of units (seeds, or the benchmark's own units), in parallel, each
  process with its own results file and log; their records are folded in at the end, and a re-run folds in what the
  workers of a killed run finished.
- :func:`mean_std` and :func:`format_mean_std`: the spread over seeds and how the tables print it.

The environment the benchmarks run in (offline, no progress bars) is set by the package itself
(``benchmarks/__init__.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from dearkd_hf.runs.files import read_json, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

Key = Callable[[dict[str, Any]], tuple]


def fields(*names: str) -> Key:
    """A record's key made of its values of ``names``, in that order."""
    return lambda record: tuple(record[name] for name in names)


# ---- the results file ----


class Results:
    """A benchmark's JSON results file: its configuration and one list of records per table of ``KEYS``.

    ``KEYS`` maps each table to the function that keys its records; a record added under a key the table already
    holds replaces the old one. ``overwrite`` discards what the file holds; otherwise a file made with another
    configuration is refused (SystemExit), so rows of different configurations never meet.
    """

    KEYS: ClassVar[dict[str, Key]] = {"rows": fields("method", "seed")}

    def __init__(self, path: str | Path, config: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        self.config = config
        self.tables: dict[str, list[dict[str, Any]]] = {table: [] for table in self.KEYS}
        if self.path.is_file() and not overwrite:
            saved = self._read(self.path, "pass --overwrite to start it again")
            if saved.get("config") != config:
                raise SystemExit(
                    f"{self.path} holds rows made with another configuration ({saved.get('config')}); pass "
                    "--overwrite to discard them, or another --results_dir."
                )
            self.tables = {table: list(saved.get(table, [])) for table in self.KEYS}

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The ``rows`` table."""
        return self.tables["rows"]

    def key(self, record: dict[str, Any], table: str = "rows") -> tuple:
        return self.KEYS[table](record)

    def get(self, key: tuple, table: str = "rows") -> dict[str, Any] | None:
        """The record of ``table`` under ``key``, or None."""
        return next((record for record in self.tables[table] if self.key(record, table) == key), None)

    def has(self, *key: Any, table: str = "rows") -> bool:
        return self.get(key, table) is not None

    def add(self, record: dict[str, Any], table: str = "rows") -> None:
        """Add ``record`` (replacing the one under its key, if any) and rewrite the file."""
        self._put(record, table)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(str(self.path), {"config": self.config, **self.tables})

    def merge(self, path: str | Path, label: str | None = None) -> int:
        """Add the records of another results file (another worker's) that this one lacks, then rewrite the file if
        any were added; returns how many. A file of another configuration is refused (SystemExit; ``label`` names
        it in the message, default its path)."""
        saved = self._read(Path(path), "it cannot be merged")
        if saved.get("config") != self.config:
            raise SystemExit(f"{label or path}: made with another configuration; it cannot be merged.")
        return self._merge(saved)

    def _merge(self, saved: dict[str, Any]) -> int:
        added = 0
        for table in self.KEYS:
            for record in saved.get(table, []):
                if self.get(self.key(record, table), table) is None:
                    self._put(record, table)
                    added += 1
        if added:
            self.save()
        return added

    def _put(self, record: dict[str, Any], table: str) -> None:
        key = self.key(record, table)
        self.tables[table] = [r for r in self.tables[table] if self.key(r, table) != key] + [record]

    @staticmethod
    def _read(path: Path, advice: str) -> dict[str, Any]:
        saved = read_json(str(path))
        if not isinstance(saved, dict):
            raise SystemExit(f"{path} is not a readable results file; {advice}.")
        return saved


# ---- worker processes ----


def workers_dir(work_dir: str | Path, results: Results) -> Path:
    """Where the workers of ``results`` keep their results files and logs: ``<work_dir>/workers/<results folder
    name>/``, so runs that share a work dir (its teachers) but not their results folder never meet."""
    return Path(work_dir) / "workers" / results.path.parent.name


def worker_files(folder: Path, results: Results) -> list[Path]:
    """The workers' results files under ``folder`` (one subfolder per worker, in any grouping)."""
    return sorted(folder.glob(f"*/{results.path.name}"))


def fold_in_workers(results: Results, folder: Path) -> int:
    """Add what the workers' results files under ``folder`` hold and ``results`` lacks (e.g. the rows the workers of
    a killed run finished, in whatever grouping); files of another configuration are left out. Returns how many."""
    added = 0
    for path in worker_files(folder, results):
        saved = read_json(str(path))
        if isinstance(saved, dict) and saved.get("config") == results.config:
            added += results._merge(saved)
    return added


def seed_of(record: dict[str, Any]) -> Any:
    return record["seed"]


def run_workers(
    args: argparse.Namespace,
    argv: list[str],
    results: Results,
    module: str,
    units: list[Any] | None = None,
    flag: str = "--seeds",
    unit_of: Callable[[dict[str, Any]], Any] = seed_of,
) -> None:
    """``python -m <module> <argv> --workers=1 --results_dir=<its folder> <flag> <its units>`` once per group of
    ``units`` (default ``args.seeds``, dealt round-robin to ``args.workers`` processes), in parallel from the
    repository root; each writes its own results file and log (``<name>.log``, name e.g. ``seeds-0-2``) under
    :func:`workers_dir`. Their records are then folded into ``results``.

    ``args`` holds ``work_dir``, ``workers``, ``overwrite`` and (by default) ``seeds``; ``unit_of`` gives the unit a
    record belongs to (default its seed), in every table. Before the workers start, what the workers of an earlier,
    killed run finished (in any grouping) is folded in, and each worker's file is written afresh with the records of
    its units, so that it skips them. ``--overwrite`` is handled here, once, and not passed on: a fresh start, in
    which the earlier workers' files are removed rather than folded in. A failed worker's finished records are kept;
    then SystemExit names the failed logs.
    """
    units = list(args.seeds if units is None else units)
    groups = [units[i :: args.workers] for i in range(min(args.workers, len(units)))]
    folder = workers_dir(args.work_dir, results)
    folder.mkdir(parents=True, exist_ok=True)
    if args.overwrite:
        for path in worker_files(folder, results):
            path.unlink()
    else:
        fold_in_workers(results, folder)
    passed = [arg for arg in argv if arg != "--overwrite"]
    jobs = []
    for group in groups:
        name = flag.lstrip("-") + "-" + "-".join(str(unit).replace(":", "") for unit in group)
        own = type(results)(folder / name / results.path.name, results.config, overwrite=True)
        for table, records in results.tables.items():
            own.tables[table] = [record for record in records if unit_of(record) in group]
        own.save()
        command = [*passed, "--workers=1", f"--results_dir={own.path.parent}", flag, *map(str, group)]
        jobs.append((name, command, own.path))
    failed = run_processes(module, [(name, command) for name, command, _ in jobs], folder)
    for *_, path in jobs:
        if path.is_file():
            results.merge(path)
    if failed:
        raise SystemExit(f"workers failed (their finished rows are kept); see {', '.join(failed)}")


def run_processes(module: str, jobs: list[tuple[str, list[str]]], folder: Path) -> list[str]:
    """``python -m <module> <args>`` for each (name, args) of ``jobs``, in parallel from the repository root, each
    logging to ``<folder>/<name>.log``; waits for all and returns the logs of those that failed."""
    running = []
    for name, command in jobs:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115 (closed below, after the process ends)
        print(f"worker {name}: log in {log.name}", flush=True)
        process = subprocess.Popen(
            [sys.executable, "-m", module, *command], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        running.append((process, log))
    failed = []
    for process, log in running:
        if process.wait() != 0:
            failed.append(log.name)
        log.close()
    return failed


# ---- statistics over seeds ----


def train_resumable(main: Callable[[list[str]], dict[str, Any]], argv: list[str], folder: Path) -> dict[str, Any]:
    """A teacher trained by ``main`` (train_teacher.py's) into ``folder`` with a checkpoint each epoch, so a killed run
    continues from its last one to the same weights (train_teacher.py resumes from its folder); a killed run's
    leftovers with no checkpoint are cleared first. Its metrics are written to ``folder/DONE`` and returned."""
    if not any(folder.glob("checkpoint-*")):
        shutil.rmtree(folder, ignore_errors=True)
    metrics = main([*argv, "--save_strategy=epoch", "--save_total_limit=1"])  # the last --save_strategy wins
    (folder / "DONE").write_text(json.dumps(metrics))
    return metrics


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of ``values``: the sample standard deviation, NaN for a single value (no spread)."""
    values = list(values)
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else math.nan,
        "n": len(values),
    }


def format_mean_std(stats: Mapping[str, float], signed: bool = False, scale: float = 1.0) -> str:
    """``"mean ± std"`` with two decimals, both times ``scale`` (100: fractions as percent); the mean alone when
    there is no spread (std NaN); ``signed``: the mean with its sign (``+1.50 ± 0.20``), for differences."""
    mean = f"{scale * stats['mean']:{'+' if signed else ''}.2f}"
    return mean if math.isnan(stats["std"]) else f"{mean} ± {scale * stats['std']:.2f}"
