"""Image transforms for `Dataset.with_transform`: random crop/flip (and RandAugment) for training, resize and centre
crop for evaluation, then normalisation; images are converted to the model's channel count first. The default
training crop and flip can also be drawn as parameters and replayed (:class:`ReplayableView`), which is how a teacher
cache stores a view of an image (METHOD.md section 6)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .recipes import Recipe, get_recipe


def open_image(image: Any) -> Any:
    """A PIL image from a decoded image or an undecoded ``{"bytes", "path"}`` record. A file that cannot be decoded,
    or a float image (mode ``F``, a float TIFF say) holding NaN/inf pixels, raises a ``ValueError`` naming it: the
    conversion to the model's 8-bit channels would turn those pixels into 0 silently."""
    name = image.get("path") if isinstance(image, dict) else getattr(image, "filename", None)
    name = name or "(without a file name)"
    if isinstance(image, dict):
        try:
            image = Image().decode_example(image)
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for a corrupt or truncated file
            raise ValueError(
                f"Image {name} cannot be decoded ({error}). Remove or replace it, or pass --verify_images to skip "
                "undecodable images before training."
            ) from None
    if getattr(image, "mode", None) == "F":  # the one PIL mode that can hold NaN/inf: a cheap check of rare images
        pixels = np.asarray(image)
        bad = int(pixels.size - np.isfinite(pixels).sum())
        if bad:
            raise ValueError(
                f"Image {name} holds NaN/inf pixel values ({bad} of {pixels.size}): converted for the model they "
                "would silently become 0. Replace them with finite values or remove the image, or pass "
                "--verify_images to skip such images before training."
            )
    return image


def fit_channels(values: Sequence[float], num_channels: int) -> tuple[float, ...]:
    """Per-channel statistics (mean or std) fitted to ``num_channels``: the same count as they are, one value
    repeated, otherwise their mean repeated, as timm fits ImageNet statistics to ``in_chans=1``. The one rule for
    every model, processor and transform that meets another channel count (a grayscale student with an RGB
    processor, say)."""
    values = tuple(float(v) for v in values)
    if len(values) == num_channels:
        return values
    return (values[0] if len(values) == 1 else sum(values) / len(values),) * num_channels


def processor_normalization(
    processor: Any | None, num_channels: int, fallback: Sequence[float] | None = None
) -> tuple[list[float] | None, list[float] | None]:
    """The per-channel (mean, std) an image processor normalises ``num_channels`` channels with (a timm processor keeps
    them in ``data_config``), fitted by :func:`fit_channels`. When it does not say: ``fallback`` for both, or
    ``(None, None)`` without one (the trainer then feeds the teacher its batches as they are)."""
    data_config = getattr(processor, "data_config", None) or {}
    mean = getattr(processor, "image_mean", None) or data_config.get("mean")
    std = getattr(processor, "image_std", None) or data_config.get("std")
    if mean is None or std is None:
        if fallback is None:
            return None, None
        mean = std = fallback
    return list(fit_channels(mean, num_channels)), list(fit_channels(std, num_channels))


# The default training crop: an area share of the image in this range, at an aspect ratio in torchvision's default
# (3/4, 4/3), resized to the training size; then a horizontal flip with probability 1/2.
TRAIN_CROP_SCALE = (0.8, 1.0)
TRAIN_CROP_RATIO = (3 / 4, 4 / 3)


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


@dataclass(frozen=True)
class ReplayableView:
    """The default training transform (random resized crop, horizontal flip, normalisation) with its random draws
    made explicit: :meth:`draw` gives a view's parameters from ``(seed, example index, view index)`` alone, and
    :meth:`apply` rebuilds the view from them, bit for bit, in any process and at any time.

    The draws follow the live transform's distribution (``RandomResizedCrop(scale=TRAIN_CROP_SCALE)``, a flip with
    probability 1/2), so training on stored views differs from live augmentation only in how many distinct views
    each image has.

    Args:
        image_size: The side of the square view.
        mean: Per-channel mean the view is normalised with.
        std: Per-channel std the view is normalised with.
        num_channels: 1 (grayscale) or 3 (RGB); images are converted first.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_channels: int

    def to_dict(self) -> dict[str, Any]:
        """The settings a cache records (what must match for its views to be the training views)."""
        return {
            "image_size": self.image_size,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "num_channels": self.num_channels,
            "crop_scale": list(TRAIN_CROP_SCALE),
            "crop_ratio": [float(v) for v in TRAIN_CROP_RATIO],
            "flip": True,
        }

    @staticmethod
    def draw(seed: int, index: int, view: int, width: int, height: int) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box ``(top, left, height, width)`` and flip of view ``view`` of example ``index``."""
        digest = hashlib.sha256(repr(("view", seed, index, view)).encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            shape_only = torch.zeros((1, 1, 1), dtype=torch.uint8).expand(1, height, width)  # no allocation
            top, left, crop_height, crop_width = v2.RandomResizedCrop.get_params(
                shape_only, list(TRAIN_CROP_SCALE), list(TRAIN_CROP_RATIO)
            )
            flip = bool(torch.rand(1) < 0.5)
        return (int(top), int(left), int(crop_height), int(crop_width)), flip

    def apply(self, image: Any, crop: Sequence[int], flip: bool) -> torch.Tensor:
        """The normalised ``(C, H, W)`` view of ``image`` (a PIL image or an undecoded record) for these draws."""
        image = open_image(image).convert("L" if self.num_channels == 1 else "RGB")
        top, left, height, width = (int(v) for v in crop)
        size = [self.image_size, self.image_size]
        view = TF.resized_crop(image, top, left, height, width, size, antialias=True)
        if flip:
            view = TF.horizontal_flip(view)
        return self._to_tensor(view)

    @functools.cached_property
    def _to_tensor(self) -> v2.Compose:
        return v2.Compose(_to_normalized_tensor(self.mean, self.std))


def _image_pipeline(
    image_size: int, mean: Sequence[float], std: Sequence[float], train: bool, rand_augment: bool
) -> v2.Compose:
    """torchvision v2 ops: random crop/flip (and RandAugment) for training, resize + centre crop for evaluation."""
    if train:
        ops = [
            v2.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, ratio=TRAIN_CROP_RATIO, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if rand_augment:
            ops.append(v2.RandAugment())
    else:
        ops = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(ops + _to_normalized_tensor(mean, std))


def _transform_batch(batch: dict[str, list], pipeline: v2.Compose, mode: str) -> dict[str, list]:
    """Batch transform for `with_transform`: PIL images -> `pixel_values` (C, H, W), labels -> `labels`."""
    return {
        "pixel_values": [pipeline(open_image(image).convert(mode)) for image in batch["image"]],
        "labels": batch["label"],
    }


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_channels: int,
    train: bool,
    rand_augment: bool = False,
    recipe: str | Recipe | None = None,
) -> Callable[[dict[str, list]], dict[str, list]]:
    """The batch transform to pass to `Dataset.with_transform`.

    Images are converted to the model's channel count first (grayscale Fashion-MNIST for an RGB model, or the other
    way round), so any dataset feeds any model. A partial of a module-level function stays picklable for workers.
    A `recipe` (e.g. "deit") brings its own transforms (timm's `create_transform`) in place of the default ones.
    """
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels}.")
    recipe = get_recipe(recipe)
    if recipe is not None:
        pipeline = recipe.transform(image_size, mean, std, train=train)
    else:
        pipeline = _image_pipeline(image_size, mean, std, train=train, rand_augment=rand_augment)
    return partial(_transform_batch, pipeline=pipeline, mode="L" if num_channels == 1 else "RGB")


def with_transforms(
    dataset: DatasetDict,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_channels: int,
    rand_augment: bool = False,
    recipe: str | Recipe | None = None,
) -> DatasetDict:
    """Attach the training transform to `train` and the evaluation transform to every other split.

    Images are decoded by the transform rather than by `datasets`, so that one that cannot be decoded is named.
    """
    return DatasetDict(
        {
            split: _undecoded(ds).with_transform(
                build_transforms(
                    image_size,
                    mean,
                    std,
                    num_channels,
                    train=split == "train",
                    rand_augment=rand_augment,
                    recipe=recipe,
                )
            )
            for split, ds in dataset.items()
        }
    )


def _undecoded(dataset: Dataset) -> Dataset:
    image = dataset.features.get("image")
    return dataset.cast_column("image", Image(decode=False)) if isinstance(image, Image) and image.decode else dataset
