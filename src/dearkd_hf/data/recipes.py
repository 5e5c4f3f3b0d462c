"""Training recipes by name: `--recipe deit` in the examples, :func:`apply_recipe` from the Trainer API.

A recipe is a set of argument values (data, training, student) and the timm objects that implement its
augmentation: ``create_transform`` (RandAugment, bicubic random-resized crop, random erasing), ``Mixup`` (mixup,
CutMix and label smoothing, through :class:`~dearkd_hf.data.loading.MixupCollator`) and ``RepeatAugSampler`` (repeated
augmentation, through :class:`~dearkd_hf.trainer.DearKDTrainer`). A value given explicitly always wins over the
recipe's: :func:`apply_recipe` leaves the fields named in ``explicit`` as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment
from timm.data.auto_augment import posterize as timm_posterize

# DeiT's learning rate is 5e-4 for a total batch of 512 and scales linearly with it (Touvron et al., 2021).
DEIT_BASE_BATCH = 512


@dataclass(frozen=True)
class Recipe:
    """A named training recipe.

    Args:
        name (`str`): What `--recipe` takes.
        auto_augment (`str`): timm's RandAugment policy string for the training transform.
        interpolation (`str`): Resampling of the training crop and the evaluation resize.
        random_erasing (`float`): Probability of timm's random erasing (per-pixel noise) after normalisation.
        eval_crop_pct (`float`): Evaluation: resize to image_size / eval_crop_pct, then centre-crop image_size.
        warmup_epochs (`float`): Linear warm-up, in epochs (at most half the run when the run is short).
        base_learning_rate (`float`): Learning rate at a total batch of `base_batch_size`, scaled linearly.
        base_batch_size (`int`): The total batch `base_learning_rate` is given for.
        data (`dict`): `DataTrainingArguments` values (mixup, CutMix, label smoothing).
        training (`dict`): `DearKDConfig` values (optimizer, schedule, weight decay, repeated augmentation).
        student (`dict`): Student config values (drop path), applied where the student's config has the field.
    """

    name: str
    auto_augment: str
    interpolation: str
    random_erasing: float
    eval_crop_pct: float
    warmup_epochs: float
    base_learning_rate: float
    base_batch_size: int
    data: dict[str, Any]
    training: dict[str, Any]
    student: dict[str, Any]

    def transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool
    ) -> Callable[[Any], Any]:
        """The recipe's image transform (PIL image -> normalised tensor), built by timm's ``create_transform``."""
        if train:
            transform = create_transform(
                image_size,
                is_training=True,
                auto_augment=self.auto_augment,
                interpolation=self.interpolation,
                re_prob=self.random_erasing,
                re_mode="pixel",
                re_count=1,
                mean=tuple(mean),
                std=tuple(std),
            )
            for step in transform.transforms:
                if isinstance(step, RandAugment):
                    for op in step.ops:
                        if op.aug_fn is timm_posterize:
                            op.aug_fn = posterize
            return transform
        return create_transform(
            image_size,
            is_training=False,
            interpolation=self.interpolation,
            crop_pct=self.eval_crop_pct,
            mean=tuple(mean),
            std=tuple(std),
        )

    def learning_rate(self, total_batch_size: int) -> float:
        return self.base_learning_rate * total_batch_size / self.base_batch_size

    def warmup_fraction(self, num_train_epochs: float) -> float:
        """`warmup_epochs` as the fraction of the run `TrainingArguments.warmup_steps` takes (a float < 1)."""
        return min(self.warmup_epochs / num_train_epochs, 0.5) if num_train_epochs > 0 else 0.0


def posterize(image: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, where keeping 0 bits gives a black image as Pillow did before version 13 (which refuses
    0): DeiT's RandAugment (``inc1``, magnitude noise) reaches 0 bits at magnitude 10."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_posterize(image, bits_to_keep, **kwargs)


RECIPES = {
    "deit": Recipe(
        name="deit",
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        random_erasing=0.25,
        eval_crop_pct=0.875,
        warmup_epochs=5,
        base_learning_rate=5e-4,
        base_batch_size=DEIT_BASE_BATCH,
        data={"mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1},
        training={
            "optim": "adamw_torch",
            "lr_scheduler_type": "cosine",
            "weight_decay": 0.05,
            "repeated_augmentations": 3,
        },
        student={"drop_path_rate": 0.1},
    ),
}


def get_recipe(name: str | Recipe | None) -> Recipe | None:
    """The recipe called ``name`` (None for None); an unknown name is an error listing the known ones."""
    if name is None or isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r} is not a known recipe; known recipes: {sorted(RECIPES)}.")
    return RECIPES[name]


def apply_recipe(
    recipe: str | Recipe,
    training_args: Any,
    data_args: Any | None = None,
    explicit: Iterable[str] = (),
) -> tuple[Any, Any, dict[str, Any]]:
    """Training and data arguments with the recipe's values, and the student config values it asks for.

    Fields named in ``explicit`` keep their values (the examples pass the flags given on the command line). The
    learning rate scales with the total batch (per-device batch x processes x accumulation steps) and the warm-up
    epochs become `warmup_steps` as a fraction of the run. Returns new argument objects; the inputs are unchanged.
    """
    recipe = get_recipe(recipe)
    explicit = set(explicit)
    total_batch = (
        training_args.per_device_train_batch_size
        * max(1, training_args.world_size)
        * training_args.gradient_accumulation_steps
    )
    training = {
        **recipe.training,
        "learning_rate": recipe.learning_rate(total_batch),
        "warmup_steps": recipe.warmup_fraction(training_args.num_train_epochs),
    }
    training_args = replace(training_args, **{k: v for k, v in training.items() if k not in explicit})
    if data_args is not None:
        data_args = replace(data_args, **{k: v for k, v in recipe.data.items() if k not in explicit})
    student = {k: v for k, v in recipe.student.items() if k not in explicit}
    return training_args, data_args, student
