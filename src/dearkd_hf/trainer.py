"""DearKDTrainer: two-stage early knowledge distillation from a CNN teacher into a ViT student.

Stage 1: ``(1 - alpha) CE + alpha KD + beta * alignment`` with the teacher run under no_grad; stage 2, from
``distillation_stop_epoch`` on: labels alone, the teacher released. METHOD.md sections 1-3 specify the losses.
The aligners' lifecycle is :class:`~dearkd_hf.alignment.StudentAligners`' (the hooks at the end of the class
delegate to it); the run folder, exact resume and evaluation batches are
:class:`~dearkd_hf.base_trainer.BaseTrainer`'s. Nothing here comes from the data-loading module.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from transformers import (
    BaseImageProcessor,
    EvalPrediction,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    default_data_collator,
)
from transformers.modelcard import extract_hyperparameters_from_trainer
from transformers.trainer_utils import enable_full_determinism, set_seed
from transformers.utils import SAFE_WEIGHTS_NAME, logging

from .alignment import ALIGNERS_FILE, AlignmentHead, StudentAligners, teacher_feature_channels, teacher_outputs
from .alignment_pairs import AlignmentPair, resolve_alignment_pairs
from .base_trainer import BaseTrainer, check_process_group
from .callbacks import DistillationStopCallback
from .config import DearKDConfig
from .data.collators import Collator, MixupCollator, evaluation_collator_for
from .data.transforms import processor_normalization
from .hub.lookup import looks_like_local_path
from .hub.model_card import ModelCardInfo, build_model_card
from .hub.upload import student_files_only
from .losses import scheduled_beta, stage1_loss, stage2_loss
from .models.grayscale import saved_as_rgb
from .models.students import (
    prepare_student,
    saved_at_training_size,
    student_forward_kwargs,
    student_geometry,
    student_outputs,
)
from .models.teachers import Teacher, load_teacher, teacher_label_order
from .runs.checkpoints import is_checkpoint_folder
from .runs.finite_checks import check_finite_loss
from .runs.record import as_json
from .runs.seeded_batches import items_at, preserved_rng
from .teacher_cache import CachedTeacher, CachedViews, TeacherCache, load_teacher_cache, names_cached_teacher
from .teacher_check import TeacherCheck, sample_indices, teacher_check

if TYPE_CHECKING:
    import datasets

__all__ = ["DearKDTrainer"]

logger = logging.get_logger(__name__)

# The key under which stage-1 steps record their total loss (see _release_teacher); never logged under this name.
WINDOW_LOSS = "_stage1_loss"


class DearKDTrainer(BaseTrainer):
    r"""
    A [`~transformers.Trainer`] that trains a ViT student with DearKD: stage 1 distils from a CNN teacher's logits and
    early layers, stage 2 (from `args.distillation_stop_epoch`) trains on labels alone with the teacher released.

    The teacher is never wrapped, saved, or run outside stage-1 training steps; with a teacher cache it is not even
    loaded: stage 1 reads its outputs on stored views (METHOD.md section 6). The aligners
    ([`~dearkd_hf.alignment.StudentAligners`]) are trained and checkpointed with the student but never part of
    `save_model()`/`push_to_hub()` output. The Trainer's `model_init` and `compute_loss_func` are not taken: the
    student is built once (the aligners attach to it) and the loss is DearKD's.

    Args:
        model (`PreTrainedModel` or `torch.nn.Module`):
            The ViT student, of a family in [`~dearkd_hf.models.students.STUDENT_FAMILIES`]: transformers ViT, DeiT,
            DINOv2 (with or without registers), BEiT, Data2Vec-vision, a timm ViT/DeiT/DINOv2 loaded through
            `TimmWrapperForImageClassification`, or a DearKD ViT. Required.
        teacher_model (`torch.nn.Module`, [`~dearkd_hf.models.teachers.Teacher`] or `str`, *optional*):
            The CNN teacher, or a name/path for [`~dearkd_hf.models.teachers.load_teacher`]. Defaults to
            `args.teacher_model_name_or_path`.
        args ([`DearKDConfig`], *optional*):
            The training arguments and DearKD's knobs. Defaults to `DearKDConfig(output_dir="trainer_output")`.
        data_collator (`Callable`, *optional*):
            The collator of training batches (e.g. [`~dearkd_hf.data.collators.MixupCollator`]); as in the Trainer,
            defaults to `default_data_collator`.
        train_dataset (`torch.utils.data.Dataset`, `IterableDataset` or `datasets.Dataset`, *optional*):
            The training data: `pixel_values` and `labels` per example (after the collator).
        eval_dataset (`torch.utils.data.Dataset`, `dict[str, Dataset]` or `datasets.Dataset`, *optional*):
            The evaluation data, scored with the stage-2 loss (labels alone, no teacher).
        processing_class (`BaseImageProcessor`, *optional*):
            The student's image processor: saved with the student, and its `image_mean`/`image_std` tell the
            trainer how to re-normalise batches for the teacher.
        compute_metrics (`Callable[[EvalPrediction], dict]`, *optional*):
            Metrics computed from evaluation predictions (e.g. `dearkd_hf.data.evaluation.compute_accuracy_metrics`).
        callbacks (`list[TrainerCallback]`, *optional*):
            Callbacks added to the Trainer's defaults and to the [`DistillationStopCallback`] the trainer adds.
        optimizers (`tuple[Optimizer, LambdaLR]`, *optional*, defaults to `(None, None)`):
            An optimizer and scheduler to use instead of the Trainer's; the optimizer must include the aligners'
            parameters (`model.dearkd_aligners` while training) for alignment to learn.
        optimizer_cls_and_kwargs (`tuple[type[torch.optim.Optimizer], dict[str, Any]]`, *optional*):
            An optimizer class and its keyword arguments, built on the model's parameters (aligners included).
        preprocess_logits_for_metrics (`Callable[[torch.Tensor, torch.Tensor], torch.Tensor]`, *optional*):
            Applied to the logits before they are cached for `compute_metrics`.
        eval_data_collator (`Callable`, *optional*):
            The collator of evaluation and prediction batches. Defaults to the training collator's
            `evaluation_collator` (`collate_fn` for a `MixupCollator`, so evaluation is never mixed), else the
            training collator itself.
        image_size (`int`, *optional*):
            The side of the square images the student trains on, when it differs from the student's own (e.g. 112
            for a 224-pixel checkpoint). The student must be able to interpolate its position embeddings to it.
            Defaults to the student's own size.
        teacher_cache ([`~dearkd_hf.teacher_cache.TeacherCache`] or `str`, *optional*):
            A teacher cache (or its folder or Hub dataset id) that stage 1 reads instead of running the teacher; the
            teacher is then not needed (`teacher_model`, if given, must name the cache's teacher). The training
            dataset must be the `datasets.Dataset` the cache was written from. Defaults to `args.teacher_cache`.
    """

    _teacher_check_logged = False  # teacher_train_accuracy goes into the first training log

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: nn.Module | Teacher | str | None = None,
        args: DearKDConfig | None = None,
        *,
        data_collator: Collator | None = None,
        train_dataset: Dataset | IterableDataset | datasets.Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | datasets.Dataset | None = None,
        processing_class: BaseImageProcessor | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        eval_data_collator: Collator | None = None,
        image_size: int | None = None,
        teacher_cache: TeacherCache | str | None = None,
    ):
        if model is None:
            raise ValueError(
                "model: DearKDTrainer needs the ViT student (see dearkd_hf.models.students.STUDENT_FAMILIES)."
            )
        if args is None:
            args = DearKDConfig(output_dir="trainer_output")
        if not isinstance(args, DearKDConfig):
            raise TypeError(f"args must be a DearKDConfig (got {type(args).__name__}); it carries the DearKD knobs.")
        self.geometry = student_geometry(model, image_size)
        self.teacher_cache = load_teacher_cache(
            teacher_cache if teacher_cache is not None else args.teacher_cache, args.teacher_cache_views
        )
        self.teacher = self._load_and_check_teacher(teacher_model, args)
        self.teacher_source = self.teacher.source
        self.teacher_weights_sha256 = self.teacher.weights_sha256()  # the teacher's identity in the run fingerprint
        self.alignment_pairs = self._resolve_pairs(args)
        # Seeded as the Trainer seeds itself (it does so only later), so that the aligners start alike in every run.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        head = self._build_alignment_head(args)
        prepare_student(model, self.geometry)  # after every check: a refused student is left as it came
        self.aligners = StudentAligners(head, _autocast_dtype(args))
        self.aligners.attach(model)
        # A checkpoint of an aligning run is complete only with its aligners (resume skips or refuses it otherwise).
        self.checkpoint_files = (ALIGNERS_FILE,) if self.alignment_pairs else ()

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.eval_data_collator = eval_data_collator
        check_process_group(self.args)

        # Our losses are per-micro-batch means: let the Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        if self.args.label_names is None:
            self.label_names = ["labels"]
        self.teacher.to(self.args.device)
        # The mean/std the student's batches are normalised with (the processor's): what the data transforms must
        # apply (examples/run.py reads both this and ``geometry`` from here), and what the teacher's inputs are
        # re-normalised from.
        self.student_normalization = processor_normalization(self.processing_class, self.geometry.num_channels)
        self._check_cache(data_collator)
        self.distillation_stop = DistillationStopCallback(on_stop=self._release_teacher)
        self.add_callback(self.distillation_stop)
        self.teacher_check: TeacherCheck | None = None  # measured as training starts (see _check_teacher)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._card_arguments: dict[str, Any] = {}  # what create_model_card was told, for every later card

    # ---- set-up and validation (all before any training step) ----

    def _load_and_check_teacher(self, teacher_model: Any, args: DearKDConfig) -> Teacher | CachedTeacher:
        source = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if self.teacher_cache is not None:
            teacher = self.teacher_cache.teacher
            if source is not None and not self._is_cached_teacher(source, teacher):
                named = source if isinstance(source, str) else type(source).__name__
                raise ValueError(
                    f"teacher_model: {named!r} is not the teacher the cache was written with ({teacher.source!r}); "
                    "with teacher_cache the teacher is not needed: leave teacher_model unset, or name that teacher."
                )
            source = teacher
        if source is None:
            raise ValueError(
                "teacher_model: no teacher given; pass teacher_model=... to DearKDTrainer or set "
                "teacher_model_name_or_path in DearKDConfig."
            )
        teacher = source if isinstance(source, CachedTeacher) else load_teacher(source)
        if teacher.num_channels != self.geometry.num_channels:
            raise ValueError(
                f"teacher_model: the teacher takes {teacher.num_channels} input channels but the student takes "
                f"{self.geometry.num_channels}; build the student with num_channels={teacher.num_channels} "
                "(or a teacher with matching in_chans)."
            )
        if args.distillation_type != "none" and teacher.num_labels != self.geometry.num_labels:
            raise ValueError(
                f"teacher_model: the teacher predicts {teacher.num_labels} labels but the student "
                f"{self.geometry.num_labels}; logit distillation (distillation_type={args.distillation_type!r}) "
                "needs the same label space. Give the student num_labels matching the teacher, or set "
                "distillation_type='none' to keep only the feature alignment."
            )
        order = None
        if args.distillation_type != "none":
            order = teacher_label_order(teacher.id2label, self.geometry.id2label, args.ignore_label_names)
        self._teacher_order = None if order is None else torch.tensor(order)
        return teacher

    @staticmethod
    def _is_cached_teacher(source: Any, cached: CachedTeacher) -> bool:
        """Whether a teacher given beside a cache is the one the cache was written with: by its weights (sha256) when
        it is a module or a local folder, which a path is not (another folder's teacher at the same relative path);
        by the name recorded in the cache for a Hub name, which is not downloaded for the check."""
        if isinstance(source, str) and not looks_like_local_path(source):
            return names_cached_teacher(source, cached.source)
        return load_teacher(source).weights_sha256() == cached.weights_sha256()

    def _resolve_pairs(self, args: DearKDConfig) -> list[AlignmentPair]:
        if args.beta == 0:
            return []
        teacher = self.teacher
        return resolve_alignment_pairs(
            args.alignment_pairs, self.geometry.num_blocks, teacher.stage_names, teacher.hookable_layers()
        )

    def _build_alignment_head(self, args: DearKDConfig) -> AlignmentHead:
        """Aligners sized by one dummy teacher forward at the student's resolution (or by the cache's targets)."""
        layers = [pair.teacher_layer for pair in self.alignment_pairs]
        if self.teacher_cache is not None:
            channels = self.teacher_cache.config["student"]["target_channels"] if layers else []
        else:
            channels = teacher_feature_channels(self.teacher, layers, self.geometry.image_size)
        geometry = self.geometry
        return AlignmentHead(
            self.alignment_pairs,
            geometry.hidden_size,
            channels,
            geometry.grid,
            geometry.first_block_state,
            project_conflicts=args.align_conflicts == "project",
            agreement_gate=args.beta_schedule == "agreement",
        )

    def _check_cache(self, data_collator: Collator | None) -> None:
        """Refuse a cache made for another run, and training settings that need the teacher on every batch, before
        any data is read."""
        if self.teacher_cache is not None:
            self.teacher_cache.check_serves(
                self.geometry.image_size,
                self.geometry.grid,
                self.geometry.num_channels,
                self.student_normalization,
                self.alignment_pairs,
                mixes_batches=isinstance(data_collator, MixupCollator) and data_collator.mixup_fn.mix_prob > 0,
            )

    def run_fingerprint(self) -> dict[str, Any]:
        """BaseTrainer's (student config, schedule, data) plus the teacher's weights and DearKD's settings (every
        field DearKDConfig adds, but those that cannot change a result: ``config.NOT_IN_RUN_RECORD``)."""
        distillation = self.args.recorded_settings()
        distillation["alignment_pairs"] = [str(pair) for pair in self.alignment_pairs]
        distillation["image_size"] = self.geometry.image_size
        teacher = {"weights_sha256": self.teacher_weights_sha256}
        if self.teacher_cache is not None:
            teacher["cache"] = self.teacher_cache.fingerprint
        return {**super().run_fingerprint(), "teacher": teacher, "distillation": as_json(distillation)}

    # ---- the loss ----

    @property
    def stage(self) -> int:
        """1 while distilling, 2 after ``distillation_stop_epoch``."""
        return self.distillation_stop.stage

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage-1 or stage-2 loss in training; in evaluation the stage-2 loss, without the teacher."""
        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        distilling = model.training and self.stage == 1
        aligning = distilling and bool(self.alignment_pairs)
        if distilling:
            # The teacher first: its activations and full-size feature maps are freed (only its logits and the
            # pooled targets stay) before the student's forward stores its own for the backward pass.
            teacher_logits, targets = self._teacher_targets(pixel_values, inputs)
            if self.args.teacher_labels:  # the teacher labels every view (generated images: METHOD.md section 5)
                labels = teacher_logits.float().softmax(dim=-1)
        with self.aligners.running(aligning):
            outputs = model(pixel_values=pixel_values, **student_forward_kwargs(self.geometry, aligning))
        student = student_outputs(outputs)

        if distilling:
            beta = self._current_beta()
            loss, components = stage1_loss(
                student.cls_logits,
                student.distillation_logits,
                labels,
                teacher_logits,
                self.aligners.aligned_features(outputs),
                targets if aligning else [],
                distillation_type=self.args.distillation_type,
                alpha=self.alpha,
                beta=beta,
                tau=self.args.tau,
                label_loss_heads=self.args.label_loss_heads,
                align_ratio=self.args.align_ratio if self.args.beta_schedule == "balanced" else None,
            )
        else:
            loss = stage2_loss(student.cls_logits, student.distillation_logits, labels, self.args.label_loss_heads)
            components = {"loss_ce": loss.detach()}
        if model.training:
            check_finite_loss(loss, self.state.global_step + 1, components, inputs)
            # Stage 1 also keeps its total loss, for the line that closes its last logging window at the switch.
            self._record({**components, **({WINDOW_LOSS: loss.detach()} if distilling else {})})
        return (loss, {"logits": student.logits}) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The Trainer's, except that a batch without labels (``predict`` on new images), which the Trainer feeds to
        ``model(**inputs)`` rather than to :meth:`compute_loss`, also gets the student's forward arguments (e.g.
        ``interpolate_pos_encoding`` for a student trained at another size)."""
        if "labels" not in inputs:
            inputs = {**inputs, **student_forward_kwargs(self.geometry, output_hidden_states=False)}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    @property
    def alpha(self) -> float:
        """The logit-distillation weight of this run: ``args.alpha``, or 0 for a weak teacher when
        ``weak_teacher="no_logit_kd"`` (:mod:`~dearkd_hf.teacher_check`)."""
        weak = self.teacher_check is not None and self.teacher_check.weak
        return 0.0 if weak and self.args.weak_teacher == "no_logit_kd" else self.args.alpha

    def _check_teacher(self) -> TeacherCheck | None:
        """Score the teacher on ``teacher_check_samples`` training images as stage 1 feeds them, before stage 1; warn
        when it is weak. None when there is nothing to check (no samples asked, teacher labels, no teacher, no
        map-style training set, no stage 1, or no logit distillation: the teacher's classes may then not be the
        student's). The training's random state is left as it was."""
        args, dataset = self.args, self.train_dataset
        if not args.teacher_check_samples or args.teacher_labels or self.teacher is None:
            return None
        if args.distillation_type == "none" or args.distillation_stop_epoch == 0:  # no logit KD, or no stage 1
            return None
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
            return None
        collate = evaluation_collator_for(self.data_collator) or default_data_collator
        if self.teacher_cache is not None:
            self.teacher_cache.check_training_set(dataset)
            dataset, collate = CachedViews(self.teacher_cache, dataset, args.seed), CachedViews.collator(collate)
        indices = sample_indices(len(dataset), args.teacher_check_samples, args.seed)
        batch_size = max(1, args.per_device_eval_batch_size)
        with preserved_rng(self.args.device):
            batches = []
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = collate(items_at(dataset, chunk))
                pixel_values = batch["pixel_values"].to(self.args.device)
                logits, _ = self._teacher_targets(pixel_values, batch)
                batches.append((logits.float(), batch["labels"]))
            check = teacher_check(batches)
        if check.weak:
            action = "logit distillation is off for this run (alpha 0)" if args.weak_teacher == "no_logit_kd" else ""
            logger.warning(
                f"Weak teacher: {check.describe()}, no better than always answering the most common class; "
                f"{action or 'training as configured (weak_teacher=warn)'}. A better teacher, or none, may serve."
            )
        else:
            logger.info(f"Teacher check: {check.describe()}.")
        return check

    def _current_beta(self) -> float:
        """The alignment weight at this step (``beta_schedule``, read from the state's epoch)."""
        stop = self.distillation_stop.stop_epoch
        return scheduled_beta(self.args.beta, self.args.beta_schedule, self.state.epoch or 0.0, stop)

    def _teacher_targets(
        self, pixel_values: torch.Tensor, inputs: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's logits and alignment targets on the student's batch: read from the batch when it comes from
        a teacher cache, else the teacher run on it (re-normalised, no grad, same autocast as the student)."""
        if self.teacher_cache is not None:
            if inputs is None or "teacher_logits" not in inputs:
                raise RuntimeError(
                    "teacher_cache: a stage-1 batch came without the cached teacher outputs; the training dataloader "
                    "must be the trainer's own (get_train_dataloader), which reads them from the cache."
                )
            logits, targets = inputs["teacher_logits"], list(inputs["teacher_targets"])
        else:
            layers = [pair.teacher_layer for pair in self.alignment_pairs]
            with self.accelerator.autocast():
                logits, targets = teacher_outputs(
                    self.teacher, pixel_values, self.student_normalization, layers, self.geometry.grid
                )
        if self._teacher_order is not None:  # the teacher's classes, put in the student's order
            logits = logits[:, self._teacher_order.to(logits.device)]
        return logits, targets

    def _release_teacher(self, epoch: float) -> None:
        """Stage 2 begins: drop the teacher and return its device memory."""
        if self.teacher is not None:
            if self.teacher.module is not None:  # a cache's teacher has no weights to move
                self.teacher.module.to("cpu")
            self.teacher = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # A logging window open at the switch: its stage-1 steps get a line of their own (stage 1, their mean loss
        # and terms), so that stage 2's lines carry stage 2's loss terms only.
        if WINDOW_LOSS in self._metrics:
            means = self._component_means()
            Trainer.log(self, {"loss": means.pop(WINDOW_LOSS), **means, "stage": 1.0})
        # A run resumed in stage 2 switches at its first step; the run that crossed the stop has logged it already.
        key = "distillation_stopped_at_epoch"
        if not any(key in log for log in self.state.log_history):
            self.log({"stage": 2.0, key: float(epoch)})

    # ---- logging ----

    def _record(self, components: dict[str, torch.Tensor]) -> None:
        for key, value in components.items():
            self._metrics[key].append(value)

    def _component_means(self) -> dict[str, float]:
        """The mean of each recorded loss component since the last log (averaged over processes); then cleared."""
        means = {}
        for key, values in self._metrics.items():
            mean = torch.stack(values).float().mean().to(self.args.device)
            means[key] = self.accelerator.reduce(mean, reduction="mean").item()
        self._metrics.clear()
        return means

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss component since the last log (averaged over processes) to training logs."""
        if "loss" in logs and self.teacher_check is not None and not self._teacher_check_logged:
            logs["teacher_train_accuracy"] = self.teacher_check.accuracy  # once, beside the first training loss
            self._teacher_check_logged = True
        agreement = self.aligners.head.agreement
        if agreement is not None:  # measured in the backward passes since the last log
            for key, values in agreement.pop_measurements().items():
                self._metrics[key].extend(values)
        if "loss" in logs and self._metrics:
            means = self._component_means()
            means.pop(WINDOW_LOSS, None)  # the Trainer's own "loss" covers the window
            logs.update(means, stage=float(self.stage))
        super().log(logs, start_time)

    # ---- training data ----

    def get_train_dataloader(self):
        """BaseTrainer's (seeded batches); with a teacher cache, over :class:`CachedViews` of the
        training split, whose stage-1 items carry the teacher's cached outputs (a split the cache was not written
        from is refused here, before the first step)."""
        cache = self.teacher_cache
        if cache is None:
            return super().get_train_dataloader()
        dataset, collator = self.train_dataset, self.data_collator
        cache.check_training_set(dataset)
        views = CachedViews(cache, dataset, self.args.seed)
        return self.train_dataloader_over(super().get_train_dataloader, views, views.collator(collator), views)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """timm's repeated-augmentation sampler when ``repeated_augmentations > 1``.

        It orders the whole epoch (one replica: accelerate then splits its batches between processes), reshuffled
        every epoch through its ``set_epoch``; an epoch keeps the dataset's length.
        """
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.repeated_augmentations <= 1 or dataset is None:
            return super()._get_train_sampler(train_dataset)
        return RepeatAugSampler(
            dataset, num_replicas=1, rank=0, num_repeats=self.args.repeated_augmentations, selected_round=0
        )

    # ---- the model card ----

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset: str | list[str] | None = None,
        train_fraction: float | None = None,
        metrics: dict[str, float] | None = None,
        base_model: str | None = None,
        eval_dataset: str | None = None,
        synthetic_data: bool | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        output_dir: str | None = None,
    ) -> None:
        """Write README.md naming the teacher, DearKD's weights, pairs and stage split, the data and the metrics, with
        the YAML the Hub indexes (``model-index`` included) and a usage snippet.

        Called by ``push_to_hub`` (its keyword arguments are passed here) in place of the Trainer's generic card, and
        by :meth:`save_model`. Each argument given is remembered for the next card, so ``save_model()`` and
        ``push_to_hub()`` write the same card.

        Args:
            model_name: The card's title. Defaults to the output folder's name.
            dataset: The training data (Hub id or local folder). Defaults to "unknown".
            train_fraction: The stratified share of the training split used. Defaults to 1.
            metrics: The final evaluation's results. Defaults to the last evaluation in the log.
            base_model: What the student was initialised from (Hub id or local folder).
            eval_dataset: The evaluation data when it is not the training dataset's own split.
            synthetic_data: Whether the training images were generated from the teacher (data-free DearKD).
            license: The license in the card's metadata, e.g. ``"apache-2.0"``.
            tags: Tags added to the card's own (``push_to_hub(tags=...)`` passes them here).
            output_dir: Where to write README.md. Defaults to ``args.output_dir``.
        """
        given = {
            "model_name": model_name,
            "dataset": dataset,
            "train_fraction": train_fraction,
            "metrics": metrics,
            "base_model": base_model,
            "eval_dataset": eval_dataset,
            "synthetic_data": synthetic_data,
            "license": license,
            "tags": [tags] if isinstance(tags, str) else tags,
        }
        self._card_arguments.update({key: value for key, value in given.items() if value is not None})
        if not self.is_world_process_zero():
            return
        card = self._card_arguments
        metrics = card.get("metrics")
        if metrics is None:
            metrics = next((log for log in reversed(self.state.log_history) if "eval_loss" in log), {})
        dataset = card.get("dataset") or "unknown"
        num_train_epochs = self.state.num_train_epochs or self.args.num_train_epochs
        info = ModelCardInfo(
            model_name=card.get("model_name") or os.path.basename(os.path.normpath(self.args.output_dir)),
            teacher=self.teacher_source,
            dataset=dataset if isinstance(dataset, str) else ", ".join(dataset),
            num_train_epochs=num_train_epochs,
            distillation_stop_epoch=self.args.resolved_stop_epoch(num_train_epochs),
            alpha=self.args.alpha,
            beta=self.args.beta,
            tau=self.args.tau,
            distillation_type=self.args.distillation_type,
            alignment_pairs=[str(pair) for pair in self.alignment_pairs],
            train_fraction=card.get("train_fraction", 1.0),
            metrics={k: v for k, v in metrics.items() if k.startswith("eval_")},
            base_model=card.get("base_model"),
            eval_dataset=card.get("eval_dataset"),
            synthetic_data=card.get("synthetic_data", False),
            distillation_token=self.geometry.distillation_head,
            trust_remote_code=self.geometry.family.name == "DearKD ViT",
            license=card.get("license"),
            tags=card.get("tags", ()),
            repo_id=self.args.hub_model_id,
            hyperparameters=extract_hyperparameters_from_trainer(self),
            teacher_check=self._teacher_check_text(),
        )
        folder = output_dir or self.args.output_dir
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
            f.write(build_model_card(info))

    def _teacher_check_text(self) -> str | None:
        check = self.teacher_check
        if check is None:
            return None
        if check.weak:
            done = "logit distillation was off" if self.args.weak_teacher == "no_logit_kd" else "distilled as set"
            return f"{check.describe()}: no better than the majority class, a weak teacher ({done})"
        return check.describe()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's, without the aligners (see ``_save``); a save asked for by the user (not a checkpoint) also
        writes the model card beside the student, as ``push_to_hub`` does."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if not _internal_call:
            self.create_model_card(output_dir=output_dir)

    # ---- what is pushed: the student alone ----

    def push_to_hub(self, *args: Any, **kwargs: Any):
        """The Trainer's ``push_to_hub`` (its arguments), uploading the student's files alone
        (:data:`~dearkd_hf.hub.upload.STUDENT_FILES`): no training arguments, state, results or logs."""
        with student_files_only():
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer copies the checkpoint's config and weights to output_dir and uploads that folder; the student's
        # remote code (the config's auto_map names it) goes with them, so the Hub repo loads after every push.
        if self.is_world_process_zero():
            for name in os.listdir(checkpoint_folder):
                if name.endswith(".py"):
                    shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name))
        with student_files_only():  # hub_strategy "checkpoint": the student, not the aligners or optimizer
            super()._push_from_checkpoint(checkpoint_folder)

    # ---- the aligners (StudentAligners): trained and checkpointed, never saved as part of the student ----
    # The Trainer's private methods this class relies on are listed, with why, in PRIVATE_TRAINER_METHODS (module
    # end); tests/test_trainer_overrides.py fails when transformers changes one of them.

    @contextlib.contextmanager
    def training_session(self) -> Iterator[None]:
        """The teacher checked, and the aligners on the student for the length of ``train()``."""
        self.teacher_check = self._check_teacher()
        self.aligners.attach(self.accelerator.unwrap_model(self.model))
        try:
            yield
        finally:
            self.aligners.detach()

    @contextlib.contextmanager
    def saved_state_dict(self, folder: str, state_dict: dict | None) -> Iterator[dict]:
        """The student without the aligners. The saved student is what pipeline() can run: a grayscale student of
        another family than the DearKD ViT taking RGB (dearkd_hf.models.grayscale), one trained at another size than
        its config's at that size. A checkpoint-N folder is a resume state and keeps the channels and size the model
        trains with."""
        student = self.accelerator.unwrap_model(self.model)
        with contextlib.ExitStack() as saved_as:
            if state_dict is None and not is_checkpoint_folder(folder):
                saved_as.enter_context(saved_as_rgb(student))
                saved_as.enter_context(saved_at_training_size(student, self.geometry))
            yield self.aligners.strip(state_dict if state_dict is not None else student.state_dict())

    def write_checkpoint_files(self, checkpoint_dir: str) -> None:
        # The aligners, before the Trainer's files: it writes trainer_state.json last, so a checkpoint it wrote has
        # them (BaseTrainer._save_checkpoint calls this once the weights are known to be finite).
        self.aligners.save(checkpoint_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        student = self.accelerator.unwrap_model(model if model is not None else self.model)
        weights = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        if isinstance(student, PreTrainedModel) and os.path.isfile(weights) and not self._sharded_training():
            # transformers 5 saves weights in the checkpoint's original key format (e.g. ViT's legacy names), which
            # Trainer's raw load_state_dict does not map back; from_pretrained applies the model's key conversion.
            # Building the model draws from the global generator; keep it as it was, so a resume stays exact.
            with torch.random.fork_rng(devices=[]):
                reloaded = type(student).from_pretrained(resume_from_checkpoint)
            result = self.aligners.without_aligner_keys(student.load_state_dict(reloaded.state_dict(), strict=False))
            if result.missing_keys or result.unexpected_keys:
                logger.warning(
                    f"{resume_from_checkpoint}: the student's missing keys {result.missing_keys}, unexpected keys "
                    f"{result.unexpected_keys}."
                )
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.aligners.load(resume_from_checkpoint)

    def _sharded_training(self) -> bool:
        return bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)


# Every private ``transformers.Trainer`` method DearKDTrainer (and its mixins) overrides or calls, and why; no public
# hook does these. tests/test_trainer_overrides.py checks that each still exists with the parameters used here.
PRIVATE_TRAINER_METHODS = {
    "_get_train_sampler": "overridden: timm's RepeatAugSampler when repeated_augmentations > 1",
    "_save": "overridden (BaseTrainer): every save of the student (save_model, checkpoints, push_to_hub) through "
    "saved_state_dict (DearKD: without the aligners), only finite weights",
    "_save_checkpoint": "overridden (BaseTrainer): weights checked finite, the run recorded, the aligners written "
    "before the Trainer's trainer_state.json",
    "_load_from_checkpoint": "overridden: the student reloaded by from_pretrained (key conversion), the aligners too",
    "_get_output_dir": "called: the run folder _save_checkpoint writes the aligners into",
    "_push_from_checkpoint": "overridden: the uploads at each save send the student's files alone",
}


def _autocast_dtype(args: DearKDConfig) -> torch.dtype | None:
    """The dtype of the mixed precision ``args`` ask for (what the accelerator's autocast will use), or None."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
