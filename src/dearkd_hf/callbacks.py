"""DistillationStopCallback: ends DearKD's stage 1 at the config's stop epoch (METHOD.md section 1)."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.utils import logging

from .config import DearKDConfig

logger = logging.get_logger(__name__)


class DistillationStopCallback(TrainerCallback):
    """Switches from stage 1 (distillation) to stage 2 (labels alone) once ``state.epoch`` reaches the stop epoch.

    The stop epoch is :meth:`DearKDConfig.resolved_stop_epoch` of the run's epochs, taken when training begins (the
    config owns it). The stage is derived from the trainer state's epoch at every step, never stored, so a run
    resumed from a checkpoint lands in the stage its epoch says. ``on_stop(epoch)`` is where the trainer releases
    its teacher. With ``save_at_distillation_stop`` it asks the Trainer for a checkpoint after the last stage-1 step,
    the student as stage 1 leaves it.
    """

    def __init__(self, on_stop: Callable[[float], None] | None = None):
        self.on_stop = on_stop
        self.stop_epoch: float | None = None
        self.distilling = True

    @property
    def stage(self) -> int:
        return 1 if self.distilling else 2

    def on_train_begin(self, args: DearKDConfig, state: TrainerState, control: TrainerControl, **kwargs):
        self.stop_epoch = args.resolved_stop_epoch(state.num_train_epochs)
        self._update(args, state)

    def on_step_begin(self, args: DearKDConfig, state: TrainerState, control: TrainerControl, **kwargs):
        self._update(args, state)

    def on_step_end(self, args: DearKDConfig, state: TrainerState, control: TrainerControl, **kwargs):
        # The step just taken was stage 1's last when the epoch it ends at reaches the stop (see _update).
        if args.save_at_distillation_stop and self.distilling and (state.epoch or 0.0) >= self.stop_epoch - 1e-6:
            control.should_save = True
        return control

    def _update(self, args: DearKDConfig, state: TrainerState) -> None:
        if self.stop_epoch is None:  # a step driven without on_train_begin (a benchmark stepping by hand)
            self.stop_epoch = args.resolved_stop_epoch(state.num_train_epochs)
        epoch = state.epoch or 0.0
        # A tolerance: state.epoch accumulates float steps (k / steps_per_epoch).
        if self.distilling and epoch >= self.stop_epoch - 1e-6:
            self.distilling = False
            logger.info(f"DearKD: distillation stops at epoch {epoch:.3f} (stop epoch {self.stop_epoch}); stage 2.")
            if self.on_stop is not None:
                self.on_stop(epoch)
