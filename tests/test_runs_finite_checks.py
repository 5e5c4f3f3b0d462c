"""runs/finite_checks.py: NaN/inf settings refused before any work, a non-finite loss stopped naming the step and
each term, weights that are not finite found and named."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dearkd_hf.runs.finite_checks import (
    check_finite_loss,
    largest_weight,
    non_finite_error,
    non_finite_weights_error,
    require_finite,
)


@dataclasses.dataclass
class Settings:
    tau: float = 1.0
    ratios: list = dataclasses.field(default_factory=lambda: [0.5, 1.0])
    steps: int = 3
    name: str | None = None


def test_require_finite_names_the_first_non_finite_field():
    require_finite(Settings())
    with pytest.raises(ValueError, match=r"^tau=nan is not a finite number; give a finite value\.$"):
        require_finite(Settings(tau=float("nan")))
    with pytest.raises(ValueError, match=r"^--ratios=\[0\.5, inf\] is not a finite number"):
        require_finite(Settings(ratios=[0.5, float("inf")]), prefix="--")
    with pytest.raises(ValueError, match=r"^tau=-inf"):
        require_finite(Settings(tau=float("-inf"), ratios=(float("nan"),)))


def test_a_finite_loss_passes_and_a_non_finite_one_stops_naming_its_terms():
    check_finite_loss(torch.tensor(1.5), step=3, components={"loss_ce": torch.tensor(1.5)})
    components = {"loss_ce": torch.tensor(0.25), "loss_kd": torch.tensor(float("nan"))}
    with pytest.raises(FloatingPointError) as stopped:
        check_finite_loss(torch.tensor(float("nan")), step=3, components=components)
    assert str(stopped.value).startswith(
        "Training step 3: the loss is nan (loss_ce=0.25, loss_kd=nan), not a finite number. Training stopped and no "
        "model was saved as the result."
    )
    with pytest.raises(FloatingPointError, match=r"Training step 4: the loss is inf \(\), not a finite number"):
        check_finite_loss(torch.tensor([1.0, float("inf")]), step=4, components={})


def test_non_finite_error_is_one_message():
    error = non_finite_error("batch 1", float("nan"), {"bn": 1e-7, "total": float("nan")}, "Lower --lr.")
    assert isinstance(error, FloatingPointError)
    assert str(error) == "batch 1: the loss is nan (bn=1e-07, total=nan), not a finite number. Lower --lr."


def test_largest_weight_is_inf_or_nan_when_any_weight_is_not_finite():
    weights = [torch.tensor([1.0, -3.0]), torch.tensor([[2.0]], dtype=torch.bfloat16), torch.tensor([100])]
    assert largest_weight(weights) == 3.0  # integer tensors (e.g. step counters) are not weights
    assert largest_weight([]) == 0.0 and largest_weight([torch.tensor([7])]) == 0.0
    assert largest_weight([*weights, torch.tensor([float("-inf")])]) == math.inf
    assert math.isnan(largest_weight([*weights, torch.tensor([float("nan")])]))
    assert largest_weight([torch.full((3,), 3e38), torch.full((3,), -3e38)]) == pytest.approx(3e38)  # no overflow


def test_non_finite_weights_error_says_where_to_resume():
    error = non_finite_weights_error(2, math.inf, "out/checkpoint-1")
    assert str(error) == (
        "Training step 2: the model's weights are not finite (largest |weight| = inf), so nothing was saved. The "
        "last finite checkpoint is out/checkpoint-1: resume from it with a lower --learning_rate (or gradient "
        "clipping, --max_grad_norm)."
    )
    assert "No finite checkpoint was written before it: start afresh with a lower" in str(
        non_finite_weights_error(1, math.nan, None)
    )
