"""Early-layer alignment: student tokens -> feature maps -> aligners that regress the teacher's early CNN features.

METHOD.md section 2 fixes the formulation (ours): drop prefix tokens, reshape to ``(B, D, h, w)``, a 1x1 convolution
``D -> C``, a per-position layer norm over channels on both sides, and an MSE against the teacher map pooled to
``(h, w)``. It is computed in the equivalent token layout ``(B, h*w, C)`` (a 1x1 convolution is a per-token linear
map), which saves the layout copies that dominate on small students.

The aligners live on the student as the submodule ``dearkd_aligners`` and run inside the student's forward through
a forward hook. That way they are in the optimizer, DDP/FSDP/DeepSpeed see them as part of the model (so their
gradients are synchronised), and the trainer strips them from anything it saves as the student.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ALIGNERS_ATTRIBUTE = "dearkd_aligners"
ALIGNED_FEATURES_KEY = "aligned_features"


@dataclass(frozen=True)
class AlignmentPair:
    """One alignment: the output of student block ``student_block`` (1-based) against teacher layer
    ``teacher_layer``."""

    student_block: int
    teacher_layer: str

    def __str__(self) -> str:
        return f"{self.student_block}:{self.teacher_layer}"


def parse_alignment_pairs(pairs: Sequence[str]) -> list[AlignmentPair]:
    """Parse ``"STUDENT_BLOCK:TEACHER_LAYER"`` strings (a comma-separated single string is accepted too)."""
    if isinstance(pairs, str):
        pairs = [p for p in pairs.split(",") if p.strip()]
    parsed = []
    for pair in pairs:
        block, sep, layer = str(pair).strip().partition(":")
        if not sep or not block.strip().isdigit() or not layer.strip():
            raise ValueError(
                f"alignment_pairs entry {pair!r} is not 'STUDENT_BLOCK:TEACHER_LAYER' "
                "(1-based block index, teacher module name), e.g. '3:layer1'."
            )
        parsed.append(AlignmentPair(int(block), layer.strip()))
    return parsed


def default_alignment_pairs(num_student_blocks: int, teacher_stage_names: Sequence[str]) -> list[AlignmentPair]:
    """The student's blocks at 1/4 and 1/2 of its depth against the teacher's first two stages (METHOD.md)."""
    if len(teacher_stage_names) < 2:
        raise ValueError(
            "alignment_pairs: the teacher's stages are unknown (not a timm or transformers CNN), so no default "
            "pairs exist; pass them explicitly, e.g. alignment_pairs=['3:layer1', '6:layer2']."
        )
    blocks = (max(1, round(num_student_blocks / 4)), max(1, round(num_student_blocks / 2)))
    return [AlignmentPair(block, layer) for block, layer in zip(blocks, teacher_stage_names[:2])]


def validate_alignment_pairs(
    pairs: Sequence[AlignmentPair], num_student_blocks: int, teacher_layers: Sequence[str]
) -> None:
    """Fail before training on a block out of range or a teacher layer that does not exist."""
    known = set(teacher_layers)
    for pair in pairs:
        if not 1 <= pair.student_block <= num_student_blocks:
            raise ValueError(
                f"alignment_pairs entry '{pair}': student block {pair.student_block} is out of range; the student "
                f"has blocks 1..{num_student_blocks} (1-based)."
            )
        if pair.teacher_layer not in known:
            raise ValueError(
                f"alignment_pairs entry '{pair}': the teacher has no layer {pair.teacher_layer!r}. "
                f"Valid layer names: {list(teacher_layers)}"
            )


def patch_grid(num_tokens: int, num_patches: int) -> tuple[int, int]:
    """The square ``(h, w)`` patch grid of a token sequence; prefix tokens are the ``num_tokens - num_patches``."""
    side = math.isqrt(num_patches)
    if side * side != num_patches or num_patches > num_tokens:
        raise ValueError(
            f"The student's {num_patches} patch tokens do not form a square grid; alignment needs a square "
            "patch grid: use an image_size that is a multiple of patch_size in both dimensions."
        )
    return side, side


def patch_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, prefix + h*w, D)`` -> the ``(B, h*w, D)`` patch tokens (row-major), prefix tokens dropped."""
    return tokens[:, tokens.shape[1] - grid[0] * grid[1] :]


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, prefix + h*w, D)`` tokens -> ``(B, D, h, w)`` map, prefix tokens (class, distillation) dropped."""
    patches = patch_tokens(tokens, grid)
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def normalize_channels(features: torch.Tensor) -> torch.Tensor:
    """Layer norm over channels at each position (the last dimension), without affine: makes CNN and ViT scales
    comparable."""
    return F.layer_norm(features, features.shape[-1:])


def teacher_target(feature_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The teacher's ``(B, C, H, W)`` map pooled to the student's grid and normalised: ``(B, h*w, C)``, the
    alignment target in the student's token order."""
    if tuple(feature_map.shape[-2:]) != tuple(grid):
        feature_map = F.adaptive_avg_pool2d(feature_map, grid)
    return normalize_channels(feature_map.flatten(2).transpose(1, 2))


class Aligner(nn.Module):
    """A 1x1 convolution from the student's width to the teacher layer's channels, then channel normalisation.

    A 1x1 convolution over the ``(B, D, h, w)`` map is a linear map per token, so it runs as one on the
    ``(B, h*w, D)`` tokens: the same function without layout copies.
    """

    def __init__(self, student_dim: int, teacher_channels: int):
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return normalize_channels(self.proj(tokens))


class AlignmentHead(nn.Module):
    """All aligners of a run; maps the student's hidden states to aligned maps, one per pair."""

    def __init__(
        self,
        pairs: Sequence[AlignmentPair],
        student_dim: int,
        teacher_channels: Sequence[int],
        grid: tuple[int, int],
    ):
        super().__init__()
        self.pairs = list(pairs)
        self.grid = grid
        self.aligners = nn.ModuleList(Aligner(student_dim, c) for c in teacher_channels)
        self.active = False

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(
            aligner(patch_tokens(hidden_states[pair.student_block], self.grid))
            for pair, aligner in zip(self.pairs, self.aligners)
        )


def attach_alignment_head(student: nn.Module, head: AlignmentHead) -> torch.utils.hooks.RemovableHandle:
    """Make ``head`` a submodule of ``student`` and run it inside the student's forward while ``head.active``.

    The aligned maps are added to the student's output under ``aligned_features``.
    """
    student.add_module(ALIGNERS_ATTRIBUTE, head)

    def hook(_module: nn.Module, _args, output):
        hidden_states = getattr(output, "hidden_states", None)
        if head.active and hidden_states is not None:
            output = _with_aligned_features(type(output))(**output, aligned_features=head(hidden_states))
        return output

    return student.register_forward_hook(hook)


@functools.cache
def _with_aligned_features(output_class: type) -> type:
    """``output_class`` plus an ``aligned_features`` field.

    The maps must be a real field of the output: DDP finds the tensors that took part in the forward through the
    output and rebuilds it with ``output_class(**fields)``, which a key set by hand would break.
    """
    return dataclasses.make_dataclass(
        f"{output_class.__name__}WithAlignment",
        [(ALIGNED_FEATURES_KEY, tuple | None, None)],
        bases=(output_class,),
    )


def detach_alignment_head(student: nn.Module, handle: torch.utils.hooks.RemovableHandle | None) -> None:
    """Undo :func:`attach_alignment_head` so the user's student is left as it came."""
    if handle is not None:
        handle.remove()
    if ALIGNERS_ATTRIBUTE in student._modules:
        del student._modules[ALIGNERS_ATTRIBUTE]
