"""RunFolderMixin: a trainer that owns its output folder for the length of ``train()``.

- One run per folder: ``train()`` holds the folder's lock (:class:`~dearkd_hf.output_folder.OutputFolderLock`) on the
  main process; a script that took it already (``examples/run.py``) keeps it.
- One run's checkpoints per folder: at the first save the run's fingerprint (:meth:`RunFolderMixin.run_fingerprint`:
  the model's configuration, the schedule, the data) is written to ``dearkd_run.json``; ``train()`` refuses a folder
  whose saved fingerprint differs, or whose run is finished, or where a file stands in a checkpoint folder's place.
- Only finite weights are saved: every checkpoint and every save of the model first checks the weights (one fused
  reduction) and stops the run, naming the last finite checkpoint, instead of writing inf or NaN.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import (
    TRAINER_STATE_NAME,
    check_checkpoint_slots,
    checkpoint_folders,
    clear_run,
    finished_run,
    holds_weights,
    last_complete_checkpoint,
)
from .finite import largest_weight, non_finite_weights_error
from .output_folder import (
    RUN_FILE,
    as_json,
    check_run_record,
    output_folder_lock,
    read_run_record,
    write_run_record,
)

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
# Config entries that say nothing about the model's meaning (versions, runtime switches).
_VOLATILE_CONFIG = {"transformers_version", "dtype", "torch_dtype", "output_hidden_states", "return_dict", "use_cache"}


class RunFolderMixin:
    """Put first in a trainer's bases (before ``ExactResumeMixin`` and ``transformers.Trainer``).

    ``run_data`` (a dict) is added to the data's identity in the fingerprint: what the training data is beyond its
    number of examples (``examples/run.py`` puts its data flags there).
    """

    run_data: dict[str, Any] | None = None

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ):
        with output_folder_lock(self.args.output_dir, "output_dir", enabled=self.is_world_process_zero()):
            # Taken now, from the model that trains: a save may present it otherwise (a grayscale model saved
            # taking RGB, dearkd_hf.grayscale), and the record must describe the run, not the saved form.
            self._fingerprint()
            self.check_output_folder()
            return super().train(resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)

    # ---- the fingerprint ----

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

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        largest = largest_weight(model.parameters())
        bad = not math.isfinite(largest)
        if self.args.world_size > 1:  # every process stops, or none: a sharded model's weights differ by process
            flag = torch.tensor(float(bad), device=self.args.device)
            bad = bool(self.accelerator.reduce(flag, reduction="sum") > 0)
        if bad:
            last = last_complete_checkpoint(self.args.output_dir, getattr(self, "checkpoint_files", ()))
            raise non_finite_weights_error(self.state.global_step, largest, last)
        if self.args.should_save:
            self._record_run()
            step_dir = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.write_checkpoint_files(os.path.join(self._get_output_dir(trial=trial), step_dir))
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        tensors = state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()
        largest = largest_weight(tensors.values())
        if not math.isfinite(largest):
            last = last_complete_checkpoint(self.args.output_dir, getattr(self, "checkpoint_files", ()))
            raise non_finite_weights_error(self.state.global_step, largest, last)
        target = os.path.abspath(output_dir if output_dir is not None else self.args.output_dir)
        if target == os.path.abspath(self.args.output_dir):
            self._record_run()
        super()._save(output_dir, state_dict=state_dict)
