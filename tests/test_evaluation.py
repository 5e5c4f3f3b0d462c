"""evaluation.py and the local accuracy module: offline loading and the Trainer's compute_metrics."""

import evaluate
import numpy as np
from transformers import EvalPrediction

from dearkd_hf.data.evaluation import ACCURACY_MODULE, compute_accuracy_metrics, load_accuracy


def test_load_accuracy_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_accuracy()
    assert metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0]) == {"accuracy": 0.5}


def test_module_loads_from_its_folder():
    metric = evaluate.load(str(ACCURACY_MODULE.parent))
    assert metric.compute(references=[1, 1], predictions=[1, 0], normalize=False) == {"accuracy": 1.0}


def test_compute_accuracy_metrics_takes_argmax_of_first_output():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    hidden = np.zeros((4, 3, 2))
    result = compute_accuracy_metrics(EvalPrediction(predictions=(logits, hidden), label_ids=np.array([0, 1, 1, 1])))
    assert result == {"accuracy": 0.75}
    assert compute_accuracy_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 0, 1]))) == {
        "accuracy": 1.0
    }


def test_the_metric_is_loaded_once_for_every_evaluation(monkeypatch):
    load_accuracy.cache_clear()
    calls = []
    real_load = evaluate.load
    monkeypatch.setattr(evaluate, "load", lambda *args, **kwargs: calls.append(args) or real_load(*args, **kwargs))
    prediction = EvalPrediction(predictions=np.array([[1.0, 0.0]]), label_ids=np.array([0]))
    for _ in range(3):
        assert compute_accuracy_metrics(prediction) == {"accuracy": 1.0}
    assert len(calls) == 1
