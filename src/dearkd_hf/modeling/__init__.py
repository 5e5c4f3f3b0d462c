"""The DearKD ViT student, registered with the transformers Auto classes on import.

`register_for_auto_class` makes `save_pretrained` copy the two modeling files next to the weights and write
`auto_map` into config.json, so the saved folder loads with `trust_remote_code=True` without dearkd_hf.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_dearkd_vit import DearKDViTConfig
from .modeling_dearkd_vit import (
    DearKDViTForImageClassification,
    DearKDViTModel,
    DearKDViTOutput,
    DearKDViTPreTrainedModel,
    head_centres,
    initial_positional_weights,
    relative_positions,
)

AutoConfig.register(DearKDViTConfig.model_type, DearKDViTConfig, exist_ok=True)
AutoModel.register(DearKDViTConfig, DearKDViTModel, exist_ok=True)
AutoModelForImageClassification.register(DearKDViTConfig, DearKDViTForImageClassification, exist_ok=True)
DearKDViTConfig.register_for_auto_class()
DearKDViTModel.register_for_auto_class("AutoModel")
DearKDViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "DearKDViTConfig",
    "DearKDViTForImageClassification",
    "DearKDViTModel",
    "DearKDViTOutput",
    "DearKDViTPreTrainedModel",
    "head_centres",
    "initial_positional_weights",
    "relative_positions",
]
