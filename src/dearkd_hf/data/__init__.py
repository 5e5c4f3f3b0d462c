"""The data room: image-classification datasets (loading, the stratified train fraction), their transforms, the batch
collators, named training recipes and the evaluation metric. Imports nothing from the method's modules.
"""

from .collators import MixupCollator, collate_fn, evaluation_collator_for
from .evaluation import compute_accuracy_metrics
from .loading import (
    DataTrainingArguments,
    infer_num_channels,
    label_kwargs,
    label_names,
    load_image_datasets,
    train_collator,
)
from .recipes import RECIPES, apply_recipe, get_recipe
from .transforms import ReplayableView, build_transforms, fit_channels, processor_normalization, with_transforms

__all__ = [
    "DataTrainingArguments",
    "MixupCollator",
    "RECIPES",
    "ReplayableView",
    "apply_recipe",
    "build_transforms",
    "collate_fn",
    "compute_accuracy_metrics",
    "evaluation_collator_for",
    "fit_channels",
    "get_recipe",
    "infer_num_channels",
    "label_kwargs",
    "label_names",
    "load_image_datasets",
    "processor_normalization",
    "train_collator",
    "with_transforms",
]
