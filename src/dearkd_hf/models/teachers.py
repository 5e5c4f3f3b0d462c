"""CNN teachers from timm, transformers or any ``nn.Module``, behind one small interface.

The trainer and the data-free generator only need the teacher's logits, a few hooked feature maps, its pooled
pre-logit features and its input normalisation; :class:`Teacher` gives exactly that whatever the source.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import timm
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from ..data.transforms import fit_channels
from ..hub.lookup import check_local_folder, hub_lookup, read_json_config
from .grayscale import FOLDED_KEY, as_grayscale, first_conv

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's prefixes of a Hub id and of a local folder (model_card.py reads them too).
TIMM_HUB_PREFIX, TIMM_LOCAL_PREFIX = "hf-hub:", "local-dir:"
_TIMM_PREFIXES = (TIMM_HUB_PREFIX, TIMM_LOCAL_PREFIX, "timm/")
_TRANSFORMERS_STAGE = re.compile(r"(^|\.)encoder\.stages\.\d+$")


@dataclass
class TeacherOutput:
    """Logits, the requested feature maps by layer name, and the pooled pre-logit features ``(B, C)``."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    pre_logits: torch.Tensor | None = None


@dataclass
class Teacher:
    """A frozen CNN teacher with what distillation needs to know about it."""

    module: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    id2label: dict[int, str]
    source: str
    stage_names: list[str]
    classifier_name: str | None = None
    input_size: int | None = None

    def __post_init__(self) -> None:
        self.module.eval()
        self.module.requires_grad_(False)
        self.mean, self.std = fit_channels(self.mean, self.num_channels), fit_channels(self.std, self.num_channels)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def num_channels(self) -> int:
        found = first_conv(self.module)
        if found is None:
            raise ValueError(f"Teacher {self.source!r} has no Conv2d layer: a CNN teacher is expected.")
        return found[1].in_channels

    def weights_sha256(self) -> str:
        """A digest of the teacher's weights and buffers (names, dtypes, shapes, bytes): its identity in a run's
        fingerprint, which a path is not (a teacher retrained in place keeps its path)."""
        digest = hashlib.sha256()
        for name, tensor in self.module.state_dict().items():
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(data.view(torch.uint8).numpy())
        return digest.hexdigest()

    def hookable_layers(self) -> list[str]:
        """Names accepted as the teacher side of ``alignment_pairs``."""
        return [name for name, _ in self.module.named_modules() if name]

    def to(self, device: torch.device | str) -> Teacher:
        self.module.to(device)
        return self

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Class logits for ``pixel_values`` given in the teacher's own normalisation."""
        return _logits_of(self.module(pixel_values))

    def forward_with_features(self, pixel_values: torch.Tensor, layers: Sequence[str] = ()) -> TeacherOutput:
        """One forward that also returns the outputs of ``layers`` and the classifier's input, via hooks.

        Hooks rather than a feature-extraction wrapper keep the teacher's own forward, so gradients can flow to the
        input when the generator inverts it.
        """
        modules = dict(self.module.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise ValueError(
                f"Unknown teacher layer(s) {unknown} for {self.source!r}. Valid names include: "
                f"{self.stage_names or self.hookable_layers()[:40]}."
            )
        features: dict[str, torch.Tensor] = {}
        captured: dict[str, torch.Tensor] = {}
        handles = [
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: features.__setitem__(name, out))
            for name in layers
        ]
        if self.classifier_name is not None:
            handles.append(
                modules[self.classifier_name].register_forward_pre_hook(
                    lambda _m, args: captured.__setitem__("pre_logits", args[0])
                )
            )
        try:
            logits = self.logits(pixel_values)
        finally:
            for handle in handles:
                handle.remove()
        pre_logits = captured.get("pre_logits")
        if pre_logits is not None:
            pre_logits = pre_logits.flatten(1)
        return TeacherOutput(logits=logits, features=features, pre_logits=pre_logits)

    def normalize_from(
        self, pixel_values: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> torch.Tensor:
        """Re-normalise a batch given in ``(mean, std)`` into the teacher's normalisation (no-op when equal)."""
        if mean is None or std is None or (_close(mean, self.mean) and _close(std, self.std)):
            return pixel_values
        shape = (1, -1, 1, 1)
        src_mean, src_std, dst_mean, dst_std = (
            torch.as_tensor(v, dtype=pixel_values.dtype, device=pixel_values.device).view(shape)
            for v in (mean, std, self.mean, self.std)
        )
        return (pixel_values * src_std + src_mean - dst_mean) / dst_std


def load_teacher(name_or_path: str | nn.Module | Teacher, **kwargs) -> Teacher:
    """Load a teacher from a timm name, a transformers classifier (Hub or folder), a folder saved by either, or a
    module; a vision transformer is refused (DearKD distils from a CNN).

    ``kwargs`` go to ``timm.create_model`` or ``from_pretrained``; ``mean``, ``std`` and ``id2label`` override what
    the source says (and are how a bare ``nn.Module`` is described).
    """
    teacher = load_classifier(name_or_path, "teacher_model_name_or_path", **kwargs)
    _require_cnn(teacher)
    return teacher


def load_classifier(name_or_path: str | nn.Module | Teacher, flag: str, **kwargs) -> Teacher:
    """Any frozen image classifier behind :class:`Teacher`'s interface, a CNN or a vision transformer (the data-free
    generator's competition term reads a student's logits this way); ``flag`` names the argument in errors.

    ``kwargs`` as :func:`load_teacher`'s.
    """
    overrides = {key: kwargs.pop(key) for key in ("mean", "std", "id2label") if key in kwargs}
    if isinstance(name_or_path, Teacher):
        model = name_or_path
    elif isinstance(name_or_path, PreTrainedModel):
        model = _from_transformers(name_or_path, source=name_or_path.name_or_path or None)
    elif isinstance(name_or_path, nn.Module) and hasattr(name_or_path, "pretrained_cfg"):
        model = _from_timm_model(name_or_path, source=name_or_path.pretrained_cfg.get("architecture", "timm"))
    elif isinstance(name_or_path, nn.Module):
        model = _from_module(name_or_path)
    else:
        check_local_folder(name_or_path, flag)
        # timm draws a random initialisation before loading the weights: on a forked RNG, so that loading a teacher
        # (or not, with a teacher cache) leaves the seeded stream that initialises the student and aligners as it was.
        with hub_lookup(name_or_path, flag), torch.random.fork_rng(devices=[]):
            if is_timm_model(name_or_path):
                model = _from_timm(name_or_path, **kwargs)
            else:
                model = _from_transformers(_load_transformers(name_or_path, **kwargs), source=name_or_path)
        if _saved_folded(name_or_path):  # a grayscale teacher saved pipeline-ready: back to the model it trained as
            model = replace(model, module=as_grayscale(model.module))
    for key, value in overrides.items():
        setattr(model, key, {int(k): v for k, v in value.items()} if key == "id2label" else tuple(value))
    return model


def _saved_folded(name_or_path: str) -> bool:
    """Whether ``name_or_path`` is a folder whose grayscale model was saved taking RGB
    (:mod:`dearkd_hf.models.grayscale`)."""
    config_path = os.path.join(name_or_path, "config.json")
    return os.path.isfile(config_path) and bool(read_json_config(config_path).get(FOLDED_KEY))


def _require_cnn(teacher: Teacher) -> None:
    """Refuse a vision transformer (any attention layer) up front: DearKD aligns the student with a CNN's stages."""
    names = [type(module).__name__ for module in teacher.module.modules()]
    attention = next((name for name in names if name.endswith("Attention")), None)
    if attention is not None:
        raise ValueError(
            f"teacher_model_name_or_path={teacher.source!r} is not a CNN (it has {attention} layers, as a vision "
            "transformer does); DearKD distils from a CNN teacher such as a ResNet, RegNet or ConvNeXt."
        )


def is_timm_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` is a timm model: a timm name or Hub id (``hf-hub:``, ``timm/``), or a folder saved in
    timm's format (its config.json has ``architecture``). Other folders and names are transformers models."""
    if os.path.isdir(name_or_path):
        config_path = os.path.join(name_or_path, "config.json")
        if not os.path.isfile(config_path):
            raise ValueError(f"teacher_model_name_or_path={name_or_path!r} is a folder without config.json.")
        return "architecture" in read_json_config(config_path)
    return name_or_path.startswith(_TIMM_PREFIXES) or timm.is_model(name_or_path)


def timm_model_name(name: str) -> str:
    """The name ``timm.create_model`` takes for a model that :func:`is_timm_model` accepts (``local-dir:`` for a
    folder, ``hf-hub:`` for a ``timm/`` Hub id)."""
    if os.path.isdir(name):
        return f"{TIMM_LOCAL_PREFIX}{name}"
    if name.startswith("timm/"):
        return f"{TIMM_HUB_PREFIX}{name}"
    return name


def _from_timm(name: str, **kwargs) -> Teacher:
    name = timm_model_name(name)
    kwargs.setdefault("pretrained", True)
    return _from_timm_model(timm.create_model(name, **kwargs), source=name)


def _from_timm_model(model: nn.Module, source: str) -> Teacher:
    cfg = model.pretrained_cfg
    num_classes = model.num_classes
    label_names = cfg.get("label_names") or []
    if len(label_names) != num_classes:
        label_names = [f"LABEL_{i}" for i in range(num_classes)]
    modules = dict(model.named_modules())
    stages = [info["module"] for info in model.feature_info if info["reduction"] >= 4]
    stages = [stage if stage in modules else stage.replace("_", ".") for stage in stages]
    classifier = _module_name(model, model.get_classifier())
    input_size = cfg.get("input_size")
    return Teacher(
        module=model,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        id2label=dict(enumerate(label_names)),
        source=source,
        stage_names=stages,
        classifier_name=classifier,
        input_size=input_size[-1] if input_size else None,
    )


def _load_transformers(name_or_path: str, **kwargs) -> PreTrainedModel:
    return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)


def _from_transformers(model: PreTrainedModel, source: str | None) -> Teacher:
    mean, std, input_size = IMAGENET_MEAN, IMAGENET_STD, None
    processor = _image_processor(source) if source else None
    if processor is not None:
        mean = tuple(getattr(processor, "image_mean", None) or mean)
        std = tuple(getattr(processor, "image_std", None) or std)
        size = getattr(processor, "size", None) or {}
        input_size = size.get("height") or size.get("shortest_edge")
    names = [name for name, _ in model.named_modules()]
    classifier = "classifier" if "classifier" in names else None
    return Teacher(
        module=model,
        mean=mean,
        std=std,
        id2label={int(k): v for k, v in model.config.id2label.items()},
        source=source or type(model).__name__,
        stage_names=[name for name in names if _TRANSFORMERS_STAGE.search(name)],
        classifier_name=classifier,
        input_size=input_size,
    )


def _from_module(module: nn.Module) -> Teacher:
    last_linear = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    classifier = last_linear[-1] if last_linear else None
    num_labels = dict(module.named_modules())[classifier].out_features if classifier else 0
    return Teacher(
        module=module,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        id2label={i: f"LABEL_{i}" for i in range(num_labels)},
        source=type(module).__name__,
        stage_names=[],
        classifier_name=classifier,
    )


def _image_processor(source: str):
    """The saved image processor of a transformers teacher, or None (no processor saved, or offline)."""
    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError):
        return None


def _logits_of(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    return logits


def _module_name(root: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, m in root.named_modules() if m is target and name), None)


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def teacher_label_order(
    teacher_labels: dict[int, str], student_labels: dict[int, str], ignore_label_names: bool = False
) -> list[int] | None:
    """The teacher's class index for each of the student's classes, when both name their classes in other orders.

    None (use the teacher's logits as they are) when either side's names are generic (``LABEL_i`` or ``"i"``) or
    both orders agree. Names that differ as sets mean logit distillation would teach the wrong classes: a
    ``ValueError`` unless ``ignore_label_names``.
    """
    teacher_names = [teacher_labels[i] for i in sorted(teacher_labels)]
    student_names = [student_labels[i] for i in sorted(student_labels)]
    if _generic(teacher_names) or _generic(student_names) or teacher_names == student_names:
        return None
    if sorted(teacher_names) == sorted(student_names) and len(set(teacher_names)) == len(teacher_names):
        logger.info("The teacher orders its classes differently: its logits are put in the student's order.")
        return [teacher_names.index(name) for name in student_names]
    if ignore_label_names:
        logger.warning(
            f"The teacher's classes {teacher_names} are not the student's {student_names}; distilling class i into "
            "class i anyway (ignore_label_names=True)."
        )
        return None
    raise ValueError(
        f"teacher_model: the teacher's classes {teacher_names} are not the student's {student_names}, so logit "
        "distillation would teach the wrong classes. Give the student the teacher's class names, set "
        "distillation_type='none' (feature alignment only), or set ignore_label_names=True (--ignore_label_names) "
        "to distil class i into class i anyway."
    )


def _generic(names: list[str]) -> bool:
    """Names that say nothing about the class: transformers' ``LABEL_i`` or the bare index ``"i"``."""
    return all(name in (f"LABEL_{i}", str(i)) for i, name in enumerate(names))
