"""The model card of a DearKD student: what it was distilled from, how, on what data, and how well it does.

A card is what tells a reader of the Hub page that this ViT learned from a CNN's logits and early layers for part of
its training only; without the teacher, the loss weights and the stage split the result cannot be reproduced. The
YAML header is what the Hub indexes: ``library_name``, ``tags``, ``base_model`` and ``datasets`` (Hub ids only),
``metrics``, ``license`` and a ``model-index`` with the evaluation results. Local folders are named in the text as
local, by their last component: no machine path is ever written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..models.teachers import TIMM_HUB_PREFIX, TIMM_LOCAL_PREFIX
from ..version import __version__
from .lookup import looks_like_local_path

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
PAPER_URL = "https://arxiv.org/abs/2204.12997"
# Keys of Trainer.evaluate() results that are bookkeeping, not quality metrics.
NON_METRICS = {"loss", "epoch", "runtime", "samples_per_second", "steps_per_second"}
CARD_TAGS = ["image-classification", "dearkd", "knowledge-distillation", "vision-transformer"]


@dataclass
class ModelCardInfo:
    """The facts a DearKD model card reports; the trainer fills it from its arguments, state and final metrics.

    Args:
        model_name: The card's title (and the usage snippet's model id when ``repo_id`` is not given).
        teacher: Where the teacher came from: a Hub id, a timm name, or a local folder (named as local).
        dataset: The training data: a Hub dataset id or a local folder (named as local).
        num_train_epochs: The run's epochs.
        distillation_stop_epoch: The epoch stage 1 ended at.
        alpha: Weight of logit distillation.
        beta: Weight of the alignment loss.
        tau: Distillation temperature.
        distillation_type: ``hard``, ``soft`` or ``none``.
        alignment_pairs: ``"STUDENT_BLOCK:TEACHER_LAYER"`` pairs that were aligned.
        train_fraction: The stratified share of the training split used.
        metrics: The final evaluation's results (``eval_*`` keys).
        base_model: What the student was initialised from (Hub id or local folder); None from scratch.
        eval_dataset: The evaluation data when it is not the training dataset's own split.
        synthetic_data: Whether the training images were generated from the teacher (data-free DearKD).
        distillation_token: Whether the student has a distillation token and head (DeiT-style).
        trust_remote_code: Whether loading the student needs ``trust_remote_code=True`` (the DearKD ViT).
        license: The license for the card's metadata (e.g. ``apache-2.0``); None leaves it out.
        tags: Tags beside the card's own.
        repo_id: The model's Hub id, for the usage snippet.
        hyperparameters: The Trainer's hyperparameters (``extract_hyperparameters_from_trainer``).
        teacher_check: What the teacher check measured before stage 1 (``TeacherCheck.describe()``, and what was done
            about a weak teacher); None when no check ran.
    """

    model_name: str
    teacher: str
    dataset: str
    num_train_epochs: float
    distillation_stop_epoch: float
    alpha: float
    beta: float
    tau: float
    distillation_type: str
    alignment_pairs: Sequence[str] = ()
    train_fraction: float = 1.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    base_model: str | None = None
    eval_dataset: str | None = None
    synthetic_data: bool = False
    distillation_token: bool = True
    trust_remote_code: bool = False
    license: str | None = None
    tags: Sequence[str] = ()
    repo_id: str | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    teacher_check: str | None = None


def public_name(name: str | None) -> str | None:
    """A Hub id or timm name as it is; a local folder as ``local folder `NAME` `` (its last component only)."""
    if name is None:
        return None
    bare = name.removeprefix(TIMM_LOCAL_PREFIX)
    if name.startswith(TIMM_LOCAL_PREFIX) or looks_like_local_path(bare):
        return f"local folder `{os.path.basename(os.path.normpath(bare))}`"
    return f"`{name.removeprefix(TIMM_HUB_PREFIX)}`"


def _hub_id(name: str | None) -> str | None:
    """``name`` when it is a Hub id (``name`` or ``owner/name``) and not a local path, else None."""
    if name is None:
        return None
    name = name.removeprefix(TIMM_HUB_PREFIX)
    return name if HUB_ID.fullmatch(name) and not looks_like_local_path(name) else None


def _quality_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``eval_accuracy`` -> ``accuracy``; bookkeeping values (loss, runtime, samples/s, epoch) left out."""
    named = {key.removeprefix("eval_").removeprefix("test_"): value for key, value in metrics.items()}
    return {name: value for name, value in sorted(named.items()) if name not in NON_METRICS}


def _card_data(info: ModelCardInfo) -> ModelCardData:
    dataset_id = _hub_id(info.eval_dataset or info.dataset)
    dataset_name = dataset_id or os.path.basename(os.path.normpath(info.eval_dataset or info.dataset))
    results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=dataset_id or "local",
            dataset_name=dataset_name,
            metric_type=name,
            metric_value=float(value),
        )
        for name, value in _quality_metrics(info.metrics).items()
    ]
    training_id = _hub_id(info.dataset)
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=info.license,
        tags=list(dict.fromkeys([*CARD_TAGS, *(["data-free"] if info.synthetic_data else []), *info.tags])),
        datasets=[training_id] if training_id and not info.synthetic_data else None,
        metrics=list(_quality_metrics(info.metrics)) or None,
        base_model=_hub_id(info.base_model),
        model_name=info.model_name,
        eval_results=results or None,
    )


def _stage_text(info: ModelCardInfo) -> str:
    """The two-stage schedule in words, including the edge case of distilling for the whole run."""
    stop, total = info.distillation_stop_epoch, info.num_train_epochs
    if stop >= total:
        return f"Stage 1 (early knowledge distillation) ran for all {total:g} epochs; stage 2 was not reached."
    return (
        f"Stage 1 (early knowledge distillation) ran until epoch {stop:g} of {total:g}; stage 2 (labels only, "
        f"teacher dropped) ran from epoch {stop:g} to {total:g}."
    )


def _pairs_text(pairs: Sequence[str]) -> str:
    if not pairs:
        return "none (logit distillation only)"
    return ", ".join(f"`{pair}`" for pair in pairs)


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: Mapping[str, float]) -> str:
    quality = _quality_metrics(metrics)
    if not quality:
        return "No evaluation metrics were recorded."
    rows = [f"| {name} | {_format_value(value)} |" for name, value in quality.items()]
    return "\n".join(["| Metric | Value |", "|---|---|", *rows])


def _student_text(info: ModelCardInfo) -> str:
    tokens = "class and distillation tokens" if info.distillation_token else "a class token"
    kind = "A DearKD vision transformer (MHCA)" if info.trust_remote_code else "A vision transformer"
    start = f", initialised from {public_name(info.base_model)}" if info.base_model else ", trained from scratch"
    return f"{kind} with {tokens}{start}"


def _data_text(info: ModelCardInfo) -> str:
    fraction = f"{info.train_fraction:.0%}" if info.train_fraction < 1 else "all"
    source = public_name(info.dataset) if _hub_id(info.dataset) is None else f"`{info.dataset}`"
    text = f"{source}, train fraction {info.train_fraction:g} ({fraction} of each class, stratified)"
    if info.synthetic_data:
        text += "; the training images were synthesised from the teacher (data-free DearKD), no real image was seen"
    if info.eval_dataset:
        evaluated = public_name(info.eval_dataset) if _hub_id(info.eval_dataset) is None else f"`{info.eval_dataset}`"
        text += f". Evaluated on {evaluated}"
    return text + "."


def _usage(info: ModelCardInfo) -> str:
    remote = ", trust_remote_code=True" if info.trust_remote_code else ""
    model_id = info.repo_id or info.model_name
    return f"""```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{model_id}"{remote})
classifier("image.png")
```"""


def _teacher_check_text(info: ModelCardInfo) -> str:
    return f" Before stage 1, {info.teacher_check}." if info.teacher_check else ""


def _hyperparameters(hyperparameters: Mapping[str, Any]) -> str:
    if not hyperparameters:
        return "Not recorded."
    return "\n".join(f"- {name}: {_format_value(value)}" for name, value in hyperparameters.items())


def _versions() -> str:
    return "\n".join(
        f"- {name} {version}"
        for name, version in (
            ("dearkd_hf", __version__),
            ("Transformers", transformers.__version__),
            ("PyTorch", torch.__version__),
            ("Datasets", datasets.__version__),
        )
    )


def _body(info: ModelCardInfo) -> str:
    return f"""
# {info.model_name}

{_student_text(info)}, trained with [DearKD]({PAPER_URL}) (Chen et al., "DearKD: Data-Efficient Early Knowledge
Distillation for Vision Transformers", CVPR 2022) with the `dearkd_hf` library on top of 🤗 Transformers.

## Usage

{_usage(info)}

## Training

- **Teacher:** {public_name(info.teacher)} (a CNN).{_teacher_check_text(info)}
- **Method:** DearKD. {_stage_text(info)} In stage 1 the student learns from the teacher's logits and from its early
  intermediate layers through aligners; in stage 2 it trains on labels alone, so that self-attention can move past the
  teacher's inductive biases.
- **Loss weights:** alpha = {info.alpha:g} (logit distillation), beta = {info.beta:g} (feature alignment),
  tau = {info.tau:g} (distillation temperature).
- **Distillation type:** {info.distillation_type}.
- **Alignment pairs (student block : teacher layer):** {_pairs_text(info.alignment_pairs)}.
- **Data:** {_data_text(info)}

### Training hyperparameters

{_hyperparameters(info.hyperparameters)}

## Evaluation

{_metrics_table(info.metrics)}

## Framework versions

{_versions()}
"""


def build_model_card(info: ModelCardInfo | None = None, **kwargs: Any) -> str:
    """The README.md text of a DearKD student: YAML metadata followed by a body stating the training facts.

    Pass a `ModelCardInfo` or its fields as keyword arguments.
    """
    info = info if info is not None else ModelCardInfo(**kwargs)
    card = ModelCard(f"---\n{_card_data(info).to_yaml()}\n---\n{_body(info)}")
    return str(card)
