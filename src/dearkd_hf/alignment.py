"""Early-layer alignment: student tokens -> feature maps -> aligners that regress the teacher's early CNN features.

METHOD.md section 2 fixes the formulation (ours): drop prefix tokens, reshape to ``(B, D, h, w)``, a 1x1 convolution
``D -> C``, a per-position layer norm over channels on both sides, and an MSE against the teacher map pooled to
``(h, w)``. It is computed in the equivalent token layout ``(B, h*w, C)`` (a 1x1 convolution is a per-token linear
map), which saves the layout copies that dominate on small students.

The aligners live on the student as the submodule ``dearkd_aligners`` and run inside the student's forward through
a forward hook. That way they are in the optimizer, DDP/FSDP/DeepSpeed see them as part of the model (so their
gradients are synchronised), and the trainer strips them from anything it saves as the student.
:class:`StudentAligners` owns that whole lifecycle (attach, run, read, checkpoint, restore, strip, detach); the
trainer's overrides only delegate to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from .alignment_pairs import AlignmentPair
from .gradient_agreement import GradientAgreement
from .runs.files import atomic_path

if TYPE_CHECKING:
    from .models.teachers import Teacher

ALIGNERS_ATTRIBUTE = "dearkd_aligners"
ALIGNED_FEATURES_KEY = "aligned_features"
ALIGNERS_FILE = "aligners.safetensors"


def patch_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, prefix + h*w, D)`` -> the ``(B, h*w, D)`` patch tokens (row-major), prefix tokens dropped."""
    return tokens[:, tokens.shape[1] - grid[0] * grid[1] :]


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, prefix + h*w, D)`` tokens -> ``(B, D, h, w)`` map, prefix tokens (class, distillation) dropped."""
    patches = patch_tokens(tokens, grid)
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def normalize_channels(features: torch.Tensor) -> torch.Tensor:
    """Layer norm over channels at each position (the last dimension), without affine: makes CNN and ViT scales
    comparable.

    It runs in the features' own dtype even under autocast (which would make a float32 copy to keep for the
    backward pass): the statistics are accumulated in float32 by the kernel either way, and under bf16 this halves
    the memory the aligners keep per step.
    """
    with torch.autocast(features.device.type, enabled=False):
        return F.layer_norm(features, features.shape[-1:])


def teacher_target(feature_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The teacher's ``(B, C, H, W)`` map pooled to the student's grid and normalised: ``(B, h*w, C)``, the
    alignment target in the student's token order."""
    height, width = feature_map.shape[-2:]
    if (height, width) != tuple(grid):
        if height % grid[0] == 0 and width % grid[1] == 0:  # the same average, by a much faster kernel
            feature_map = F.avg_pool2d(feature_map, (height // grid[0], width // grid[1]))
        else:
            feature_map = F.adaptive_avg_pool2d(feature_map, grid)
    return normalize_channels(feature_map.flatten(2).transpose(1, 2))


def teacher_outputs(
    teacher: Teacher,
    pixel_values: torch.Tensor,
    normalization: tuple[Sequence[float] | None, Sequence[float] | None],
    layers: Sequence[str],
    grid: tuple[int, int],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The teacher on a student batch (given in ``normalization``, re-normalised for the teacher), without gradients:
    its logits, in its own class order, and the alignment targets of ``layers`` (:func:`teacher_target`). What stage 1
    computes live each step and what a teacher cache stores."""
    teacher_inputs = teacher.normalize_from(pixel_values, *normalization)
    with torch.no_grad():
        output = teacher.forward_with_features(teacher_inputs, layers)
        targets = [teacher_target(output.features[layer], grid) for layer in layers]
    return output.logits, targets


def teacher_feature_channels(teacher: Teacher, layers: Sequence[str], image_size: int) -> list[int]:
    """The channels of each teacher layer's ``(B, C, H, W)`` map, from one dummy forward at ``image_size``; a layer
    whose output is not such a map is refused."""
    if not layers:
        return []
    parameter = next(teacher.module.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    dummy = torch.zeros(1, teacher.num_channels, image_size, image_size, device=device)
    with torch.no_grad():
        features = teacher.forward_with_features(dummy, layers).features
    channels = []
    for layer in layers:
        if not isinstance(features.get(layer), torch.Tensor) or features[layer].dim() != 4:
            raise ValueError(
                f"alignment_pairs: teacher layer {layer!r} does not output a (B, C, H, W) feature map; "
                f"choose a convolutional stage, e.g. one of {teacher.stage_names}."
            )
        channels.append(features[layer].shape[1])
    return channels


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
        first_block_state: int = 1,
        *,
        project_conflicts: bool = False,
        agreement_gate: bool = False,
    ):
        super().__init__()
        self.pairs = list(pairs)
        self.grid = grid
        self.first_block_state = first_block_state  # index of block 1's output in the student's hidden_states
        self.aligners = nn.ModuleList(Aligner(student_dim, c) for c in teacher_channels)
        # The gradient taps (dearkd_hf.gradient_agreement) when a rule reads them; their running share is a buffer,
        # saved and restored with the aligners.
        self.agreement = (
            GradientAgreement(
                len(self.pairs), project=project_conflicts, gate=agreement_gate, num_patches=grid[0] * grid[1]
            )
            if self.pairs and (project_conflicts or agreement_gate)
            else None
        )

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        aligned = []
        for index, (pair, aligner) in enumerate(zip(self.pairs, self.aligners)):
            hidden = hidden_states[pair.student_block - 1 + self.first_block_state]
            if self.agreement is not None:
                hidden = self.agreement.tap(hidden, index)
            aligned.append(aligner(patch_tokens(hidden, self.grid)))
        return tuple(aligned)


class StudentAligners:
    """The aligners' whole life on a student; read top to bottom, it is the path of the aligned features.

    1. :meth:`attach` makes the head the student's submodule ``dearkd_aligners`` and registers a forward hook. It
       happens before the Trainer wraps the student, so device placement, the optimizer and DDP/FSDP/DeepSpeed
       treat the aligners as part of the model (their gradients are synchronised with the student's).
    2. Inside :meth:`running`, the hook maps the student's hidden states to aligned features (one per pair) and
       returns the output with them as a real field ``aligned_features``; :meth:`aligned_features` reads them back.
    3. :meth:`save` writes them into each checkpoint, atomically and before the Trainer writes the checkpoint's
       ``trainer_state.json``: a checkpoint the Trainer considers written has its aligners.
       :meth:`load` restores them; a missing or unreadable file is an error, never fresh aligners.
    4. :meth:`strip` keeps them out of every save of the student (``save_model``, ``push_to_hub``), and
       :meth:`without_aligner_keys` out of the missing keys reported when a checkpoint's student is reloaded.
    5. :meth:`detach` leaves the user's student as it came, after training.

    With no pairs (``beta=0``) the head is empty: it is attached all the same (nothing runs) and nothing is saved.
    """

    def __init__(self, head: AlignmentHead, autocast_dtype: torch.dtype | None = None):
        self.head = head
        # Forward hooks run outside the autocast accelerate puts around ``forward``: with mixed precision the hook
        # enters its own, so the aligners compute in bf16/fp16 like the rest of the student.
        self.autocast_dtype = autocast_dtype
        self._active = False
        self._student: nn.Module | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    @property
    def pairs(self) -> list[AlignmentPair]:
        return self.head.pairs

    # ---- 1. attach ----

    def attach(self, student: nn.Module) -> None:
        """Make the head a submodule of ``student`` and hook it into the student's forward (idempotent)."""
        if self._student is student and ALIGNERS_ATTRIBUTE in student._modules:
            return
        self.detach()
        student.add_module(ALIGNERS_ATTRIBUTE, self.head)
        self._hook = student.register_forward_hook(self._hook_fn)
        self._student = student

    # ---- 2. run and read ----

    @contextlib.contextmanager
    def running(self, active: bool) -> Iterator[None]:
        """While inside, forwards of the attached student with hidden states also return the aligned features."""
        self._active = active
        try:
            yield
        finally:
            self._active = False

    def _hook_fn(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        hidden_states = getattr(output, "hidden_states", None)
        if self._active and hidden_states is not None:
            autocast = (
                torch.autocast(hidden_states[0].device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                aligned = self.head(hidden_states)
            output = self._with_aligned_features(type(output))(**output, aligned_features=aligned)
        return output

    @staticmethod
    @functools.cache
    def _with_aligned_features(output_class: type) -> type:
        """``output_class`` plus an ``aligned_features`` field (a dataclass made once per output class).

        The features must be a real field of the output: DDP finds the tensors that took part in the forward
        through the output and rebuilds it with ``output_class(**fields)``, which a key set by hand would break.
        """
        return dataclasses.make_dataclass(
            f"{output_class.__name__}WithAlignment",
            [(ALIGNED_FEATURES_KEY, tuple | None, None)],
            bases=(output_class,),
        )

    @staticmethod
    def aligned_features(outputs: Any) -> tuple[torch.Tensor, ...]:
        """The aligned features of a student's output (empty when the aligners did not run)."""
        return tuple(outputs.get(ALIGNED_FEATURES_KEY, None) or ())

    # ---- 3. checkpoint and restore ----

    def save(self, checkpoint_dir: str) -> None:
        """Write ``aligners.safetensors`` into ``checkpoint_dir``: a temporary file renamed into place, so the
        file under its final name is always whole."""
        if not self.pairs:
            return
        os.makedirs(checkpoint_dir, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        with atomic_path(os.path.join(checkpoint_dir, ALIGNERS_FILE)) as partial:
            safetensors.torch.save_file(tensors, partial)

    def missing_from(self, checkpoint_dir: str) -> str | None:
        """Why ``checkpoint_dir`` cannot restore the aligners (absent, unreadable), or None when it can."""
        if not self.pairs:
            return None
        path = os.path.join(checkpoint_dir, ALIGNERS_FILE)
        if not os.path.isfile(path):
            return f"it has no {ALIGNERS_FILE}"
        try:
            with safetensors.safe_open(path, framework="pt") as f:
                keys = set(f.keys())
        except Exception as error:  # safetensors raises its own error type for a truncated header
            return f"its {ALIGNERS_FILE} is unreadable ({error})"
        expected = set(self.head.state_dict())
        if keys != expected:
            return f"its {ALIGNERS_FILE} holds {sorted(keys)}, not this run's aligners {sorted(expected)}"
        return None

    def load(self, checkpoint_dir: str) -> None:
        """Restore the aligners from ``checkpoint_dir``; refuse a checkpoint that cannot restore them."""
        if not self.pairs:
            return
        reason = self.missing_from(checkpoint_dir)
        if reason is None:
            try:
                self.head.load_state_dict(safetensors.torch.load_file(os.path.join(checkpoint_dir, ALIGNERS_FILE)))
                return
            except Exception as error:  # a truncated body only shows when the tensors are read
                reason = f"its {ALIGNERS_FILE} is unreadable ({error})"
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint_dir} cannot restore the aligners: {reason}. It was written by a "
            "run without alignment (beta=0) or is incomplete (a kill while saving); resume from another checkpoint, "
            "or start afresh without resume_from_checkpoint."
        )

    # ---- 4. never part of the saved student ----

    @staticmethod
    def is_key(key: str) -> bool:
        """Whether a state-dict key of the student (wrapped or not) belongs to the aligners."""
        return key.startswith(f"{ALIGNERS_ATTRIBUTE}.") or f".{ALIGNERS_ATTRIBUTE}." in key

    @classmethod
    def strip(cls, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` without the aligners' entries."""
        return {k: v for k, v in state_dict.items() if not cls.is_key(k)}

    @classmethod
    def without_aligner_keys(cls, load_result: Any) -> Any:
        """A ``load_state_dict`` result whose missing keys no longer list the aligners (never saved with the
        student)."""
        return load_result._replace(missing_keys=[k for k in load_result.missing_keys if not cls.is_key(k)])

    # ---- 5. detach ----

    def detach(self) -> None:
        """Remove the hook and the submodule, leaving the student as it came."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._student is not None and ALIGNERS_ATTRIBUTE in self._student._modules:
            delattr(self._student, ALIGNERS_ATTRIBUTE)
        self._student = None
