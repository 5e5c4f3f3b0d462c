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
from typing import Any

from accelerate import PartialState
from datasets import ClassLabel, Dataset, Features, Image, load_from_disk
from tqdm.auto import tqdm

from ..runs.finite_checks import non_finite_error
from ..runs.shards import SHARDS_DIR, ShardWriter, shard_name
from .deepinversion import DeepInversionGenerator

logger = logging.getLogger(__name__)

LOSS_TERMS_FILE = "loss_terms.json"
# Beside a generated dataset (examples/generate.py): its configuration; run.py reads its presence as "synthetic".
GENERATION_CONFIG_FILE = "generation_config.json"


def inversion_features(id2label: dict[int, str]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=[id2label[i] for i in range(len(id2label))])})


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
    writer = ShardWriter(output_dir, generation_fingerprint(generator))
    features = inversion_features(generator.teacher.id2label)
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
    _generate_shards(generator, writer, features, todo, progress and state.is_local_main_process)
    state.wait_for_everyone()
    if max_batches is not None:
        return None
    dataset = writer.merge(num_images, num_batches) if state.is_main_process else None
    state.wait_for_everyone()
    return dataset if dataset is not None else load_from_disk(output_dir)


def _generate_shards(
    generator: DeepInversionGenerator, writer: ShardWriter, features: Features, indices: list[int], progress: bool
) -> None:
    """Each batch of ``indices``, generated and written; the bar moves at every optimisation step."""
    total = len(indices) * generator.steps_per_batch
    with tqdm(total=total, desc=f"Generating {len(indices)} batches", unit="step", disable=not progress) as bar:
        for index in indices:
            labels, seed = generator.batch_labels(index), generator.batch_seed(index)
            batch = generator.generate_batch(labels, seed, callback=_advance(bar, f"batch {index}"))
            _check_finite(index, batch.loss_terms)
            dataset = Dataset.from_dict({"image": batch.images, "label": batch.labels}, features=features)
            writer.write(index, dataset, {LOSS_TERMS_FILE: batch.loss_terms})


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
        path = os.path.join(output_dir, SHARDS_DIR, shard_name(index), LOSS_TERMS_FILE)
        with open(path, encoding="utf-8") as f:
            for name, value in json.load(f).items():
                totals[name] = totals.get(name, 0.0) + value
    return {name: value / num_batches for name, value in totals.items()}
