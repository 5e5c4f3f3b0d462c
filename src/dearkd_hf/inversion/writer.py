"""Resumable writing of generated batches as `datasets` shards, merged into one dataset at the end.

Layout of ``output_dir``::

    output_dir/                      the merged dataset (``datasets.load_from_disk(output_dir)``)
    output_dir/shards/fingerprint.json   teacher + resolved InversionConfig the shards were made with
    output_dir/shards/fast_generator_init.safetensors   (method "fast") the meta-learned generator initialisation
    output_dir/shards/batch-000000/  one saved Dataset per global batch index (full batches), + loss_terms.json

Global batch ``k`` always holds the images of seed ``(seed, k)``, so the shards a run needs are
``range(ceil(num_images / batch_size))``: a re-run skips those already on disk, and a larger ``num_images`` only adds
new indices. Shards are written to a temporary folder and renamed, so a killed run leaves either a whole shard or
none; the merge takes the first ``num_images`` images of the shards in index order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from accelerate import PartialState
from datasets import ClassLabel, Dataset, Features, Image, concatenate_datasets, load_from_disk
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from tqdm.auto import tqdm

from ..finite import non_finite_error
from ..output_folder import LOCK_FILE
from .deepinversion import DeepInversionGenerator, InversionBatch

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"
FINGERPRINT_FILE = "fingerprint.json"
LOSS_TERMS_FILE = "loss_terms.json"
# Beside a generated dataset (examples/generate.py): its configuration; run.py reads its presence as "synthetic".
GENERATION_CONFIG_FILE = "generation_config.json"
_TMP_PREFIX = ".tmp-"
# The merged dataset's files as Dataset.save_to_disk writes them; state.json is moved in last.
_STATE_FILE = "state.json"


def inversion_features(id2label: dict[int, str]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=[id2label[i] for i in range(len(id2label))])})


class ShardWriter:
    """Owns ``output_dir``: refuses one made with another configuration, writes shards, merges them."""

    def __init__(self, output_dir: str, fingerprint: dict[str, Any], features: Features) -> None:
        self.output_dir = output_dir
        self.shards_dir = os.path.join(output_dir, SHARDS_DIR)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it will read back from JSON
        self.features = features

    def check_fingerprint(self) -> None:
        """Fail if ``output_dir`` holds images made with another teacher or configuration."""
        path = os.path.join(self.shards_dir, FINGERPRINT_FILE)
        if not os.path.isfile(path):
            present = set(os.listdir(self.output_dir)) if os.path.isdir(self.output_dir) else set()
            foreign = present - {SHARDS_DIR, LOCK_FILE}
            if foreign:
                raise ValueError(
                    f"output_dir={self.output_dir!r} is not empty and holds no generation run; use another folder."
                )
            return
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        saved.setdefault("method", "deepinversion")  # folders written before there was a choice of method
        if "teacher_weights_sha256" not in saved:  # folders written before the teacher's weights were recorded
            logger.warning(f"{path} does not record the teacher's weights: a teacher changed in place goes unseen.")
            saved["teacher_weights_sha256"] = self.fingerprint.get("teacher_weights_sha256")
        differences = {
            key: (saved.get(key), self.fingerprint.get(key))
            for key in sorted(saved.keys() | self.fingerprint.keys())
            if saved.get(key) != self.fingerprint.get(key)
        }
        if differences:
            details = ", ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in differences.items())
            raise ValueError(
                f"output_dir={self.output_dir!r} holds images generated with a different configuration ({details}). "
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
            _write_json_atomic(path, self.fingerprint)

    def shard_path(self, index: int) -> str:
        return os.path.join(self.shards_dir, _shard_name(index))

    def is_written(self, index: int) -> bool:
        return os.path.isdir(self.shard_path(index))

    def write(self, index: int, batch: InversionBatch) -> None:
        tmp = os.path.join(self.shards_dir, f"{_TMP_PREFIX}{index:06d}-{uuid.uuid4().hex}")
        dataset = Dataset.from_dict({"image": batch.images, "label": batch.labels}, features=self.features)
        with _quiet_datasets():  # one "Saving the dataset" bar per shard would bury the generation bar
            dataset.save_to_disk(tmp)
        with open(os.path.join(tmp, LOSS_TERMS_FILE), "w", encoding="utf-8") as f:
            json.dump(batch.loss_terms, f)
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


def generation_fingerprint(generator: DeepInversionGenerator) -> dict[str, Any]:
    """What fixes the images of every batch index: the teacher (its weights, not only its name: one retrained in
    place keeps its path), its labels and the resolved configuration."""
    teacher = generator.teacher
    labels = [teacher.id2label[i] for i in range(teacher.num_labels)]
    return {
        "teacher": teacher.source,
        "teacher_weights_sha256": teacher.weights_sha256(),
        "labels": labels,
        **generator.config.to_dict(),
    }


def write_dataset(
    generator: DeepInversionGenerator,
    output_dir: str,
    num_images: int,
    state: PartialState | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> Dataset | None:
    """Generate the missing batches of a ``num_images`` dataset into ``output_dir`` and merge them.

    Under ``accelerate launch`` process ``rank`` takes the batch indices with ``index % num_processes == rank``;
    the main process merges once all are done. Pass the script's ``state``: on a machine without GPUs it must be
    ``PartialState(cpu=True)`` for the processes to see each other. ``max_batches`` (a debugging knob) stops each
    process after that many new batches and returns None without merging, as if killed.
    """
    if num_images <= 0:
        raise ValueError(f"num_images={num_images} must be > 0.")
    state = state or PartialState()
    writer = ShardWriter(output_dir, generation_fingerprint(generator), inversion_features(generator.teacher.id2label))
    writer.check_fingerprint()
    state.wait_for_everyone()  # every process has read output_dir before the main one writes to it
    if state.is_main_process:
        writer.prepare()
        # What every batch shares (the fast method's meta-learned initialisation), with its own progress bar.
        steps = generator.preparation_steps(writer.shards_dir)
        show = progress and steps > 0
        with tqdm(total=steps, desc="Meta-learning the generator's start", unit="step", disable=not show) as bar:
            generator.prepare(writer.shards_dir, callback=_advance(bar, "warm-up"))
    state.wait_for_everyone()
    generator.prepare(writer.shards_dir)  # the other processes load it

    size = generator.config.batch_size
    num_batches = math.ceil(num_images / size)
    todo = [
        index
        for index in range(num_batches)
        if index % state.num_processes == state.process_index and not writer.is_written(index)
    ]
    if max_batches is not None:
        todo = todo[:max_batches]
    _generate_shards(generator, writer, todo, progress and state.is_local_main_process)
    state.wait_for_everyone()
    if max_batches is not None:
        return None
    dataset = writer.merge(num_images, num_batches) if state.is_main_process else None
    state.wait_for_everyone()
    return dataset if dataset is not None else load_from_disk(output_dir)


def _generate_shards(
    generator: DeepInversionGenerator, writer: ShardWriter, indices: list[int], progress: bool
) -> None:
    """Each batch of ``indices``, generated and written; the bar moves at every optimisation step."""
    total = len(indices) * generator.steps_per_batch
    with tqdm(total=total, desc=f"Generating {len(indices)} batches", unit="step", disable=not progress) as bar:
        for index in indices:
            labels, seed = generator.batch_labels(index), generator.batch_seed(index)
            batch = generator.generate_batch(labels, seed, callback=_advance(bar, f"batch {index}"))
            _check_finite(index, batch.loss_terms)
            writer.write(index, batch)


def _check_finite(index: int, loss_terms: dict[str, float]) -> None:
    """Stop at a batch whose loss is not finite, before it is written (its images would be noise or NaN)."""
    if all(math.isfinite(value) for value in loss_terms.values()):
        return
    raise non_finite_error(
        f"Generation batch {index}",
        loss_terms.get("total", float("nan")),
        loss_terms,
        "Generation stopped; the batches written before it are kept and a re-run resumes from them. Lower --lr (or "
        "--fast_lr) or the loss weights (--r_bn, --bpid_weight, --adi_scale), or check the teacher on real images.",
    )


def _advance(bar: tqdm, what: str):
    """A step callback that moves ``bar`` by one step and shows what is being optimised and its loss."""

    def advance(step: int, loss: float) -> None:
        bar.set_postfix_str(f"{what}, loss {loss:.4f}", refresh=False)
        bar.update(1)

    return advance


def mean_loss_terms(output_dir: str, num_batches: int) -> dict[str, float]:
    """The final loss terms of shards ``0..num_batches-1`` of ``output_dir``, averaged over the batches."""
    totals: dict[str, float] = {}
    for index in range(num_batches):
        path = os.path.join(output_dir, SHARDS_DIR, _shard_name(index), LOSS_TERMS_FILE)
        with open(path, encoding="utf-8") as f:
            for name, value in json.load(f).items():
                totals[name] = totals.get(name, 0.0) + value
    return {name: value / num_batches for name, value in totals.items()}


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


def _shard_name(index: int) -> str:
    return f"batch-{index:06d}"


def _saved_dataset_files(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if name == "dataset_info.json" or name.endswith(".arrow")]


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
