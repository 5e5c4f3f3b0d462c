"""BaseTrainer: a ``transformers.Trainer`` whose runs are safe to kill and re-run. DearKDTrainer and the teacher
script's trainer both build on it; everything here is about the run, nothing about distillation.

- **One run per folder.** ``train()`` holds the folder's lock (:mod:`dearkd_hf.runs.lock`) on the main process (a
  script that took it already keeps it). At the first save the run's fingerprint (:meth:`BaseTrainer.run_fingerprint`:
  the model's configuration, the schedule, the data) is written to ``dearkd_run.json`` (:mod:`dearkd_hf.runs.record`);
  ``train()`` refuses a folder whose saved fingerprint differs, or whose run is finished, or where a file stands in a
  checkpoint folder's place.
- **Exact resume.** ``train(resume_from_checkpoint=True)`` takes the last *complete* checkpoint
  (:func:`~dearkd_hf.runs.checkpoints.last_complete_checkpoint`). A resume in the middle of an epoch is bit-identical
  to the uninterrupted run: the Trainer's data loader fetches each batch one step ahead, so the first resumed batch's
  augmentation was drawn, in the uninterrupted run, from a random state no checkpoint holds. Each training batch is
  therefore transformed and collated under generators seeded by ``(seed, epoch, its example indices)``
  (:class:`~dearkd_hf.runs.seeded_batches.SeededBatches`), and the global generators are put back afterwards.
- **Finite weights only.** Every checkpoint and every save first checks the weights (one fused reduction) and stops
  the run, naming the last finite checkpoint, instead of writing inf or NaN.
- **A session that trains nothing reports no 0.0 loss.** A run killed after its last step but before its final save
  resumes with nothing left to train; the Trainer would report ``train_loss`` 0.0 (the mean over no steps). It is
  the run's mean loss per step instead, rebuilt from the logged windows (:func:`logged_mean_loss`) when they cover
  every step, and left out otherwise. Each resume marks its step in the log history (``RESUMED_KEY``), so that a
  window after a resume is never taken to cover the steps the killed session trained without logging them.
- **Evaluation never mixed.** Evaluation and prediction batches go through ``eval_data_collator`` (by default the
  training collator's ``evaluation_collator``: ``collate_fn`` for a ``MixupCollator``).

A subclass adapts it through four hooks, so that ``train()`` and ``_save`` are overridden here only:
:meth:`training_session` (what is set up for the length of ``train()``), :meth:`saved_state_dict` (what a save
writes), :meth:`write_checkpoint_files` (files a checkpoint holds besides the Trainer's) and :meth:`run_fingerprint`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data.collators import Collator, evaluation_collator_for
from .runs.checkpoints import (
    TRAINER_STATE_NAME,
    check_checkpoint_slots,
    checkpoint_folders,
    checkpoint_problem,
    clear_run,
    finished_run,
    holds_weights,
    last_complete_checkpoint,
)
from .runs.finite_checks import largest_weight, non_finite_weights_error
from .runs.lock import output_folder_lock
from .runs.record import (
    RUN_FILE,
    as_json,
    check_run_record,
    differences_text,
    read_run_record,
    write_run_record,
)
from .runs.seeded_batches import SeededBatches

logger = logging.getLogger(__name__)

# The TrainingArguments that change what a checkpoint means: the optimisation and its schedule.
SCHEDULE_ARGUMENTS = (
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "optim",
    "optim_args",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "data_seed",
    "fp16",
    "bf16",
)
# The log-history entry a resumed session adds at its first step: {RESUMED_KEY: step, "step": step}.
RESUMED_KEY = "resumed_from_step"

# Config entries that say nothing about the model's meaning (versions, runtime switches).
_VOLATILE_CONFIG = {"transformers_version", "dtype", "torch_dtype", "output_hidden_states", "return_dict", "use_cache"}


class EpochListener(Protocol):
    """What :meth:`BaseTrainer.train_dataloader_over` tells about the epochs: ``set_epoch`` at each epoch's start
    (before its batches are requested); ``begin_training(args, state)``, when defined, as training begins."""

    def set_epoch(self, epoch: float | None) -> None: ...


class _EpochSync(TrainerCallback):
    """Tells one listener each new epoch, from the callback's ``state`` (the trainer replaces its state object when
    training starts and when it resumes). One callback per listener type, found again by ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.listener: EpochListener | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        begin = getattr(self.listener, "begin_training", None)
        if begin is not None:
            begin(args, state)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.listener is not None:
            self.listener.set_epoch(state.epoch)


class _Sessions(TrainerCallback):
    """Keeps the step this ``train()`` session began at, and marks a resume's step in the log history."""

    session_start: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session_start = state.global_step
        if state.global_step > 0:
            state.log_history.append({RESUMED_KEY: state.global_step, "step": state.global_step})


def logged_mean_loss(log_history: list[dict[str, Any]], last_step: int) -> float | None:
    """The mean training loss per step over steps 1..``last_step``, from the Trainer's own logging lines (each with a
    ``learning_rate``; each the mean loss of the steps since the previous line, or since the session's resume), or
    None when those windows do not cover every step (steps after the last line, or before a resume that came after
    the previous line)."""
    total, covered_to, start = 0.0, 0, 0
    for entry in log_history:
        if RESUMED_KEY in entry:
            if entry[RESUMED_KEY] != covered_to:
                return None  # the killed session trained steps no line covers
            start = entry[RESUMED_KEY]
        elif "loss" in entry and "learning_rate" in entry and isinstance(entry.get("step"), int):
            step = entry["step"]
            if step <= start:
                return None
            total += float(entry["loss"]) * (step - start)
            covered_to = start = step
    return total / covered_to if covered_to == last_step > 0 else None


class BaseTrainer(Trainer):
    """A ``transformers.Trainer`` that owns its output folder, resumes exactly and evaluates unmixed (see the module).

    Attributes a subclass or caller may set:
        run_data (`dict`, *optional*): what the training data is beyond its number of examples, added to the data's
            identity in the fingerprint (``examples/run.py`` puts its data flags there).
        checkpoint_files (`tuple[str, ...]`): files a complete checkpoint of this trainer must hold besides the
            Trainer's own (see :func:`~dearkd_hf.runs.checkpoints.checkpoint_problem`).
        eval_data_collator (`Callable`, *optional*): the collator of evaluation and prediction batches; None means
            :func:`~dearkd_hf.data.collators.evaluation_collator_for` the training collator.
    """

    run_data: dict[str, Any] | None = None
    checkpoint_files: tuple[str, ...] = ()
    eval_data_collator: Collator | None = None

    # ---- train(): the folder held and checked, the checkpoint chosen, the subclass's session open ----

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ):
        with output_folder_lock(self.args.output_dir, "output_dir", enabled=self.is_world_process_zero()):
            # Taken now, from the model that trains: a save may present it otherwise (a grayscale model saved
            # taking RGB, dearkd_hf.models.grayscale), and the record must describe the run, not the saved form.
            self._fingerprint()
            self.check_output_folder()
            resume_from_checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
            if self._sessions() is None:
                self.add_callback(_Sessions())
            with self.training_session():
                output = super().train(resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)
        # The loss that log() reported (the run's, or none: see the module), not the Trainer's 0.0 of no steps.
        return output._replace(training_loss=output.metrics.get("train_loss"))

    def _sessions(self) -> _Sessions | None:
        return next((c for c in self.callback_handler.callbacks if isinstance(c, _Sessions)), None)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's, except that the closing line of a session that trained no step reports the run's mean loss
        per step (:func:`logged_mean_loss`) as ``train_loss``, or none when the logs cannot tell it, never 0.0."""
        sessions = self._sessions()
        if "train_loss" in logs and sessions is not None and sessions.session_start == self.state.global_step:
            loss = logged_mean_loss(self.state.log_history, self.state.global_step)
            if loss is None:
                logs.pop("train_loss")  # the dict the Trainer returns as train()'s metrics
                logger.warning(
                    "This session resumed at the run's last step and trained nothing; the logged losses do not cover "
                    "every step of the run (--logging_steps), so no train_loss is reported."
                )
            else:
                logs["train_loss"] = loss
        super().log(logs, start_time)

    @contextlib.contextmanager
    def training_session(self) -> Iterator[None]:
        """What a subclass sets up for the length of ``train()`` and takes down after it, even on an error."""
        yield

    def _checkpoint_to_resume(self, resume_from_checkpoint: str | bool | None) -> str | bool | None:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, self.checkpoint_files)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint in {self.args.output_dir}.")
        elif resume_from_checkpoint:
            problem = checkpoint_problem(resume_from_checkpoint, self.checkpoint_files)
            if problem is not None:
                raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint}: cannot resume from it, {problem}.")
            self._check_checkpoint_run(resume_from_checkpoint)
        return resume_from_checkpoint

    def _check_checkpoint_run(self, checkpoint: str) -> None:
        """A checkpoint of another folder's run resumes only with that run's settings (its record, when it has one):
        a resume continues that run, and this folder's record would otherwise describe it wrongly."""
        folder = os.path.dirname(os.path.abspath(checkpoint))
        saved = read_run_record(folder)
        if folder == os.path.abspath(self.args.output_dir) or saved is None:
            return
        differences = differences_text(saved, self._fingerprint())
        if differences:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint}: that checkpoint's run was made with other settings "
                f"({differences}). Resume it with its own settings (see {folder}/{RUN_FILE}), "
                "or start a new run from its weights (e.g. --model_name_or_path pointing to a saved model)."
            )

    # ---- the run's fingerprint and the folder's check ----

    def run_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint of this run means: the model's configuration, the schedule and the data."""
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        described = {"class": type(model).__name__}
        if hasattr(config, "to_dict"):
            described.update(
                {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG and not k.startswith("_")}
            )
        else:
            described["parameter_shapes"] = {name: list(p.shape) for name, p in model.named_parameters()}
        schedule = {name: getattr(self.args, name) for name in SCHEDULE_ARGUMENTS if hasattr(self.args, name)}
        schedule["num_processes"] = self.args.world_size
        dataset = self.train_dataset
        data = {"num_examples": len(dataset) if hasattr(dataset, "__len__") else None, **(self.run_data or {})}
        return as_json({"model": described, "schedule": schedule, "data": data})

    def check_output_folder(self) -> None:
        """Refuse, before any work, a folder that this run cannot train into (see the module's docstring)."""
        output_dir = self.args.output_dir
        check_checkpoint_slots(output_dir, "output_dir")
        folders = checkpoint_folders(output_dir)
        has_run = folders or holds_weights(output_dir) or os.path.isfile(os.path.join(output_dir, TRAINER_STATE_NAME))
        if not has_run:
            return
        overwrite = hasattr(self.args, "overwrite_output_dir")
        if overwrite and self.args.overwrite_output_dir:
            if self.is_world_process_zero():
                deleted = clear_run(output_dir, extra_files=(RUN_FILE,))
                logger.warning(f"overwrite_output_dir: deleted the run in {output_dir} ({', '.join(deleted)}).")
            self.accelerator.wait_for_everyone()  # no process looks for a checkpoint to resume before they are gone
            return
        afresh = "or --overwrite_output_dir" if overwrite else f"or delete its checkpoint-* folders and {RUN_FILE}"
        if read_run_record(output_dir) is None:
            logger.warning(f"{output_dir} holds a run but no {RUN_FILE}: the run's settings cannot be checked.")
        else:
            check_run_record(output_dir, self._fingerprint(), "output_dir", afresh)
        finished = finished_run(output_dir)
        if finished is not None:
            if not overwrite:
                afresh = f"or delete its checkpoint-* folders, {TRAINER_STATE_NAME} and {RUN_FILE}"
            raise ValueError(
                f"output_dir {output_dir} holds a finished run (step {finished[0]} of {finished[1]}): nothing to "
                f"resume. To train again, choose a new --output_dir ({afresh} to start afresh there)."
            )

    def _fingerprint(self) -> dict[str, Any]:
        if getattr(self, "_run_fingerprint", None) is None:
            self._run_fingerprint = self.run_fingerprint()
        return self._run_fingerprint

    def _record_run(self) -> None:
        """Write the fingerprint at the first save (one left by a run that saved nothing is replaced)."""
        if read_run_record(self.args.output_dir) != self._fingerprint():
            write_run_record(self.args.output_dir, self._fingerprint())

    # ---- saving: finite weights only, the run recorded first ----

    def write_checkpoint_files(self, checkpoint_dir: str) -> None:
        """Write the files a checkpoint holds besides the Trainer's (e.g. the aligners), before the Trainer's own:
        its ``trainer_state.json`` comes last, so a checkpoint that has it has these too."""

    @contextlib.contextmanager
    def saved_state_dict(self, folder: str, state_dict: dict | None) -> Iterator[dict]:
        """The tensors a save into ``folder`` writes (``state_dict`` when given, else the model's), held for the length
        of the save: a subclass may present the model otherwise while it is saved, or leave tensors out."""
        yield state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        largest = largest_weight(model.parameters())
        bad = not math.isfinite(largest)
        if self.args.world_size > 1:  # every process stops, or none: a sharded model's weights differ by process
            flag = torch.tensor(float(bad), device=self.args.device)
            bad = bool(self.accelerator.reduce(flag, reduction="sum") > 0)
        if bad:
            last = last_complete_checkpoint(self.args.output_dir, self.checkpoint_files)
            raise non_finite_weights_error(self.state.global_step, largest, last)
        if self.args.should_save:
            self._record_run()
            step_dir = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.write_checkpoint_files(os.path.join(self._get_output_dir(trial=trial), step_dir))
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        folder = output_dir if output_dir is not None else self.args.output_dir
        with self.saved_state_dict(folder, state_dict) as tensors:
            largest = largest_weight(tensors.values())
            if not math.isfinite(largest):
                last = last_complete_checkpoint(self.args.output_dir, self.checkpoint_files)
                raise non_finite_weights_error(self.state.global_step, largest, last)
            if os.path.abspath(folder) == os.path.abspath(self.args.output_dir):
                self._record_run()
            super()._save(output_dir, state_dict=tensors)

    # ---- data loaders: seeded training batches, unmixed evaluation batches ----

    def get_train_dataloader(self):
        """The Trainer's, each batch seeded by ``(seed, epoch, its example indices)`` (map-style datasets)."""
        dataset = self.train_dataset
        if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
            return super().get_train_dataloader()
        batches = SeededBatches(self.args.seed)
        return self.train_dataloader_over(
            super().get_train_dataloader, batches.dataset(dataset), batches.collator(self.data_collator), batches
        )

    def train_dataloader_over(
        self, build: Callable[[], Any], dataset: Any, collator: Collator, listener: EpochListener
    ) -> Any:
        """``build()`` (a training-dataloader builder) run with ``dataset`` and ``collator`` in place of the trainer's
        own for that one call, and ``listener`` told each epoch by one callback per listener type (its
        :class:`EpochListener` methods)."""
        name = type(listener).__name__
        sync = next((c for c in self.callback_handler.callbacks if isinstance(c, _EpochSync) and c.name == name), None)
        if sync is None:
            sync = _EpochSync(name)
            self.add_callback(sync)
        sync.listener = listener
        own = self.train_dataset, self.data_collator
        self.train_dataset, self.data_collator = dataset, collator
        try:
            return build()
        finally:
            self.train_dataset, self.data_collator = own

    def get_eval_dataloader(self, eval_dataset: Any = None):
        """The Trainer's evaluation dataloader, batched by ``eval_data_collator``."""
        return self._with_eval_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset: Any):
        """The Trainer's prediction dataloader, batched by ``eval_data_collator``."""
        return self._with_eval_collator(super().get_test_dataloader, test_dataset)

    def _with_eval_collator(self, build: Callable[[Any], Any], dataset: Any):
        # The Trainer builds every dataloader from self.data_collator: set the training collator aside for one call.
        collator = self.eval_data_collator or evaluation_collator_for(self.data_collator)
        if collator is self.data_collator:
            return build(dataset)
        train_collator, self.data_collator = self.data_collator, collator
        try:
            return build(dataset)
        finally:
            self.data_collator = train_collator


def check_process_group(args: Any) -> None:
    """Refuse processes that a launcher (torchrun, accelerate) started together but that did not join one training
    group: each would train alone, into the same output_dir (torchrun on CPU without ``use_cpu=True``, say)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size != launched:
        raise ValueError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but this one trains in a group of "
            f"{args.world_size}: each would train alone into the same output_dir. On CPU pass --use_cpu true "
            "(use_cpu=True), which joins them over gloo; on GPUs launch one process per visible GPU."
        )
