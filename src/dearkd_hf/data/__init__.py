"""The data room: image-classification datasets (loading, the stratified train fraction), their transforms, the batch
collators, named training recipes and the evaluation metric. Imports nothing from the method's modules.
"""

from .collators import MixupCollator, collate_fn
from .evaluation import compute_accuracy_metrics
from .loading import DataTrainingArguments, label_names, load_image_datasets
from .recipes import apply_recipe, get_recipe
from .transforms import build_transforms, with_transforms

__all__ = [
    "DataTrainingArguments",
    "MixupCollator",
    "apply_recipe",
    "build_transforms",
    "collate_fn",
    "compute_accuracy_metrics",
    "get_recipe",
    "label_names",
    "load_image_datasets",
    "with_transforms",
]
