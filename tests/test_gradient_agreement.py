"""Gradient agreement at the aligned tokens (dearkd_hf.gradient_agreement): the combination checked by hand, the
taps seeing the task's and the alignment's gradients apart in one backward, and the rules in a training run."""

from __future__ import annotations

import pytest
import torch
from helpers import make_config, make_dataset, make_resnet_teacher, make_vit
from safetensors.torch import load_file
from torch import nn

from dearkd_hf import DearKDTrainer
from dearkd_hf.alignment import ALIGNERS_FILE
from dearkd_hf.gradient_agreement import (
    AGREEMENT_MOMENTUM,
    GradientAgreement,
    agreeing_samples,
    agreement_gate,
    combine_gradients,
)

# Two samples: the first's alignment gradient opposes the task's (dot -1), the second's agrees (dot 2).
TASK = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
ALIGN = torch.tensor([[-1.0, 1.0], [1.0, 1.0]])


def test_combination_by_hand():
    kept = combine_gradients(TASK, ALIGN, project=False)
    assert torch.equal(kept, torch.tensor([[0.0, 1.0], [3.0, 1.0]]))
    assert agreeing_samples(TASK, ALIGN).tolist() == [False, True]
    # Projected: the first sample's alignment loses its part along the task, [-1, 1] + 1 * [1, 0] = [0, 1].
    projected = combine_gradients(TASK, ALIGN, project=True)
    assert torch.equal(projected, torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
    halved = combine_gradients(TASK, ALIGN, project=True, gate=0.5)
    assert torch.equal(halved, torch.tensor([[1.0, 0.5], [2.5, 0.5]]))
    zero_task = combine_gradients(torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]), project=True)
    assert torch.equal(zero_task, torch.tensor([[-1.0, 1.0]]))  # nothing to oppose: no division by zero


@pytest.mark.parametrize("share, gate", [(1.0, 1.0), (0.75, 0.5), (0.5, 0.0), (0.2, 0.0)])
def test_gate_by_hand(share, gate):
    assert agreement_gate(torch.tensor(share)).item() == pytest.approx(gate)


def two_branches(seed: int = 0):
    """A lower layer feeding ``h`` (B, 1 prefix + 4 patch tokens, 3), an upper branch (the task) and an aligner
    branch reading the patch tokens."""
    torch.manual_seed(seed)
    lower, upper, aligner = nn.Linear(3, 3), nn.Linear(3, 2), nn.Linear(3, 2)
    x, target = torch.randn(6, 5, 3), torch.randn(6, 4, 2)

    def losses(tap=lambda h: h):
        h = lower(x)
        task = upper(h).pow(2).mean()
        align = (aligner(tap(h)[:, 1:]) - target).pow(2).mean()
        return h, task, align

    return lower, losses


@pytest.mark.parametrize("project", [False, True])
def test_tap_sees_the_two_gradients_apart_and_hands_the_lower_layer_their_combination(project):
    lower, losses = two_branches()
    h, task, align = losses()
    g_task, g_align = (torch.autograd.grad(loss, h, retain_graph=True)[0] for loss in (task, align))
    combined = combine_gradients(g_task[:, 1:], g_align[:, 1:], project=project)
    agrees = agreeing_samples(g_task[:, 1:], g_align[:, 1:])
    expected_h = torch.cat([g_task[:, :1], combined], dim=1)
    expected = torch.autograd.grad(h, lower.weight, expected_h)[0]
    assert 0 < agrees.sum() < len(agrees)  # the check means something: some samples agree, some do not

    agreement = GradientAgreement(1, project=project, gate=False, num_patches=4)
    lower.zero_grad()
    _, task, align = losses(lambda h: agreement.tap(h, 0))
    (task + align).backward()
    torch.testing.assert_close(lower.weight.grad, expected)
    measured = agreement.pop_measurements()
    assert measured["align_agreement"][0].item() == pytest.approx(agrees.float().mean().item())
    assert agreement.pop_measurements() == {}


def test_gate_follows_the_running_share_of_agreeing_samples():
    lower, losses = two_branches()
    h, task, align = losses()
    g_task, g_align = (torch.autograd.grad(loss, h, retain_graph=True)[0] for loss in (task, align))
    agrees = agreeing_samples(g_task[:, 1:], g_align[:, 1:])
    share = AGREEMENT_MOMENTUM + (1 - AGREEMENT_MOMENTUM) * agrees.float().mean()
    gate = agreement_gate(share)
    combined = combine_gradients(g_task[:, 1:], g_align[:, 1:], project=False, gate=gate)
    expected = torch.autograd.grad(h, lower.weight, torch.cat([g_task[:, :1], combined], dim=1))[0]

    agreement = GradientAgreement(1, project=False, gate=True, num_patches=4)
    lower.zero_grad()
    _, task, align = losses(lambda h: agreement.tap(h, 0))
    (task + align).backward()
    assert agreement.share.item() == pytest.approx(share.item())
    torch.testing.assert_close(lower.weight.grad, expected)


def test_tap_is_the_identity_without_gradients():
    agreement = GradientAgreement(1, project=True, gate=True, num_patches=4)
    h = torch.randn(2, 5, 3)
    assert agreement.tap(h, 0) is h
    with torch.no_grad():
        assert agreement.tap(h.requires_grad_(), 0) is h


def make_trainer(output_dir, student_seed: int = 0, **overrides) -> DearKDTrainer:
    values = dict(num_train_epochs=2, per_device_train_batch_size=8, logging_steps=1, save_strategy="no", seed=0)
    values.update(distillation_stop_epoch=1.0, beta_schedule="agreement", align_conflicts="project")
    return DearKDTrainer(
        model=make_vit(seed=student_seed),
        teacher_model=make_resnet_teacher(),
        args=make_config(output_dir, **{**values, **overrides}),
        train_dataset=make_dataset(),
    )


def test_agreement_rule_in_training_logs_its_signal_and_resumes_exactly(tmp_path):
    reference = make_trainer(tmp_path / "full", save_strategy="steps", save_steps=2)
    reference.train()
    stage1 = [log for log in reference.state.log_history if "align_gate" in log]
    assert len(stage1) == 4  # one log per stage-1 step, none after the stop
    for log in stage1:
        assert 0.0 <= log["align_agreement"] <= 1.0 and 0.0 <= log["align_gate"] <= 1.0
        assert log["beta"] == 1.0  # the loss keeps beta; the gate acts on the student's gradient
    assert min(log["align_gate"] for log in stage1) < 1.0  # the gate moved: tiny random models often disagree
    saved = load_file(tmp_path / "full" / "checkpoint-2" / ALIGNERS_FILE)
    assert saved["agreement.share"].shape == (len(reference.alignment_pairs),)
    assert (saved["agreement.share"] < 1).any()

    resumed = make_trainer(tmp_path / "resumed", student_seed=9)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    expected = {log["step"]: log["loss"] for log in reference.state.log_history if "loss" in log}
    for log in resumed.state.log_history:
        if "loss" in log and log["step"] > 2:
            assert log["loss"] == pytest.approx(expected[log["step"]], rel=1e-4, abs=1e-5), log["step"]


def test_projection_changes_training_and_keep_is_todays_gradient(tmp_path):
    def final_weights(name, **overrides):
        trainer = make_trainer(tmp_path / name, num_train_epochs=1, beta_schedule="constant", **overrides)
        trainer.train()
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    keep = final_weights("keep", align_conflicts="keep")
    assert torch.equal(keep, final_weights("keep_again", align_conflicts="keep"))
    assert not torch.allclose(keep, final_weights("project", align_conflicts="project"))


def test_bad_align_conflicts_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="align_conflicts='drop' is not one of"):
        make_config(tmp_path, align_conflicts="drop")


@pytest.mark.parametrize("beta_schedule", ["agreement", "balanced"])
def test_activation_checkpointing_keeps_the_tapped_gradients(tmp_path, beta_schedule):
    """The taps hook the aligned blocks' outputs; with the student's blocks recomputed in the backward (activation
    checkpointing), the combined gradients and the running share are those of the plain run."""

    def run(name, **overrides):
        trainer = make_trainer(tmp_path / name, num_train_epochs=1, beta_schedule=beta_schedule, **overrides)
        trainer.train()
        assert trainer.model.is_activation_checkpointing == bool(overrides)
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        return weights, trainer.aligners.head.agreement.share.clone()

    plain, plain_share = run("plain")
    checkpointed, checkpointed_share = run("checkpointed", activation_checkpointing=True)
    torch.testing.assert_close(checkpointed, plain)
    torch.testing.assert_close(checkpointed_share, plain_share)
    assert beta_schedule == "balanced" or (plain_share < 1).any()  # the gate's share moved: the taps ran
