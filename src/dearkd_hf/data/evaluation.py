"""Evaluation metrics for the Trainer, loaded from the local `evaluate` module shipped in the package.

`evaluate.load("accuracy")` needs the Hub; the same metric shipped under `metrics/accuracy` loads offline.
"""

import functools
from pathlib import Path

import evaluate
import numpy as np
from transformers import EvalPrediction

ACCURACY_MODULE = Path(__file__).resolve().parent / "metrics" / "accuracy" / "accuracy.py"


@functools.cache
def load_accuracy() -> evaluate.EvaluationModule:
    """The accuracy metric, loaded by path so that no network is needed; once per process, not per evaluation."""
    return evaluate.load(str(ACCURACY_MODULE))


def _class_ids(array: np.ndarray) -> np.ndarray:
    """Class ids from logits or soft targets (argmax over the last axis); integer labels pass through."""
    array = np.asarray(array)
    return array.argmax(axis=-1) if array.ndim > 1 else array


def compute_accuracy_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer: top-1 accuracy of the logits.

    A model that returns several outputs (e.g. logits plus hidden states) gives a tuple; the logits come first.
    """
    predictions = eval_pred.predictions
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    return load_accuracy().compute(predictions=_class_ids(predictions), references=_class_ids(eval_pred.label_ids))
