"""Teacher cache: the teacher's outputs on K stored augmented views of every training image, computed once, so that
stage 1 trains without running, or even loading, the teacher (METHOD.md section 6).

A view is stored as the parameters that replay it (:class:`~dearkd_hf.data.transforms.ReplayableView`: crop box and
flip) beside the teacher's logits on it (full, or the top k) and the alignment targets already pooled to the
student's grid and normalised, in fp16. Layout of a cache folder::

    teacher_cache.json                  what the cache holds (teacher, transform, student grid, data, views); written
                                        last, so a folder without it is not a finished cache
    shards/fingerprint.json             the same settings less the view count, checked on resume and extension
    shards/batch-000000/ ...            view v of images [k*S, (k+1)*S) is shard v * ceil(N / S) + k (S: shard_size)

Views are drawn from ``(seed, image index, view index)`` alone, so a cache extended from 4 to 16 views keeps its first
4 bit for bit, and ``num_views`` smaller than the cache's uses its first views. In training,
:class:`CachedViews` serves view ``(offset(seed, i) + epoch) mod K`` of image ``i`` while the epoch starts before the
distillation stop, rebuilt from its parameters with the teacher's outputs attached, and the live transform after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import (
    Array2D,
    Dataset,
    Features,
    Value,
    concatenate_datasets,
    load_from_disk,
)
from datasets import (
    Sequence as SequenceFeature,
)
from tqdm.auto import tqdm

from .alignment import teacher_feature_channels, teacher_outputs
from .alignment_pairs import AlignmentPair, parse_alignment_pairs
from .data.transforms import ReplayableView, open_image
from .hub.lookup import looks_like_local_path
from .models.teachers import TIMM_LOCAL_PREFIX, Teacher, timm_model_name
from .runs.files import write_json_atomic
from .runs.seeded_batches import items_at
from .runs.shards import SHARDS_DIR, ShardWriter, shard_name

CACHE_FILE = "teacher_cache.json"
CACHE_FORMAT = 1
# A top-k cache fills the classes it did not keep with its smallest stored logit minus this: a probability e^-20
# times that class's, so softmax and KL see the stored classes alone, with finite numbers.
TOP_K_FILL_MARGIN = 20.0
# Images whose bytes enter the training data's digest (evenly spaced), besides the count and every label.
DIGEST_SAMPLES = 64


@dataclasses.dataclass
class CachedTeacher:
    """What a cache records of the teacher that wrote it: what the trainer and the example scripts read of a
    :class:`~dearkd_hf.models.teachers.Teacher` (labels, channels, normalisation, stages, identity), without its
    weights.

    Args:
        source: The teacher's name or folder, as the cache script was given it.
        sha256: The digest of its weights (``Teacher.weights_sha256``).
        id2label: Its classes, in its own order (the cached logits' order).
        mean: Its input normalisation's per-channel mean.
        std: Its input normalisation's per-channel std.
        num_channels: Its input channels.
        stage_names: Its stages (the default alignment pairs' teacher side).
        input_size: The side of the images it was made for, if it says.
    """

    source: str
    sha256: str
    id2label: dict[int, str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_channels: int
    stage_names: list[str]
    input_size: int | None = None
    module: None = None  # no weights: nothing to run, move or release

    @classmethod
    def of(cls, teacher: Teacher) -> CachedTeacher:
        return cls(
            source=teacher.source,
            sha256=teacher.weights_sha256(),
            id2label=dict(teacher.id2label),
            mean=tuple(teacher.mean),
            std=tuple(teacher.std),
            num_channels=teacher.num_channels,
            stage_names=list(teacher.stage_names),
            input_size=teacher.input_size,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CachedTeacher:
        values = dict(values)
        values["id2label"] = {int(k): v for k, v in values["id2label"].items()}
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("module")
        values["id2label"] = {str(k): v for k, v in self.id2label.items()}
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def weights_sha256(self) -> str:
        return self.sha256

    def hookable_layers(self) -> list[str]:
        return list(self.stage_names)

    def to(self, device: Any) -> CachedTeacher:
        return self


def data_digest(dataset: Dataset) -> str:
    """A digest of a training split: its size, every label, and the decoded pixels of :data:`DIGEST_SAMPLES` evenly
    spaced images. Another subset, fraction, seed or order of the data gives another digest, without reading every
    image of a large set."""
    raw = dataset.with_format(None)
    digest = hashlib.sha256(f"{len(raw)}|".encode())
    digest.update(json.dumps(list(raw["label"])).encode())
    count = min(DIGEST_SAMPLES, len(raw))
    for index in sorted({round(i * (len(raw) - 1) / max(count - 1, 1)) for i in range(count)}):
        image = open_image(raw[index]["image"])
        digest.update(f"{index}|{image.mode}|{image.size}|".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def cache_features(num_labels: int, top_k: int, target_shapes: Sequence[tuple[int, int]]) -> Features:
    """The columns of a cache shard: one row per (image, view)."""
    features = {
        "index": Value("int64"),
        "view": Value("int32"),
        "crop": SequenceFeature(Value("int32"), length=4),
        "flip": Value("bool"),
        "logits": SequenceFeature(Value("float16"), length=top_k or num_labels),
    }
    if top_k:
        features["logit_indices"] = SequenceFeature(Value("int32"), length=top_k)
    for j, shape in enumerate(target_shapes):
        features[f"target_{j}"] = Array2D(shape=tuple(shape), dtype="float16")
    return Features(features)


def bytes_per_view(num_labels: int, top_k: int, target_shapes: Sequence[tuple[int, int]]) -> int:
    """Stored bytes of one view: index, view, crop, flip, the logits (and their indices for top-k), the targets."""
    logits = 2 * (top_k or num_labels) + (4 * top_k if top_k else 0)
    return 8 + 4 + 16 + 1 + logits + sum(2 * h * c for h, c in target_shapes)


class TeacherCache:
    """A finished teacher cache, read for training: its settings, and the stored outputs of any (image, view).

    Load one with :meth:`load` (a folder, or a Hub dataset repository). ``num_views`` below the cache's own uses its
    first views (a cache of 16 views serves K = 1, 4 or 16).
    """

    def __init__(self, folder: str, config: dict[str, Any], views: Dataset, num_views: int):
        self.folder = folder
        self.config = config
        self.num_views = num_views
        self._served_fingerprint: str | None = None  # the datasets fingerprint of the last split that passed
        self.teacher = CachedTeacher.from_dict(config["teacher"])
        transform = config["transform"]
        self.view = ReplayableView(
            transform["image_size"], tuple(transform["mean"]), tuple(transform["std"]), transform["num_channels"]
        )
        self.grid = tuple(config["student"]["grid"])
        self.pairs = parse_alignment_pairs(config["student"]["alignment_pairs"])
        self.num_images = config["data"]["num_images"]
        self.top_k = config["logits"]["top_k"]
        self._views = views.with_format("numpy")

    @classmethod
    def load(cls, name_or_path: str, num_views: int | None = None) -> TeacherCache:
        """The cache in a folder written by ``examples/cache_teacher.py``, or in a Hub dataset repository.

        ``num_views``: use the first this many views (default: all of them)."""
        folder = name_or_path
        if not os.path.isdir(folder) and not looks_like_local_path(name_or_path):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(name_or_path, repo_type="dataset")
        config = _read_config(folder)
        if config is None:
            raise ValueError(
                f"teacher_cache={name_or_path!r} holds no finished teacher cache (no {CACHE_FILE}); write one with "
                "examples/cache_teacher.py, or re-run that command to finish it."
            )
        if config.get("format") != CACHE_FORMAT:
            raise ValueError(
                f"teacher_cache={name_or_path!r} was written in cache format {config.get('format')}, this version "
                f"reads format {CACHE_FORMAT}; write the cache again with examples/cache_teacher.py."
            )
        available = config["num_views"]
        num_views = available if num_views is None else num_views
        if not 1 <= num_views <= available:
            raise ValueError(
                f"teacher_cache_views={num_views}: {name_or_path!r} holds {available} views per image; use 1 to "
                f"{available}, or extend the cache with examples/cache_teacher.py --num_views {num_views}."
            )
        shard_size = config.get("shard_size", config["batch_size"])  # caches written before shards had their own size
        per_view = math.ceil(config["data"]["num_images"] / shard_size)
        shards = [
            load_from_disk(os.path.join(folder, SHARDS_DIR, shard_name(v * per_view + k)))
            for v in range(num_views)
            for k in range(per_view)
        ]
        return cls(folder, config, concatenate_datasets(shards), num_views)

    @property
    def fingerprint(self) -> str:
        """A digest of the cache's settings and view count: the cache's identity in a run's fingerprint."""
        settings = {**self.config, "num_views": self.num_views}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def view_of(self, indices: Sequence[int], epoch: int, seed: int) -> list[int]:
        """The view each image gets in ``epoch``: ``(offset(seed, i) + epoch) mod K``, every view once in K epochs."""
        return [(_offset(seed, int(i)) + epoch) % self.num_views for i in indices]

    def rows(self, indices: Sequence[int], views: Sequence[int]) -> dict[str, Any]:
        """The stored columns of (image, view) pairs, as numpy arrays; logits in the teacher's class order, full
        (a top-k cache's other classes filled, :data:`TOP_K_FILL_MARGIN`), float32."""
        positions = [int(v) * self.num_images + int(i) for i, v in zip(indices, views)]
        rows = self._views[positions]
        if not np.array_equal(rows["index"], np.asarray(indices)):  # a cache not laid out as its config says
            raise ValueError(f"teacher_cache={self.folder!r} is damaged (rows out of place); write it again.")
        logits = rows["logits"].astype(np.float32)
        if self.top_k:
            full = np.repeat(logits.min(axis=1, keepdims=True) - TOP_K_FILL_MARGIN, self.teacher.num_labels, axis=1)
            np.put_along_axis(full, rows["logit_indices"].astype(np.int64), logits, axis=1)
            logits = full
        targets = [rows[f"target_{j}"] for j in range(len(self.pairs))]
        return {"crop": rows["crop"], "flip": rows["flip"], "logits": logits, "targets": targets}

    def check_serves(
        self,
        image_size: int,
        grid: tuple[int, int],
        num_channels: int,
        normalization: tuple[Sequence[float] | None, Sequence[float] | None],
        pairs: Sequence[AlignmentPair],
        mixes_batches: bool = False,
    ) -> None:
        """Refuse, before any data is read, a run this cache was not written for (image size, grid, channels,
        normalisation, pairs), and batches mixed afresh (mixup/CutMix), whose teacher outputs are not in the cache."""
        problem = self.mismatch(
            image_size=image_size, grid=grid, num_channels=num_channels, normalization=normalization, pairs=pairs
        )
        if problem is not None:
            raise ValueError(
                f"teacher_cache={self.folder!r} cannot serve this run: {problem}. Write a cache for this run with "
                "examples/cache_teacher.py (the same student and data flags), or train with the teacher."
            )
        if mixes_batches:
            raise ValueError(
                "teacher_cache: mixup/CutMix mix each batch afresh, and the teacher's outputs on a mixed image are "
                "not in the cache; train with mixup=0 and cutmix=0, or without teacher_cache."
            )

    def check_training_set(self, dataset: Any) -> None:
        """Refuse, before the first step, a training set the cache was not written from. A split that passed is not
        digested again (the teacher check and the training loader both ask) while its datasets fingerprint holds."""
        fingerprint = getattr(dataset, "_fingerprint", None)
        if fingerprint is not None and fingerprint == self._served_fingerprint:
            return
        if not hasattr(dataset, "with_format"):
            raise TypeError(
                "teacher_cache: train_dataset must be the datasets.Dataset (columns image, label) the cache was "
                f"written from, got {type(dataset).__name__}."
            )
        problem = self.mismatch(num_images=len(dataset), digest=data_digest(dataset))
        if problem is not None:
            raise ValueError(
                f"teacher_cache={self.folder!r} cannot serve this training set: {problem}. Write the cache from the "
                "same data flags (--dataset_name, --train_fraction, --max_train_samples, --seed) as this run."
            )
        self._served_fingerprint = fingerprint

    def mismatch(
        self,
        *,
        image_size: int | None = None,
        grid: tuple[int, int] | None = None,
        num_channels: int | None = None,
        normalization: tuple[Sequence[float] | None, Sequence[float] | None] = (None, None),
        pairs: Sequence[AlignmentPair] | None = None,
        num_images: int | None = None,
        digest: str | None = None,
    ) -> str | None:
        """What differs between this cache and a run (one clause), or None when the cache serves it; only the
        settings given are compared."""
        mean, std = normalization
        checks = [
            ("image size", self.view.image_size, image_size),
            ("student patch grid", list(self.grid), None if grid is None else list(grid)),
            ("input channels", self.view.num_channels, num_channels),
            ("alignment pairs", [str(p) for p in self.pairs], None if pairs is None else [str(p) for p in pairs]),
            ("normalisation (mean, std)", _rounded(self.view.mean, self.view.std), _rounded(mean, std)),
            ("training images", self.num_images, num_images),
            ("training data (digest of its labels and images)", self.config["data"]["sha256"], digest),
        ]
        for what, cached, run in checks:
            if run is not None and cached != run:
                return f"it was made for {what} {cached}, this run has {run}"
        return None


def _rounded(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[list[float]] | None:
    if mean is None or std is None:
        return None
    return [[round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]]


def _offset(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"view-order|{seed}|{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class CachedViews(torch.utils.data.Dataset):
    """The training split as stage 1 reads it from a cache: each item the stored view of its epoch (rebuilt from its
    parameters) with the teacher's logits and alignment targets; from the first epoch that starts at or after the
    distillation stop, the live dataset's items (its own random augmentation).

    Which view an item gets depends on ``(seed, epoch, index)`` alone, so a resumed run reads the same views. The
    epoch and the stop live in a tensor in shared memory (loader workers see updates, as with
    :class:`~dearkd_hf.runs.seeded_batches.SeededBatches`). :meth:`collator` wraps the batch collator so that the
    teacher's outputs are batched beside ``pixel_values`` and ``labels``.
    """

    def __init__(self, cache: TeacherCache, live: Dataset, seed: int):
        self.cache = cache
        self.live = live
        self.raw = live.with_format(None)
        self.seed = seed
        self._clock = torch.tensor([0.0, math.inf], dtype=torch.float64).share_memory_()  # epoch, stop epoch

    def __len__(self) -> int:
        return len(self.raw)

    def set_epoch(self, epoch: float | None) -> None:
        self._clock[0] = float(int((epoch or 0.0) + 1e-6))

    def set_stop_epoch(self, stop_epoch: float) -> None:
        self._clock[1] = float(stop_epoch)

    def begin_training(self, args: Any, state: Any) -> None:
        """As training begins (a DearKDConfig and the trainer's state): the run's stop epoch, and the epoch it starts
        or resumes in, before that epoch's batches are requested."""
        self.set_stop_epoch(args.resolved_stop_epoch(state.num_train_epochs))
        self.set_epoch(state.epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        epoch, stop = int(self._clock[0]), float(self._clock[1])
        if epoch >= stop - 1e-6:
            return items_at(self.live, indices)
        rows = self.cache.rows(indices, self.cache.view_of(indices, epoch, self.seed))
        examples = self.raw[list(indices)]
        items = []
        for j, (image, label) in enumerate(zip(examples["image"], examples["label"])):
            items.append(
                {
                    "pixel_values": self.cache.view.apply(image, rows["crop"][j], bool(rows["flip"][j])),
                    "labels": label,
                    "teacher_logits": torch.from_numpy(rows["logits"][j]),
                    "teacher_targets": [torch.from_numpy(np.ascontiguousarray(t[j])) for t in rows["targets"]],
                }
            )
        return items

    @staticmethod
    def collator(collate: Any) -> Any:
        return _CachedViewsCollator(collate)


class _CachedViewsCollator:
    """The batch collator, with the teacher's cached outputs of cached-view items stacked beside its batch."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        cached = all("teacher_logits" in example for example in examples)
        plain = [{k: v for k, v in ex.items() if k not in ("teacher_logits", "teacher_targets")} for ex in examples]
        batch = dict(self.collate(plain))
        if cached:
            batch["teacher_logits"] = torch.stack([example["teacher_logits"] for example in examples])
            num_targets = len(examples[0]["teacher_targets"])
            batch["teacher_targets"] = [
                torch.stack([example["teacher_targets"][j] for example in examples]) for j in range(num_targets)
            ]
        return batch


# ---- writing a cache ----


def cache_settings(
    teacher: Teacher,
    dataset: Dataset,
    *,
    view: ReplayableView,
    grid: tuple[int, int],
    pairs: Sequence[AlignmentPair],
    target_channels: Sequence[int],
    seed: int,
    top_k: int,
    batch_size: int,
    shard_size: int,
) -> dict[str, Any]:
    """Everything that fixes a cache's rows except the number of views: the shards' fingerprint."""
    return {
        "format": CACHE_FORMAT,
        "teacher": CachedTeacher.of(teacher).to_dict(),
        "transform": view.to_dict(),
        "student": {
            "grid": list(grid),
            "alignment_pairs": [str(pair) for pair in pairs],
            "target_channels": list(target_channels),
        },
        "data": {"num_images": len(dataset), "sha256": data_digest(dataset)},
        "logits": {"top_k": top_k, "dtype": "float16"},
        "targets": {"dtype": "float16", "normalised": "layer norm over channels, pooled to the student's grid"},
        "seed": seed,
        "batch_size": batch_size,
        "shard_size": shard_size,
    }


def write_teacher_cache(
    teacher: Teacher,
    dataset: Dataset,
    output_dir: str,
    *,
    view: ReplayableView,
    grid: tuple[int, int],
    pairs: Sequence[AlignmentPair],
    num_views: int,
    target_channels: Sequence[int] | None = None,
    seed: int = 0,
    top_k: int = 0,
    batch_size: int = 256,
    shard_size: int = 4096,
    state: PartialState | None = None,
    progress: bool = True,
    max_shards: int | None = None,
    report: Any = print,
) -> TeacherCache | None:
    """Write the missing views of a ``num_views`` cache of ``dataset`` (columns ``image``, ``label``) into
    ``output_dir``; resumes a killed run and extends a cache to more views. Returns the finished cache.

    Refuses, before any teacher forward: a folder holding another cache or anything else, ``top_k`` out of range,
    and a cache that will not fit on the disk (``report`` prints the storage per view and in total first). The
    teacher runs on ``batch_size`` images at a time; a shard holds one view of ``shard_size`` images. Under
    ``accelerate launch`` process ``rank`` writes the shards with ``index % num_processes == rank``.
    ``max_shards`` (debugging) stops each process after that many new shards and returns None, as if killed.
    ``target_channels`` (the teacher's channels at each pair's layer) defaults to one teacher forward at the view's
    size.
    """
    if num_views < 1:
        raise ValueError(f"num_views={num_views} must be >= 1 (views stored per image; e.g. 4 or 16).")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size={batch_size} and shard_size={shard_size} must be >= 1 (images).")
    if not 0 <= top_k <= teacher.num_labels:
        raise ValueError(
            f"logits_top_k={top_k} must lie in [0, {teacher.num_labels}] (0 keeps every logit of the teacher's "
            f"{teacher.num_labels} classes)."
        )
    top_k = 0 if top_k == teacher.num_labels else top_k
    state = state or PartialState()
    if target_channels is None:
        target_channels = teacher_feature_channels(teacher, [pair.teacher_layer for pair in pairs], view.image_size)
    settings = cache_settings(
        teacher,
        dataset,
        view=view,
        grid=grid,
        pairs=pairs,
        target_channels=target_channels,
        seed=seed,
        top_k=top_k,
        batch_size=batch_size,
        shard_size=shard_size,
    )
    writer = ShardWriter(output_dir, settings, kind="teacher-cache")
    writer.check_fingerprint()
    tokens = grid[0] * grid[1]
    shapes = [(tokens, channels) for channels in target_channels]
    num_images = len(dataset)
    num_shards = math.ceil(num_images / shard_size)  # per view
    per_view = bytes_per_view(teacher.num_labels, top_k, shapes)
    todo = [index for index in range(num_views * num_shards) if not writer.is_written(index)]
    needed = per_view * num_images * num_views
    to_write = sum(min(shard_size, num_images - (index % num_shards) * shard_size) for index in todo) * per_view
    if state.is_main_process:
        report(
            f"Teacher cache: {num_images} images x {num_views} views, {per_view:,} bytes per view "
            f"({_size(needed)} in all; {_size(to_write)} still to write)."
        )
    existing = os.path.dirname(os.path.abspath(output_dir))
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if to_write * 1.1 > free:  # Arrow's own overhead on top of the payload
        raise ValueError(
            f"output_dir={output_dir!r}: the cache needs {_size(to_write)} more but the disk has {_size(free)} free. "
            "Store fewer views (--num_views), keep only the top logits (--logits_top_k), or write it elsewhere."
        )
    state.wait_for_everyone()  # every process has checked output_dir before the main one writes to it
    if state.is_main_process:
        writer.prepare()
    state.wait_for_everyone()

    mine = [index for index in todo if index % state.num_processes == state.process_index]
    if max_shards is not None:
        mine = mine[:max_shards]
    features = cache_features(teacher.num_labels, top_k, shapes)
    raw = dataset.with_format(None)
    layers = [pair.teacher_layer for pair in pairs]
    device = next(teacher.module.parameters()).device
    show = progress and state.is_local_main_process
    total = sum(min(shard_size, num_images - (index % num_shards) * shard_size) for index in mine)
    quiet = {} if show else {"disable": True}  # when shown, tqdm's own TQDM_DISABLE can still turn it off
    with tqdm(total=total, desc="Caching the teacher's outputs", unit="view", **quiet) as bar:
        for index in mine:
            view_index, part = divmod(index, num_shards)
            shard = range(part * shard_size, min(num_images, (part + 1) * shard_size))
            chunks = []
            for start in range(shard.start, shard.stop, batch_size):
                indices = list(range(start, min(shard.stop, start + batch_size)))
                chunks.append(_cache_rows(teacher, raw, indices, view_index, view, seed, layers, grid, top_k, device))
                bar.update(len(indices))
            columns = {key: np.concatenate([np.asarray(chunk[key]) for chunk in chunks]) for key in chunks[0]}
            writer.write(index, Dataset.from_dict(columns, features=features))
    state.wait_for_everyone()
    if max_shards is not None:
        return None
    if state.is_main_process:
        missing = [index for index in range(num_views * num_shards) if not writer.is_written(index)]
        if missing:
            raise RuntimeError(f"{len(missing)} shard(s) of {output_dir!r} missing; re-run with the same arguments.")
        previous = _read_config(output_dir)
        total_views = max(num_views, previous.get("num_views", 0) if previous else 0)
        write_json_atomic(os.path.join(output_dir, CACHE_FILE), {**settings, "num_views": total_views})
    state.wait_for_everyone()
    return TeacherCache.load(output_dir)


def _cache_rows(
    teacher: Teacher,
    raw: Dataset,
    indices: list[int],
    view_index: int,
    view: ReplayableView,
    seed: int,
    layers: list[str],
    grid: tuple[int, int],
    top_k: int,
    device: torch.device,
) -> dict[str, Any]:
    """One shard's rows: view ``view_index`` of the images ``indices``, drawn, rebuilt, and run through the teacher."""
    images = raw[indices]["image"]
    crops, flips, pixels = [], [], []
    for index, image in zip(indices, images):
        image = open_image(image)  # decoded once: its size for the draw, its pixels for the view
        width, height = image.size
        crop, flip = view.draw(seed, index, view_index, width, height)
        crops.append(list(crop))
        flips.append(flip)
        pixels.append(view.apply(image, crop, flip))
    pixel_values = torch.stack(pixels).to(device)
    logits, targets = teacher_outputs(teacher, pixel_values, (view.mean, view.std), layers, grid)
    logits = logits.float().cpu()
    columns: dict[str, Any] = {"index": indices, "view": [view_index] * len(indices), "crop": crops, "flip": flips}
    if top_k:
        values, top = logits.topk(top_k, dim=-1)
        columns["logits"], columns["logit_indices"] = values.half().numpy(), top.int().numpy()
    else:
        columns["logits"] = logits.half().numpy()
    for j, target in enumerate(targets):
        columns[f"target_{j}"] = target.float().cpu().half().numpy()
    return columns


def _read_config(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, CACHE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000:
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} TB"


def load_teacher_cache(cache: TeacherCache | str | None, num_views: int | None = None) -> TeacherCache | None:
    """``cache`` itself, or the cache a folder or Hub dataset id names (read with ``num_views``); None for None."""
    if cache is None or isinstance(cache, TeacherCache):
        return cache
    return TeacherCache.load(cache, num_views=num_views)


def names_cached_teacher(given: Any, cached: str) -> bool:
    """Whether a teacher argument names the cache's teacher (the same string, or the same local folder)."""
    if not isinstance(given, str):
        return False
    # A timm teacher is recorded under the name timm.create_model took: "local-dir:<folder>", "hf-hub:timm/<name>".
    if cached in (given, timm_model_name(given)):
        return True
    cached_folder = cached.removeprefix(TIMM_LOCAL_PREFIX)
    both_local = os.path.isdir(given) and os.path.isdir(cached_folder)
    return both_local and os.path.realpath(given) == os.path.realpath(cached_folder)
