"""Resumable writing of generated batches as `datasets` shards, merged into one dataset at the end.

Layout of ``output_dir``::

    output_dir/                      the merged dataset (``datasets.load_from_disk(output_dir)``)
    output_dir/shards/fingerprint.json   teacher + resolved InversionConfig the shards were made with (adi_scale aside)
    output_dir/shards/rounds.json        the rounds: from which batch index on which student (and adi_scale) was used
    output_dir/shards/fast_generator_init.safetensors   (method "fast") the meta-learned generator initialisation
    output_dir/shards/batch-000000/  one saved Dataset per global batch index (full batches), + loss_terms.json

Global batch ``k`` always holds the images of seed ``(seed, k)``, so the shards a run needs are
``range(ceil(num_images / batch_size))``: a re-run skips those already on disk, and a larger ``num_images`` only adds
new indices. Shards are written to a temporary folder and renamed, so a killed run leaves either a whole shard or
none; the merge takes the first ``num_images`` images of the shards in index order.

Rounds (METHOD.md section 5, student-aware rounds): a run with another student, or none, than the last round's
starts a new round at the first batch index after those written, so a dataset grows round by round, each round's
batches made against its own student's disagreement with the teacher. Batch ``k`` depends only on ``(seed, k)`` and
the student of its round, so a killed round re-run with the same arguments ends with the bits of an uninterrupted
one; a run that would have to make an earlier round's missing batches with another student is refused.
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

from ..runs.files import read_json, write_json_atomic
from ..runs.finite_checks import non_finite_error
from ..runs.shards import FINGERPRINT_FILE, SHARDS_DIR, ShardWriter, shard_name
from .deepinversion import DeepInversionGenerator

logger = logging.getLogger(__name__)

LOSS_TERMS_FILE = "loss_terms.json"
# Beside a generated dataset (examples/generate.py): its configuration; run.py reads its presence as "synthetic".
GENERATION_CONFIG_FILE = "generation_config.json"
ROUNDS_FILE = "rounds.json"
# What makes two rounds the same: the student's weights (None: no student) and the competition term's weight.
_ROUND_KEYS = ("student_weights_sha256", "adi_scale")


def inversion_features(id2label: dict[int, str]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=[id2label[i] for i in range(len(id2label))])})


def generation_fingerprint(generator: DeepInversionGenerator) -> dict[str, Any]:
    """What fixes the images of every batch index besides its round's student: the teacher (its weights, not only
    its name: one retrained in place keeps its path), its labels and the resolved configuration but ``adi_scale``,
    which each round records with its student (:func:`read_rounds`)."""
    teacher = generator.teacher
    labels = [teacher.id2label[i] for i in range(teacher.num_labels)]
    config = {key: value for key, value in generator.config.to_dict().items() if key != "adi_scale"}
    return {"teacher": teacher.source, "teacher_weights_sha256": teacher.weights_sha256(), "labels": labels, **config}


def read_rounds(output_dir: str) -> list[dict[str, Any]]:
    """The rounds of a generation run's ``output_dir``, in order: global batches ``first_batch..end_batch-1`` made
    with ``student`` (its source, None for none), ``student_weights_sha256`` and ``adi_scale``. A folder written
    before rounds were recorded holds one round of all its batches, its student unrecorded."""
    shards_dir = os.path.join(output_dir, SHARDS_DIR)
    rounds = read_json(os.path.join(shards_dir, ROUNDS_FILE))
    if rounds is not None:
        return rounds
    fingerprint = read_json(os.path.join(shards_dir, FINGERPRINT_FILE))
    written = ShardWriter(output_dir, {}).written()
    if fingerprint is None or not written:
        return []
    adi_scale = fingerprint.get("adi_scale", 0.0)  # before rounds, part of the fingerprint
    student = "(not recorded)" if adi_scale else None
    return [
        {
            "first_batch": 0,
            "end_batch": written[-1] + 1,
            "student": student,
            "student_weights_sha256": student,
            "adi_scale": adi_scale,
        }
    ]


def plan_rounds(
    rounds: list[dict[str, Any]], identity: dict[str, Any], num_batches: int, written: set[int], output_dir: str
) -> list[dict[str, Any]]:
    """The rounds once a run of ``identity`` (:meth:`DeepInversionGenerator.student_identity`) has made batches
    ``0..num_batches-1``: the last round grows if it is this run's, else a new round starts where it ends (a last
    round with no batch written yet is replaced). Refused, before any synthesis, when a batch this run needs, or one
    of a round that a new round would follow, is missing and belongs to a round of another student."""
    rounds = [dict(r) for r in rounds]
    if rounds and not _same_round(rounds[-1], identity) and not _written_in(rounds[-1], written):
        rounds.pop()  # started (by a run killed before its first batch) with another student: nothing to keep
    last = rounds[-1] if rounds else None
    if last is not None and _same_round(last, identity):
        last["end_batch"] = max(last["end_batch"], num_batches)
    elif num_batches > (last["end_batch"] if last else 0):
        start = last["end_batch"] if last else 0
        _require_written(rounds, identity, range(start), written, output_dir)
        rounds.append({"first_batch": start, "end_batch": num_batches, **identity})
    _require_written(rounds, identity, range(num_batches), written, output_dir)
    return rounds


def _require_written(
    rounds: list[dict[str, Any]], identity: dict[str, Any], indices: range, written: set[int], output_dir: str
) -> None:
    """Fail at the first of ``indices`` missing from the shards whose round is another student's."""
    for index in indices:
        owner = next(r for r in rounds if r["first_batch"] <= index < r["end_batch"])
        if index not in written and not _same_round(owner, identity):
            raise ValueError(
                f"output_dir={output_dir!r}: batch {index} of its round {rounds.index(owner)} (batches "
                f"{owner['first_batch']}-{owner['end_batch'] - 1}, {_round_flags(owner)}) is missing, as a killed run "
                f"leaves it, and this run ({_round_flags(identity)}) would make it with another student. Re-run that "
                f"round's command (--num_images for {owner['end_batch']} batches, those flags) to finish it first, "
                "then extend with this one."
            )


def _written_in(round_: dict[str, Any], written: set[int]) -> bool:
    return any(round_["first_batch"] <= index < round_["end_batch"] for index in written)


def _same_round(round_: dict[str, Any], identity: dict[str, Any]) -> bool:
    return all(round_[key] == identity[key] for key in _ROUND_KEYS)


def _round_flags(round_: dict[str, Any]) -> str:
    if round_["student"] is None:
        return "no --student_model_name_or_path"
    return f"--student_model_name_or_path={round_['student']} --adi_scale={round_['adi_scale']:g}"


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
    size = generator.config.batch_size
    num_batches = math.ceil(num_images / size)
    rounds = plan_rounds(
        read_rounds(output_dir), generator.student_identity(), num_batches, set(writer.written()), output_dir
    )
    state.wait_for_everyone()  # every process has read output_dir before the main one writes to it
    if state.is_main_process:
        writer.prepare()
        write_json_atomic(os.path.join(writer.shards_dir, ROUNDS_FILE), rounds)
        # What every batch shares (the fast method's meta-learned initialisation), with its own progress bar.
        steps = generator.preparation_steps(writer.shards_dir)
        show = progress and steps > 0
        with tqdm(total=steps, desc="Meta-learning the generator's start", unit="step", disable=not show) as bar:
            generator.prepare(writer.shards_dir, callback=_advance(bar, "warm-up"))
    state.wait_for_everyone()
    generator.prepare(writer.shards_dir)  # the other processes load it

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


def mean_loss_terms(output_dir: str, num_batches: int, start: int = 0) -> dict[str, float]:
    """The final loss terms of shards ``start..num_batches-1`` of ``output_dir``, each averaged over the batches
    that have it (the competition term only the rounds with a student)."""
    totals: dict[str, list[float]] = {}
    for index in range(start, num_batches):
        path = os.path.join(output_dir, SHARDS_DIR, shard_name(index), LOSS_TERMS_FILE)
        with open(path, encoding="utf-8") as f:
            for name, value in json.load(f).items():
                totals.setdefault(name, []).append(value)
    return {name: sum(values) / len(values) for name, values in totals.items()}
