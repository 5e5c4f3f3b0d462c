"""DistillationStopCallback: ends DearKD's stage 1 at a set epoch (METHOD.md section 1)."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

# METHOD.md section 1: without an explicit stop epoch, stage 1 takes this fraction of the run's epochs.
DEFAULT_STOP_FRACTION = 0.8


def default_stop_epoch(num_train_epochs: float, fraction: float = DEFAULT_STOP_FRACTION) -> float:
    """The epoch at which stage 1 ends when no stop epoch is given: ``fraction`` of the run's epochs."""
    return fraction * float(num_train_epochs)


class DistillationStopCallback(TrainerCallback):
    """Switches from stage 1 (distillation) to stage 2 (labels alone) once ``state.epoch`` reaches ``stop_epoch``.

    The stage is derived from the trainer state's epoch at every step, never stored, so a run resumed from a
    checkpoint lands in the stage its epoch says. ``on_stop(epoch)`` is where the trainer releases its teacher.
    ``stop_epoch=None`` means ``stop_fraction`` (default :data:`DEFAULT_STOP_FRACTION`) of the run's epochs, read
    from the state when training begins. With ``save_at_stop`` it asks the Trainer for a checkpoint after the last
    stage-1 step (``save_at_distillation_stop``), the student as stage 1 leaves it.
    """

    def __init__(
        self,
        stop_epoch: float | None,
        on_stop: Callable[[float], None] | None = None,
        stop_fraction: float = DEFAULT_STOP_FRACTION,
        save_at_stop: bool = False,
    ):
        self.stop_epoch = stop_epoch
        self.stop_fraction = stop_fraction
        self.on_stop = on_stop
        self.save_at_stop = save_at_stop
        self.distilling = True

    @property
    def stage(self) -> int:
        return 1 if self.distilling else 2

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.stop_epoch is None:
            self.stop_epoch = default_stop_epoch(state.num_train_epochs, self.stop_fraction)
        self._update(state)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._update(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # The step just taken was stage 1's last when the epoch it ends at reaches the stop (see _update).
        if self.save_at_stop and self.distilling and (state.epoch or 0.0) >= self.stop_epoch - 1e-6:
            control.should_save = True
        return control

    def _update(self, state: TrainerState) -> None:
        epoch = state.epoch or 0.0
        # A tolerance: state.epoch accumulates float steps (k / steps_per_epoch).
        if self.distilling and epoch >= self.stop_epoch - 1e-6:
            self.distilling = False
            logger.info(f"DearKD: distillation stops at epoch {epoch:.3f} (stop epoch {self.stop_epoch}); stage 2.")
            if self.on_stop is not None:
                self.on_stop(epoch)
