"""Finite numbers only: a NaN/inf setting refused before any work, a non-finite loss stopped before the optimizer
step, weights that are not finite never saved. Each error names the argument or step at fault and what to do
instead; the scripts and the library share them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch


def require_finite(config: Any, prefix: str = "") -> None:
    """Every float field of the dataclass ``config`` (and every float in a list field) must be finite.

    Range checks of the form ``x <= 0`` let NaN through (every comparison with NaN is false), which then trains to
    a NaN model; this check comes first. ``prefix`` is how a field is named in the error (``"--"`` for flags).
    """
    for config_field in dataclasses.fields(config):
        value = getattr(config, config_field.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{prefix}{config_field.name}={value} is not a finite number; give a finite value.")


def check_finite_loss(
    loss: torch.Tensor,
    step: int,
    components: Mapping[str, torch.Tensor],
    inputs: Mapping[str, Any] | None = None,
) -> None:
    """Stop training at the first NaN/inf loss, naming the step and each loss component; when the batch's
    ``inputs`` themselves hold NaN/inf (checked only then), naming those inputs instead: the data is at fault, and
    a lower learning rate would not help.

    Raised before the optimizer step, so the weights (and every checkpoint already written) are still finite and
    no NaN model is ever saved as the run's result.
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    bad_inputs = non_finite_inputs(inputs or {})
    if bad_inputs:
        named = ", ".join(
            f"{name} holds NaN/inf ({bad} of {total} values)" for name, (bad, total) in bad_inputs.items()
        )
        raise FloatingPointError(
            f"Training step {step}: the batch's {named}, so the loss is {float(loss.detach().float().mean())}: the "
            "data is at fault, not the training settings. Training stopped and no model was saved as the result. "
            "Find and fix or drop the examples with non-finite values (images are checked as they are opened; a "
            "dataset of ready tensors is not), then resume from the last checkpoint."
        )
    raise non_finite_error(
        f"Training step {step}",
        float(loss.detach().float().mean()),
        {name: float(value.detach().float().mean()) for name, value in components.items()},
        "Training stopped and no model was saved as the result. Lower the learning rate or the loss weights, or "
        "train in float32, then resume from the last checkpoint.",
    )


def non_finite_inputs(inputs: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``{name: (non-finite count, size)}`` of the floating-point tensors in ``inputs`` that hold NaN/inf."""
    found = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value.detach())
            if not bool(finite.all()):
                found[name] = (int(finite.numel() - finite.sum()), finite.numel())
    return found


def non_finite_error(where: str, loss: float, components: Mapping[str, float], what_now: str) -> FloatingPointError:
    """The one message for a loss that is not a finite number: where, the loss and its terms, then ``what_now``
    (what was kept and the fix)."""
    parts = ", ".join(f"{name}={value:.6g}" for name, value in components.items())
    return FloatingPointError(f"{where}: the loss is {loss} ({parts}), not a finite number. {what_now}")


def largest_weight(tensors: Iterable[torch.Tensor]) -> float:
    """The largest absolute value among the floating-point ``tensors``: inf or NaN when any is not finite.

    One fused reduction (per-tensor max-norms stacked into one, grouped by device and dtype), and no overflow: a
    max, unlike a sum of squares, is finite whenever every weight is.
    """
    floats = [t.detach() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not floats:
        return 0.0
    return float(torch.nn.utils.get_total_norm(floats, norm_type=math.inf))


def non_finite_weights_error(step: int, largest: float, last_checkpoint: str | None) -> FloatingPointError:
    """The one message for weights that are not finite at a save: nothing written, resume from ``last_checkpoint``."""
    resume = (
        f"The last finite checkpoint is {last_checkpoint}: resume from it"
        if last_checkpoint is not None
        else "No finite checkpoint was written before it: start afresh"
    )
    return FloatingPointError(
        f"Training step {step}: the model's weights are not finite (largest |weight| = {largest}), so nothing was "
        f"saved. {resume} with a lower --learning_rate (or gradient clipping, --max_grad_norm)."
    )
