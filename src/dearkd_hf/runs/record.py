"""The run record: ``dearkd_run.json``, the fingerprint of the run whose checkpoints an output folder holds (what a
checkpoint means: model, teacher, knobs, schedule, data). A re-run whose fingerprint differs is refused with the fields
that differ (:func:`check_run_record`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from .files import read_json, write_json_atomic

RUN_FILE = "dearkd_run.json"


def read_run_record(output_dir: str) -> dict | None:
    """The fingerprint saved in ``output_dir`` (None when there is none)."""
    record = read_json(os.path.join(output_dir, RUN_FILE))
    return record if isinstance(record, dict) else None


def write_run_record(output_dir: str, fingerprint: Mapping[str, Any]) -> None:
    """Save ``fingerprint`` as ``output_dir/dearkd_run.json`` (a temporary file renamed into place)."""
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomic(os.path.join(output_dir, RUN_FILE), fingerprint, sort_keys=True)


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, int keys strings, other objects their str)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def run_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"field (X there, Y now)"`` for each leaf of two nested fingerprints that differs."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += run_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key} ({_short(old)} there, {_short(new)} now)")
    return differences


def check_run_record(
    output_dir: str, fingerprint: Mapping[str, Any], flag: str = "--output_dir", afresh: str = ""
) -> None:
    """Refuse to train into ``output_dir`` when it holds checkpoints or a model of a run made with other settings.
    ``afresh``: how to start afresh in that folder (the error says it)."""
    saved = read_run_record(output_dir)
    differences = None if saved is None else differences_text(saved, fingerprint)
    if differences:
        raise ValueError(
            f"{flag} {output_dir} holds a run made with other settings ({differences}). "
            f"Re-run with that run's settings (see {RUN_FILE}) to resume it, or train into a new {flag} "
            f"({afresh or f'or delete its checkpoint-* folders and {RUN_FILE}'} to start afresh there)."
        )


def differences_text(saved: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> str | None:
    """``"N differ: field (X there, Y now); ..."`` (at most eight fields named) between a saved record and a run's
    fingerprint, or None when they agree: what a refusal to resume says."""
    differences = run_differences(saved, as_json(fingerprint))
    if not differences:
        return None
    shown = "; ".join(differences[:8]) + ("; ..." if len(differences) > 8 else "")
    return f"{len(differences)} differ: {shown}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if value is not None else "absent"
    return text if len(text) <= 60 else text[:57] + "..."
