"""The model card of a DearKD student: what it was distilled from, how, on what data, and how well it does.

A card is what tells a reader of the Hub page that this ViT learned from a CNN's logits and early layers for part of
its training only; without the teacher, the loss weights and the stage split the result cannot be reproduced.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from huggingface_hub import ModelCard, ModelCardData

from .sources import looks_like_local_path

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
PAPER_URL = "https://arxiv.org/abs/2204.12997"
# Keys of Trainer.evaluate() results that are bookkeeping, not quality metrics.
NON_METRICS = {"loss", "epoch", "runtime", "samples_per_second", "steps_per_second"}
CARD_TAGS = ["image-classification", "dearkd", "knowledge-distillation", "vision-transformer"]


@dataclass
class ModelCardInfo:
    """The facts a DearKD model card reports; run.py fills it from its arguments and final metrics."""

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
    student_description: str = "A DearKD vision transformer (DeiT-style, with class and distillation tokens)"


def _card_data(info: ModelCardInfo) -> ModelCardData:
    """YAML metadata; local dataset folders are left out of `datasets`, which the Hub expects to be dataset ids."""
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=list(CARD_TAGS),
        datasets=[info.dataset] if _is_hub_id(info.dataset) else None,
        metrics=_metric_names(info.metrics) or None,
        base_model=info.base_model,
        model_name=info.model_name,
    )


def _is_hub_id(name: str) -> bool:
    """Only `name` or `owner/name` ids belong in the card's `datasets`; local folders and descriptions do not."""
    return bool(HUB_ID.fullmatch(name)) and not looks_like_local_path(name)


def _metric_names(metrics: Mapping[str, float]) -> list[str]:
    """`eval_accuracy` -> `accuracy`, the names the Hub metadata uses; bookkeeping values such as runtime dropped."""
    names = {key.removeprefix("eval_").removeprefix("test_") for key in metrics}
    return sorted(name for name in names if name not in NON_METRICS)


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


def _format_value(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: Mapping[str, float]) -> str:
    if not metrics:
        return "No evaluation metrics were recorded."
    rows = [f"| {name} | {_format_value(value)} |" for name, value in metrics.items()]
    return "\n".join(["| Metric | Value |", "|---|---|", *rows])


def _body(info: ModelCardInfo) -> str:
    fraction = f"{info.train_fraction:.0%}" if info.train_fraction < 1 else "all"
    return f"""
# {info.model_name}

{info.student_description}, trained with [DearKD]({PAPER_URL}) (Chen et al., "DearKD: Data-Efficient Early Knowledge
Distillation for Vision Transformers", CVPR 2022) with the `dearkd_hf` library on top of 🤗 Transformers.

## Training

- **Teacher:** `{info.teacher}` (a CNN).
- **Method:** DearKD. {_stage_text(info)} In stage 1 the student learns from the teacher's logits and from its early
  intermediate layers through aligners; in stage 2 it trains on labels alone, so that self-attention can move past the
  teacher's inductive biases.
- **Loss weights:** alpha = {info.alpha:g} (logit distillation), beta = {info.beta:g} (feature alignment),
  tau = {info.tau:g} (distillation temperature).
- **Distillation type:** {info.distillation_type}.
- **Alignment pairs (student block : teacher layer):** {_pairs_text(info.alignment_pairs)}.
- **Dataset:** `{info.dataset}`, train fraction {info.train_fraction:g} ({fraction} of each class, stratified).

## Evaluation

{_metrics_table(info.metrics)}
"""


def build_model_card(info: ModelCardInfo | None = None, **kwargs) -> str:
    """The README.md text of a DearKD student: YAML metadata followed by a body stating the training facts.

    Pass a `ModelCardInfo` or its fields as keyword arguments.
    """
    info = info if info is not None else ModelCardInfo(**kwargs)
    card = ModelCard(f"---\n{_card_data(info).to_yaml()}\n---\n{_body(info)}")
    return str(card)
