"""Resumable writing of a dataset in numbered shards (``datasets`` folders), shared by the data-free generator and the
teacher cache.

Layout of ``output_dir``::

    output_dir/shards/fingerprint.json   what the shards were made with; a run with other settings is refused
    output_dir/shards/batch-000000/      one saved Dataset per shard index (+ any JSON files written beside it)

Shards are written to a temporary folder and renamed, so a killed run leaves either a whole shard or none, and a
re-run with the same settings skips those already on disk. ``merge`` saves shards ``0..n-1`` as one dataset in
``output_dir`` itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from .files import write_json_atomic
from .lock import LOCK_FILE

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"
FINGERPRINT_FILE = "fingerprint.json"
_TMP_PREFIX = ".tmp-"
# The merged dataset's files as Dataset.save_to_disk writes them; state.json is moved in last.
_STATE_FILE = "state.json"


class ShardWriter:
    """Owns ``output_dir``: refuses one made with another configuration, writes shards, merges them."""

    def __init__(self, output_dir: str, fingerprint: dict[str, Any], kind: str = "generation") -> None:
        self.output_dir = output_dir
        self.shards_dir = os.path.join(output_dir, SHARDS_DIR)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it will read back from JSON
        self.kind = kind  # for messages: "holds no <kind> run", "holds a <kind> run with a different configuration"

    def check_fingerprint(self) -> None:
        """Fail if ``output_dir`` holds images made with another teacher or configuration."""
        path = os.path.join(self.shards_dir, FINGERPRINT_FILE)
        if not os.path.isfile(path):
            present = set(os.listdir(self.output_dir)) if os.path.isdir(self.output_dir) else set()
            foreign = present - {SHARDS_DIR, LOCK_FILE}
            if foreign:
                raise ValueError(
                    f"output_dir={self.output_dir!r} is not empty and holds no {self.kind} run; use another folder."
                )
            return
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if self.kind == "generation":  # folders of generation runs written before these were recorded
            saved.setdefault("method", "deepinversion")  # folders written before there was a choice of method
            saved.pop("adi_scale", None)  # folders written before each round recorded its own (inversion/writer.py)
            if "teacher_weights_sha256" not in saved:  # folders written before the teacher's weights were recorded
                logger.warning(
                    f"{path} does not record the teacher's weights: a teacher changed in place goes unseen."
                )
                saved["teacher_weights_sha256"] = self.fingerprint.get("teacher_weights_sha256")
        differences = {
            key: (saved.get(key), self.fingerprint.get(key))
            for key in sorted(saved.keys() | self.fingerprint.keys())
            if saved.get(key) != self.fingerprint.get(key)
        }
        if differences:
            details = ", ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in differences.items())
            raise ValueError(
                f"output_dir={self.output_dir!r} holds a {self.kind} run with a different configuration ({details}). "
                "Use another output_dir, or the same arguments to resume or extend that run."
            )

    def prepare(self) -> None:
        """Record the fingerprint and drop half-written shards of a killed run (main process, before generating)."""
        os.makedirs(self.shards_dir, exist_ok=True)
        for folder in (self.shards_dir, self.output_dir):
            for name in os.listdir(folder):
                if name.startswith(_TMP_PREFIX):
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        path = os.path.join(self.shards_dir, FINGERPRINT_FILE)
        if not os.path.isfile(path):
            write_json_atomic(path, self.fingerprint)

    def shard_path(self, index: int) -> str:
        return os.path.join(self.shards_dir, shard_name(index))

    def is_written(self, index: int) -> bool:
        return os.path.isdir(self.shard_path(index))

    def written(self) -> list[int]:
        """The indices of the shards on disk, in order."""
        if not os.path.isdir(self.shards_dir):
            return []
        prefix = shard_name(0)[: -len(f"{0:06d}")]
        return sorted(int(name[len(prefix) :]) for name in os.listdir(self.shards_dir) if name.startswith(prefix))

    def write(self, index: int, dataset: Dataset, extra_files: dict[str, dict[str, Any]] | None = None) -> None:
        """Write shard ``index``: ``dataset`` and, beside it, each of ``extra_files`` as JSON (e.g. loss terms)."""
        tmp = os.path.join(self.shards_dir, f"{_TMP_PREFIX}{index:06d}-{uuid.uuid4().hex}")
        with _quiet_datasets():  # one "Saving the dataset" bar per shard would bury the progress bar
            dataset.save_to_disk(tmp)
        for name, payload in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(payload, f)
        try:
            os.rename(tmp, self.shard_path(index))
        except OSError:
            if not self.is_written(index):
                raise
            shutil.rmtree(tmp)  # another process wrote this (deterministic) batch first: keep one copy

    def merge(self, num_images: int, num_batches: int) -> Dataset:
        """Save the first ``num_images`` images of shards ``0..num_batches-1`` as the dataset in ``output_dir``."""
        missing = [index for index in range(num_batches) if not self.is_written(index)]
        if missing:
            raise RuntimeError(
                f"{len(missing)} shard(s) missing in {self.shards_dir!r} (first: {missing[0]}); re-run with the same "
                "arguments to generate them."
            )
        shards = [load_from_disk(self.shard_path(index)) for index in range(num_batches)]
        merged = concatenate_datasets(shards).select(range(num_images))
        self._save_merged(merged)
        return load_from_disk(self.output_dir)

    def _save_merged(self, dataset: Dataset) -> None:
        """Replace the merged dataset so that it is loadable only once complete (state.json is moved in last)."""
        tmp = os.path.join(self.output_dir, f"{_TMP_PREFIX}merged-{uuid.uuid4().hex}")
        dataset.save_to_disk(tmp)
        for name in [_STATE_FILE, *_saved_dataset_files(self.output_dir)]:
            path = os.path.join(self.output_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        for name in sorted(os.listdir(tmp), key=lambda name: name == _STATE_FILE):
            os.replace(os.path.join(tmp, name), os.path.join(self.output_dir, name))
        os.rmdir(tmp)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    if are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def shard_name(index: int) -> str:
    return f"batch-{index:06d}"


def _saved_dataset_files(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if name == "dataset_info.json" or name.endswith(".arrow")]
