"""DearKDConfig: ``TrainingArguments`` plus the knobs of DearKD (METHOD.md sections 1-3)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .alignment_pairs import parse_alignment_pairs
from .gradient_agreement import ALIGN_CONFLICTS
from .losses import BETA_SCHEDULES, DISTILLATION_TYPES, LABEL_LOSS_HEADS
from .runs.finite_checks import require_finite
from .teacher_check import WEAK_TEACHER_ACTIONS

# METHOD.md section 1: without an explicit stop epoch, stage 1 takes this fraction of the run's epochs.
DEFAULT_STOP_FRACTION = 0.8
# DearKDConfig's own fields that cannot change what a run computes, with why. Every other field DearKDConfig adds to
# TrainingArguments is in the run record (DearKDConfig.recorded_settings), so a field added later is recorded too.
NOT_IN_RUN_RECORD = {
    "teacher_model_name_or_path": "where the teacher is found: the record holds its weights' sha256, so a moved "
    "teacher folder still resumes and another teacher at the same path does not",
    "teacher_cache": "where the cache is found: the record holds the cache's own fingerprint",
    "save_at_distillation_stop": "one more checkpoint; every training step is the same",
    "ignore_label_names": "only lets a run whose teacher names its classes otherwise start; no step changes",
    "overwrite_output_dir": "what happens to the folder's old run, not how this one trains",
}


@dataclass
class DearKDConfig(TrainingArguments):
    r"""
    Configuration of [`DearKDTrainer`]: every field of [`~transformers.TrainingArguments`] plus the method's own.

    Parameters:
        teacher_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            The CNN teacher: a timm name (`"resnet18"`, `"hf-hub:timm/regnety_160.deit_in1k"`), a transformers image
            classifier (Hub name or folder), or a folder saved by either. Used when the trainer is not given a
            `teacher_model` directly.
        teacher_cache (`str` or `None`, *optional*, defaults to `None`):
            A teacher cache (a folder written by `examples/cache_teacher.py`, or a Hub dataset repository): stage 1
            reads the teacher's logits and alignment targets on stored views of each training image instead of
            running the teacher, which is then never loaded (METHOD.md section 6). A cache made for another teacher,
            image size, normalisation, student grid, alignment pairs or training set is refused.
        teacher_cache_views (`int` or `None`, *optional*, defaults to `None`):
            Use the cache's first this many views per image (a 16-view cache serves 1, 4 or 16). `None`: all.
        distillation_type (`str`, *optional*, defaults to `"hard"`):
            Logit distillation in stage 1: `"hard"` (CE to the teacher's argmax, DeiT/DearKD default), `"soft"`
            (temperature-scaled KL) or `"none"` (feature alignment only; the only mode allowed when the teacher's
            label space differs from the student's).
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the logit distillation term; the label term gets `1 - alpha`. In [0, 1].
        tau (`float`, *optional*, defaults to `1.0`):
            Temperature of soft distillation. Positive.
        teacher_labels (`bool`, *optional*, defaults to `False`):
            In stage 1, the label term's targets are the teacher's class probabilities on each (augmented, mixed)
            view instead of the dataset's labels: for generated images (data-free DearKD, METHOD.md section 5),
            whose labels are only the targets they were synthesised for. Needs logit distillation
            (`distillation_type` not `"none"`); stage 2, without the teacher, uses the dataset's labels.
        beta (`float`, *optional*, defaults to `1.0`):
            Weight of the early-layer alignment loss (summed over pairs). Non-negative; 0 disables alignment.
        alignment_pairs (`list[str]` or `None`, *optional*, defaults to `None`):
            Pairs `"STUDENT_BLOCK:TEACHER_LAYER"`: a 1-based student block index and a teacher module name, e.g.
            `["3:layer1", "6:layer2"]`. `None` takes the student's blocks at 1/4 and 1/2 of its depth against the
            teacher's first two stages.
        beta_schedule (`str`, *optional*, defaults to `"balanced"`):
            How the alignment weight moves during stage 1: `"constant"` keeps `beta`; `"linear"` decays it from
            `beta` at step 0 to 0 at `distillation_stop_epoch`, so stage 1 hands over to the labels gradually;
            `"balanced"` caps it each step at `align_ratio` times the ratio of the label + logit-KD loss to the
            alignment loss (detached), so the alignment term never outweighs `align_ratio` times the rest;
            `"agreement"` keeps `beta` on the loss but scales the alignment's gradient into the student's blocks by a
            gate read from the running share of samples whose alignment gradient agrees with the task's at the
            aligned tokens, `clamp(2 share - 1, 0, 1)` (`dearkd_hf.gradient_agreement`, METHOD.md section 2).
        align_conflicts (`str`, *optional*, defaults to `"keep"`):
            What a sample's alignment gradient keeps where it opposes the task's at the aligned tokens (negative
            dot product): `"keep"` all of it; `"project"` removes its component along the task's gradient (PCGrad),
            so the alignment never pushes the student against the task. The aligners learn from the whole loss.
        align_ratio (`float`, *optional*, defaults to `1.0`):
            With `beta_schedule="balanced"`: the largest share of the label + logit-KD term the alignment term may
            reach, `beta_step = min(beta, align_ratio * (label + KD loss) / alignment loss)`, computed per micro-batch
            (with gradient accumulation, from each micro-batch's own losses). Positive.
        label_loss_heads (`str`, *optional*, defaults to `"averaged_logits"`):
            The label loss of a student with a distillation token in stage 2 (and in stage 1 with
            `distillation_type="none"`): `"averaged_logits"` is the cross-entropy of `(s_cls + s_dist) / 2`, the
            prediction the student makes at inference; `"each_head"` averages the two heads' cross-entropies.
        distillation_stop_epoch (`float` or `None`, *optional*, defaults to `None`):
            Epoch (fractions allowed) at which stage 1 ends: the teacher is dropped and the student trains on labels
            alone. `None` means `distillation_stop_fraction` of the run's epochs.
        distillation_stop_fraction (`float`, *optional*, defaults to `0.8`):
            Where stage 1 ends when `distillation_stop_epoch` is `None`, as a fraction of the run's epochs. In
            [0, 1].
        save_at_distillation_stop (`bool`, *optional*, defaults to `False`):
            Save a checkpoint (`checkpoint-<step>`, as `save_strategy` would) after the last stage-1 step, whatever
            `save_strategy` says: the student as stage 1 leaves it, e.g. to compare it with the final one.
            `save_total_limit` may rotate it out like any other checkpoint.
        ignore_label_names (`bool`, *optional*, defaults to `False`):
            Distil the teacher's class i into the student's class i even when both name their classes and the
            names differ. Off, such a run fails before training; names that match in another order are remapped.
        repeated_augmentations (`int`, *optional*, defaults to `1`):
            Each training example appears this many times per pass, differently augmented (timm's
            `RepeatAugSampler`, DeiT's repeated augmentation: 3); an epoch keeps the dataset's length. 1 = off.
        teacher_check_samples (`int`, *optional*, defaults to `512`):
            Training images the teacher is scored on before stage 1, as stage 1 feeds them (from a teacher cache,
            its stored logits); the accuracy is logged (`teacher_train_accuracy`) and written in the model card.
            0 skips the check. See `dearkd_hf.teacher_check`.
        weak_teacher (`str`, *optional*, defaults to `"no_logit_kd"`):
            What a weak teacher gets, one at or below the sample's majority-class rate plus two binomial standard
            errors (no better than always answering the most common class): `"no_logit_kd"` trains without logit
            distillation (alpha 0 for the run; alignment as configured), `"warn"` only warns.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Kept `False` because image datasets are transformed on the fly (`set_transform`), so their columns
            are not the model's arguments.
        ddp_find_unused_parameters (`bool` or `None`, *optional*, defaults to `True`):
            `True` because the aligners take no part in stage 2, which DDP must be told about.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Delete the run already in `output_dir` (its `checkpoint-*` folders, `dearkd_run.json`,
            `trainer_state.json` and saved weights) when training starts, and train afresh: the way to reuse a folder
            for a run with other settings, or to train a finished run again.
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "CNN teacher: timm name, transformers classifier (Hub or folder), or a saved folder."},
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "A teacher cache (examples/cache_teacher.py; folder or Hub dataset): stage 1 reads the teacher's "
            "outputs on stored views instead of running the teacher."
        },
    )
    teacher_cache_views: int | None = field(
        default=None, metadata={"help": "Use the teacher cache's first this many views per image (default: all)."}
    )
    distillation_type: str = field(
        default="hard",
        metadata={"help": "Logit distillation in stage 1.", "choices": list(DISTILLATION_TYPES)},
    )
    alpha: float = field(default=0.5, metadata={"help": "Weight of logit distillation (labels get 1 - alpha)."})
    tau: float = field(default=1.0, metadata={"help": "Temperature of soft distillation."})
    teacher_labels: bool = field(
        default=False,
        metadata={"help": "Stage 1: the label term learns the teacher's probabilities on each view (data-free)."},
    )
    beta: float = field(default=1.0, metadata={"help": "Weight of the early-layer alignment loss."})
    alignment_pairs: list[str] | None = field(
        default=None,
        metadata={"help": "Pairs 'STUDENT_BLOCK:TEACHER_LAYER' (1-based block), e.g. 3:layer1 6:layer2."},
    )
    beta_schedule: str = field(
        default="balanced",
        metadata={
            "help": "Alignment weight over stage 1: balanced (capped at align_ratio x the label+KD term each step), "
            "constant (fixed beta), linear decay to 0 at the stop, or agreement (beta, its gradient into the "
            "student gated by how often it agrees with the task's).",
            "choices": list(BETA_SCHEDULES),
        },
    )
    align_conflicts: str = field(
        default="keep",
        metadata={
            "help": "keep, or project: remove the part of the alignment gradient that opposes the task's gradient "
            "at the aligned tokens (per sample).",
            "choices": list(ALIGN_CONFLICTS),
        },
    )
    align_ratio: float = field(
        default=1.0,
        metadata={"help": "beta_schedule=balanced: the alignment term is at most this times the label + KD term."},
    )
    label_loss_heads: str = field(
        default="averaged_logits",
        metadata={
            "help": "Label loss of a two-head student: CE of the averaged logits, or the mean of each head's CE.",
            "choices": list(LABEL_LOSS_HEADS),
        },
    )
    distillation_stop_epoch: float | None = field(
        default=None,
        metadata={
            "help": "Epoch at which distillation stops (stage 2 begins). Default: distillation_stop_fraction of the "
            "run's epochs."
        },
    )
    distillation_stop_fraction: float = field(
        default=DEFAULT_STOP_FRACTION,
        metadata={"help": "Stage 1's share of the run's epochs when --distillation_stop_epoch is not given."},
    )
    save_at_distillation_stop: bool = field(
        default=False,
        metadata={"help": "Save a checkpoint after the last stage-1 step (the student as stage 1 leaves it)."},
    )
    ignore_label_names: bool = field(
        default=False,
        metadata={"help": "Distil class i into class i even when the teacher's class names differ from the student's"},
    )
    repeated_augmentations: int = field(
        default=1,
        metadata={"help": "Repeated augmentation: each example this many times per pass (DeiT: 3; 1 = off)."},
    )
    teacher_check_samples: int = field(
        default=512,
        metadata={"help": "Training images the teacher is scored on before stage 1 (0: no check)."},
    )
    weak_teacher: str = field(
        default="no_logit_kd",
        metadata={
            "help": "A teacher at or below the majority-class rate plus two standard errors: no_logit_kd (alpha 0 for "
            "the run) or warn.",
            "choices": list(WEAK_TEACHER_ACTIONS),
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Drop dataset columns the model's forward does not take (off: images are transformed)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True,
        metadata={"help": "Passed to DDP; True because the aligners are unused in stage 2."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the run already in --output_dir (its checkpoint-* folders, dearkd_run.json, "
            "trainer_state.json and saved weights) and train afresh, instead of resuming it or refusing another run."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_dearkd_fields()

    def _validate_dearkd_fields(self) -> None:
        require_finite(self)
        check_training_arguments(self)
        if self.distillation_type not in DISTILLATION_TYPES:
            raise ValueError(
                f"distillation_type={self.distillation_type!r} is not one of {DISTILLATION_TYPES}; pick one of them."
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r} is not one of {BETA_SCHEDULES}; pick one of them.")
        if self.align_conflicts not in ALIGN_CONFLICTS:
            raise ValueError(
                f"align_conflicts={self.align_conflicts!r} is not one of {ALIGN_CONFLICTS}; pick one of them."
            )
        if self.label_loss_heads not in LABEL_LOSS_HEADS:
            raise ValueError(
                f"label_loss_heads={self.label_loss_heads!r} is not one of {LABEL_LOSS_HEADS}; pick one of them."
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must lie in [0, 1] (weight of logit distillation); e.g. 0.5.")
        if self.teacher_labels and self.distillation_type == "none":
            raise ValueError(
                "teacher_labels=True takes the label term's targets from the teacher's class probabilities, which "
                "needs the teacher to share the student's classes; set distillation_type to 'hard' or 'soft', or "
                "teacher_labels=False."
            )
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0 (alignment weight; 0 disables alignment).")
        if self.align_ratio <= 0:
            raise ValueError(f"align_ratio={self.align_ratio} must be > 0 (alignment's largest share); e.g. 1.0.")
        if self.tau <= 0:
            raise ValueError(f"tau={self.tau} must be > 0 (distillation temperature); e.g. 1.0.")
        if self.alignment_pairs is not None:
            parse_alignment_pairs(self.alignment_pairs)
        if not 0.0 <= self.distillation_stop_fraction <= 1.0:
            raise ValueError(
                f"distillation_stop_fraction={self.distillation_stop_fraction} must lie in [0, 1] (stage 1's share "
                "of the epochs); e.g. 0.8."
            )
        if self.teacher_cache_views is not None and self.teacher_cache_views < 1:
            raise ValueError(
                f"teacher_cache_views={self.teacher_cache_views} must be >= 1 (leave it unset to use every view)."
            )
        if self.teacher_cache is not None and self.repeated_augmentations > 1:
            raise ValueError(
                "repeated_augmentations > 1 needs a fresh augmentation of each repeat, which a teacher cache's stored "
                "views do not give; set repeated_augmentations=1 or train without teacher_cache."
            )
        if self.repeated_augmentations < 1:
            raise ValueError(f"repeated_augmentations={self.repeated_augmentations} must be >= 1 (1 = off; DeiT: 3).")
        if self.teacher_check_samples < 0:
            raise ValueError(f"teacher_check_samples={self.teacher_check_samples} must be >= 0 (0 skips the check).")
        if self.weak_teacher not in WEAK_TEACHER_ACTIONS:
            raise ValueError(f"weak_teacher={self.weak_teacher!r} must be one of {list(WEAK_TEACHER_ACTIONS)}.")
        if self.distillation_stop_epoch is not None and self.distillation_stop_epoch < 0:
            raise ValueError(f"distillation_stop_epoch={self.distillation_stop_epoch} must be >= 0.")
        if (
            self.distillation_stop_epoch is not None
            and self.max_steps <= 0
            and self.distillation_stop_epoch > self.num_train_epochs
        ):
            warnings.warn(
                f"distillation_stop_epoch={self.distillation_stop_epoch} is beyond num_train_epochs="
                f"{self.num_train_epochs}: distillation never stops and stage 2 never runs.",
                UserWarning,
                stacklevel=2,
            )

    def recorded_settings(self) -> dict[str, object]:
        """DearKD's settings as the run record keeps them: every field DearKDConfig adds to ``TrainingArguments``
        but those in :data:`NOT_IN_RUN_RECORD`."""
        own = [name for name in self.__dataclass_fields__ if name not in TrainingArguments.__dataclass_fields__]
        return {name: getattr(self, name) for name in own if name not in NOT_IN_RUN_RECORD}

    def resolved_stop_epoch(self, num_train_epochs: float) -> float:
        """The epoch at which stage 1 ends, the one place it is resolved: ``distillation_stop_epoch`` when given,
        else ``distillation_stop_fraction`` of the run's actual number of epochs (``num_train_epochs``)."""
        if self.distillation_stop_epoch is not None:
            return float(self.distillation_stop_epoch)
        return self.distillation_stop_fraction * float(num_train_epochs)


def check_training_arguments(args: TrainingArguments, prefix: str = "") -> None:
    """The ``TrainingArguments`` that the Trainer would take silently (or fail on only after loading): a run with
    no steps, a batch of no examples, a learning rate that is not positive, a negative clipping norm. ``prefix``:
    ``"--"`` for flags."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"{prefix}{name}={getattr(args, name)} must be >= 1 (examples per device); e.g. 64.")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ValueError(
            f"{prefix}num_train_epochs={args.num_train_epochs} trains nothing: give a positive number of epochs "
            f"(or {prefix}max_steps > 0)."
        )
    if args.learning_rate <= 0:
        raise ValueError(f"{prefix}learning_rate={args.learning_rate} must be > 0; e.g. 5e-4.")
    if args.max_grad_norm is not None and args.max_grad_norm < 0:
        raise ValueError(
            f"{prefix}max_grad_norm={args.max_grad_norm} must be >= 0 (the gradient-clipping norm; 0 turns it off)."
        )
