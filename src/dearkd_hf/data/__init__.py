"""The data room: image-classification datasets (loading, the stratified train fraction), their transforms, the batch
collators, named training recipes and the evaluation metric. Imports nothing from the method's modules.

Its names load on first use (PEP 562), so that the trainer, which needs only the collators and transforms, does not
import the data-loading module (``datasets`` loading, the examples' flags) with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name -> the module of this room that defines it.
_WHERE = {
    "DataTrainingArguments": ".loading",
    "MixupCollator": ".collators",
    "RECIPES": ".recipes",
    "ReplayableView": ".transforms",
    "apply_recipe": ".recipes",
    "build_transforms": ".transforms",
    "collate_fn": ".collators",
    "compute_accuracy_metrics": ".evaluation",
    "evaluation_collator_for": ".collators",
    "fit_channels": ".transforms",
    "get_recipe": ".recipes",
    "infer_num_channels": ".loading",
    "label_kwargs": ".loading",
    "label_names": ".loading",
    "load_image_datasets": ".loading",
    "processor_normalization": ".transforms",
    "train_collator": ".loading",
    "with_transforms": ".transforms",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # what linters and IDEs see
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
