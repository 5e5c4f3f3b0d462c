"""The teacher folder format: what ``examples/train_teacher.py`` writes and
:func:`~dearkd_hf.models.teachers.load_teacher` reads back. A transformers teacher is saved with ``save_pretrained``;
a timm teacher in timm's Hub folder format (:func:`save_timm_teacher`), which also opens with transformers
(``TimmWrapper``) and so in ``pipeline("image-classification")``. A grayscale teacher is saved taking RGB
(:mod:`.grayscale`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from ..data.transforms import fit_channels
from ..runs.files import read_json, write_json_atomic
from .grayscale import FOLDED_KEY, saved_as_rgb


class TimmClassifier(nn.Module):
    """A timm model with the Trainer's calling convention: `forward(pixel_values, labels)` -> ImageClassifierOutput."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.model(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def save_timm_teacher(
    model: nn.Module,
    output_dir: str,
    labels: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
) -> None:
    """Save a timm teacher where ``load_teacher`` expects it, in timm's folder format.

    Its ``model_args`` leave ``num_classes`` to the top-level field, which transformers passes itself, and its
    evaluation transform is the one the teacher was evaluated with (resize and centre crop to ``image_size``,
    bilinear, no crop margin). A grayscale teacher is saved taking RGB, as ``pipeline()`` serves every image;
    ``load_teacher`` reads it back as the 1-channel teacher it trained as.
    """
    with saved_as_rgb(model) as folded:
        channels = 3 if folded else len(mean)
        timm.models.save_for_hf(
            model,
            output_dir,
            model_config={"label_names": list(labels)},
            model_args={"in_chans": channels},
            data_config={
                "mean": fit_channels(mean, channels),
                "std": fit_channels(std, channels),
                "input_size": (channels, image_size, image_size),
                "crop_pct": 1.0,
                "crop_mode": "center",
                "interpolation": "bilinear",
            },
            safe_serialization=True,
        )
    config_path = os.path.join(output_dir, "config.json")
    config = read_json(config_path)
    config.get("model_args", {}).pop("num_classes", None)
    if folded:
        config[FOLDED_KEY] = True
    write_json_atomic(config_path, config)
