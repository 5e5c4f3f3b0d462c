"""Grayscale models saved so that they open as RGB models: ``pipeline("image-classification")`` converts every image
to RGB, so a model trained on 1-channel images is saved with its first convolution taking 3 channels, the ITU-R 601
luma weights folded into it (:data:`~dearkd_hf.modeling.modeling_dearkd_vit.RGB_TO_GRAY`, PIL's ``convert("L")``).

Folded, the convolution computes on RGB pixels what it computed on their grayscale image, and on a grayscale image
served as RGB (three equal channels) what it computed before, up to float rounding, since the luma weights sum to 1
(a one-value mean/std normalisation commutes with them). Summing the folded kernel over its input channels gives the
grayscale kernel back, which is how :func:`as_grayscale` reopens such a model for training (``load_teacher``).

The DearKD ViT needs none of this: its patch embedding reads RGB pixels as grayscale itself. Users' view:
docs/hub.md (Inference).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..modeling.configuration_dearkd_vit import DearKDViTConfig
from ..modeling.modeling_dearkd_vit import RGB_TO_GRAY

# The config key that marks a folder saved by :func:`saved_as_rgb` (a transformers config or timm's config.json).
FOLDED_KEY = "dearkd_grayscale_folded"
# Where transformers (configs, embeddings) and timm (the model) keep a model's input channel count.
CHANNEL_ATTRIBUTES = ("num_channels", "in_chans")


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``Conv2d`` in ``module``'s registration order (the input convolution of the CNNs and ViTs served
    here), with its name; None when there is none."""
    return next(((name, m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)


def _with_in_channels(conv: nn.Conv2d, weight: torch.Tensor) -> nn.Conv2d:
    """A copy of ``conv`` taking ``weight.shape[1]`` channels, with ``weight`` and ``conv``'s own bias; built without
    initialising, so the global random generator is not drawn from."""
    new = nn.utils.skip_init(
        nn.Conv2d,
        weight.shape[1],
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=False,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    new.weight = nn.Parameter(weight.detach().clone(), requires_grad=conv.weight.requires_grad)
    new.bias = conv.bias
    return new


def _swap(module: nn.Module, name: str, conv: nn.Conv2d, channels: int) -> list[tuple[object, str, object]]:
    """Put ``conv`` at ``name`` and set the input channel count to ``channels`` where the model keeps one (the
    config, and the convolution's enclosing modules: ViT's patch embeddings check it, timm exports ``in_chans``,
    TimmWrapper's config keeps timm's ``model_args`` and ``pretrained_cfg``);
    returns what to restore, as (object, attribute, value)."""
    parent_name, _, attribute = name.rpartition(".")
    parent = module.get_submodule(parent_name)
    undo: list[tuple[object, str, object]] = [(parent, attribute, getattr(parent, attribute))]
    setattr(parent, attribute, conv)
    parts = name.split(".")
    owners = [module.get_submodule(".".join(parts[:i])) for i in range(len(parts))]
    config = getattr(module, "config", None)
    for owner in [*owners, *([config] if config is not None else [])]:
        for count in CHANNEL_ATTRIBUTES:
            if isinstance(getattr(owner, count, None), int) and not isinstance(owner, nn.GroupNorm):
                undo.append((owner, count, getattr(owner, count)))
                setattr(owner, count, channels)
    # transformers' TimmWrapper config rebuilds its timm model from these: replaced by updated copies.
    args, data = getattr(config, "model_args", None), getattr(config, "pretrained_cfg", None)
    if isinstance(args, dict) and "in_chans" in args:
        undo.append((config, "model_args", args))
        config.model_args = {**args, "in_chans": channels}
    if isinstance(data, dict) and data.get("input_size"):
        undo.append((config, "pretrained_cfg", data))
        config.pretrained_cfg = {**data, "input_size": [channels, *data["input_size"][1:]]}
    return undo


def is_foldable(model: nn.Module) -> bool:
    """Whether ``model`` is a grayscale model :func:`saved_as_rgb` folds: its first convolution takes 1 channel and
    it does not read RGB itself (the DearKD ViT does)."""
    found = first_conv(model)
    reads_rgb = getattr(getattr(model, "config", None), "model_type", None) == DearKDViTConfig.model_type
    return found is not None and found[1].in_channels == 1 and not reads_rgb


@contextmanager
def saved_as_rgb(model: nn.Module) -> Iterator[bool]:
    """Within the block, a grayscale ``model`` (:func:`is_foldable`) takes RGB: its first convolution folded with the
    luma weights, ``num_channels`` 3 in its config and embeddings, and ``config.dearkd_grayscale_folded`` set; on
    leaving, the very modules and values it had are back (training goes on bit for bit). Yields whether it folded."""
    if not is_foldable(model):
        yield False
        return
    name, conv = first_conv(model)
    luma = conv.weight.new_tensor(RGB_TO_GRAY).view(1, 3, 1, 1)
    undo = _swap(model, name, _with_in_channels(conv, conv.weight * luma), 3)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, FOLDED_KEY, True)
    try:
        yield True
    finally:
        if config is not None:
            delattr(config, FOLDED_KEY)
        for owner, attribute, value in reversed(undo):
            setattr(owner, attribute, value)


def as_grayscale(module: nn.Module) -> nn.Module:
    """``module`` (a model :func:`saved_as_rgb` saved, reloaded as an RGB model) as the grayscale model it was
    trained as, in place: its first convolution's kernel summed over the input channels."""
    name, conv = first_conv(module)
    _swap(module, name, _with_in_channels(conv, conv.weight.sum(dim=1, keepdim=True)), 1)
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, FOLDED_KEY):
        delattr(config, FOLDED_KEY)
    return module
