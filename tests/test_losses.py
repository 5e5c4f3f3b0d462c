"""Stage-1 and stage-2 losses against hand computations on fixed tensors (METHOD.md sections 2-3)."""

import math

import pytest
import torch

from dearkd_hf.losses import balanced_beta, classification_loss, logit_kd, scheduled_beta, stage1_loss, stage2_loss

S_CLS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
S_DIST = torch.tensor([[0.3, 1.2, 0.1], [1.5, -0.5, 0.2]])
TEACHER = torch.tensor([[0.1, 2.0, 0.3], [4.0, 0.0, 1.0]])  # argmax: 1, 0
LABELS = torch.tensor([0, 2])
ALIGNED = [torch.tensor([[[[1.0, -1.0]]]]), torch.tensor([[[[0.5]], [[2.0]]]])]
TARGETS = [torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[1.5]], [[1.0]]]])]


def ce_by_hand(logits, labels):
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        total += math.log(sum(math.exp(v) for v in row)) - row[y]
    return total / len(labels)


def soft_kd_by_hand(student, teacher, tau):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s_z = math.log(sum(math.exp(v / tau) for v in s_row))
        t_z = math.log(sum(math.exp(v / tau) for v in t_row))
        for s, t in zip(s_row, t_row):
            p_t = math.exp(t / tau - t_z)
            total += p_t * ((t / tau - t_z) - (s / tau - s_z))
    return total * tau * tau / student.numel()


# MSE pair 1: ((1-0)^2 + (-1-1)^2) / 2 = 2.5; pair 2: ((0.5-1.5)^2 + (2-1)^2) / 2 = 1.0
ALIGN_BY_HAND = 2.5 + 1.0


def test_hard_kd_stage1_matches_hand_computation():
    loss, parts = stage1_loss(
        S_CLS, S_DIST, LABELS, TEACHER, ALIGNED, TARGETS, distillation_type="hard", alpha=0.3, beta=0.7, tau=1.0
    )
    ce = ce_by_hand(S_CLS, LABELS)
    kd = ce_by_hand(S_DIST, torch.tensor([1, 0]))
    assert parts["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["loss_kd"].item() == pytest.approx(kd, rel=1e-5)
    assert parts["loss_align"].item() == pytest.approx(ALIGN_BY_HAND, rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * ce + 0.3 * kd + 0.7 * ALIGN_BY_HAND, rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_kd_stage1_matches_hand_computation(tau):
    loss, parts = stage1_loss(
        S_CLS, S_DIST, LABELS, TEACHER, ALIGNED, TARGETS, distillation_type="soft", alpha=0.5, beta=1.0, tau=tau
    )
    kd = soft_kd_by_hand(S_DIST, TEACHER, tau)
    assert parts["loss_kd"].item() == pytest.approx(kd, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * ce_by_hand(S_CLS, LABELS) + 0.5 * kd + ALIGN_BY_HAND, rel=1e-5)


def test_kd_uses_class_logits_without_distillation_token():
    _, parts = stage1_loss(
        S_CLS, None, LABELS, TEACHER, [], [], distillation_type="hard", alpha=0.5, beta=1.0, tau=1.0
    )
    assert parts["loss_kd"].item() == pytest.approx(ce_by_hand(S_CLS, torch.tensor([1, 0])), rel=1e-5)
    assert parts["loss_align"].item() == 0.0


def test_distillation_none_keeps_alignment_and_labels_only():
    loss, parts = stage1_loss(
        S_CLS, S_DIST, LABELS, None, ALIGNED, TARGETS, distillation_type="none", alpha=0.5, beta=2.0, tau=1.0
    )
    ce = ce_by_hand((S_CLS + S_DIST) / 2, LABELS)
    assert parts["loss_kd"].item() == 0.0
    assert loss.item() == pytest.approx(ce + 2.0 * ALIGN_BY_HAND, rel=1e-5)


def test_stage2_loss_is_ce_of_averaged_logits_by_default():
    averaged = ce_by_hand((S_CLS + S_DIST) / 2, LABELS)
    assert stage2_loss(S_CLS, S_DIST, LABELS).item() == pytest.approx(averaged, rel=1e-5)
    # Not the mean of the heads' CEs (the former default): the two differ on these logits.
    assert averaged != pytest.approx((ce_by_hand(S_CLS, LABELS) + ce_by_hand(S_DIST, LABELS)) / 2, rel=1e-3)


def test_stage2_loss_each_head_averages_both_heads_or_uses_class_head_alone():
    both = (ce_by_hand(S_CLS, LABELS) + ce_by_hand(S_DIST, LABELS)) / 2
    assert stage2_loss(S_CLS, S_DIST, LABELS, "each_head").item() == pytest.approx(both, rel=1e-5)
    for heads in ("averaged_logits", "each_head"):
        assert stage2_loss(S_CLS, None, LABELS, heads).item() == pytest.approx(ce_by_hand(S_CLS, LABELS), rel=1e-5)
    with pytest.raises(ValueError, match="label_loss_heads"):
        stage2_loss(S_CLS, S_DIST, LABELS, "sum")


def test_none_kd_stage1_uses_the_chosen_label_loss():
    kwargs = dict(distillation_type="none", alpha=0.5, beta=0.0, tau=1.0)
    loss, _ = stage1_loss(S_CLS, S_DIST, LABELS, TEACHER, [], [], **kwargs)
    assert loss.item() == pytest.approx(ce_by_hand((S_CLS + S_DIST) / 2, LABELS), rel=1e-5)
    loss, _ = stage1_loss(S_CLS, S_DIST, LABELS, TEACHER, [], [], label_loss_heads="each_head", **kwargs)
    assert loss.item() == pytest.approx((ce_by_hand(S_CLS, LABELS) + ce_by_hand(S_DIST, LABELS)) / 2, rel=1e-5)


@pytest.mark.parametrize(
    "schedule, epoch, stop, expected",
    [
        ("constant", 0.0, 4.0, 2.0),
        ("constant", 3.0, 4.0, 2.0),
        ("linear", 0.0, 4.0, 2.0),
        ("linear", 1.0, 4.0, 1.5),
        ("linear", 3.0, 4.0, 0.5),
        ("linear", 4.0, 4.0, 0.0),
        ("linear", 5.0, 4.0, 0.0),
        ("linear", 0.0, 0.0, 0.0),
        ("balanced", 3.0, 4.0, 2.0),  # the ceiling; balanced_beta lowers it per step
    ],
)
def test_scheduled_beta_by_hand(schedule, epoch, stop, expected):
    assert scheduled_beta(2.0, schedule, epoch, stop) == pytest.approx(expected)


@pytest.mark.parametrize(
    "beta, ratio, task, align, expected",
    [
        (1.0, 0.5, 2.0, 4.0, 0.25),  # 0.5 * 2 / 4: the alignment term (0.25 * 4 = 1) is half the task term
        (1.0, 0.5, 2.0, 0.5, 1.0),  # 0.5 * 2 / 0.5 = 2 > beta: the ceiling beta
        (0.1, 1.0, 0.3, 1.5, 0.1),  # 1 * 0.3 / 1.5 = 0.2 > 0.1
        (2.0, 0.1, 0.3, 1.5, 0.02),  # 0.1 * 0.3 / 1.5
        (1.0, 0.5, 2.0, 0.0, 1.0),  # nothing to align: beta
    ],
)
def test_balanced_beta_by_hand(beta, ratio, task, align, expected):
    assert balanced_beta(beta, ratio, torch.tensor(task), torch.tensor(align)).item() == pytest.approx(expected)


def test_balanced_stage1_caps_the_alignment_term_at_ratio_times_the_rest_without_its_gradient():
    s_cls = S_CLS.clone().requires_grad_()
    loss, parts = stage1_loss(
        s_cls, S_DIST, LABELS, TEACHER, ALIGNED, TARGETS, distillation_type="hard", alpha=0.3, beta=1.0, tau=1.0,
        align_ratio=0.2,
    )  # fmt: skip
    task = 0.7 * ce_by_hand(S_CLS, LABELS) + 0.3 * ce_by_hand(S_DIST, torch.tensor([1, 0]))
    weight = 0.2 * task / ALIGN_BY_HAND  # about 0.12 < beta = 1
    assert parts["beta"].item() == pytest.approx(weight, rel=1e-5)
    assert loss.item() == pytest.approx(task + weight * ALIGN_BY_HAND, rel=1e-5)  # = 1.2 * task
    loss.backward()  # the weight is a constant: the class head's gradient is 0.7 * d CE, as without alignment
    plain = S_CLS.clone().requires_grad_()
    (0.7 * torch.nn.functional.cross_entropy(plain, LABELS)).backward()
    assert torch.allclose(s_cls.grad, plain.grad, atol=1e-6)
    _, fixed = stage1_loss(
        S_CLS, S_DIST, LABELS, TEACHER, ALIGNED, TARGETS, distillation_type="hard", alpha=0.3, beta=1.0, tau=1.0
    )
    assert fixed["beta"].item() == 1.0  # without align_ratio: beta as given


def test_unknown_beta_schedule_is_rejected():
    with pytest.raises(ValueError, match="beta_schedule"):
        scheduled_beta(1.0, "cosine", 0.0, 1.0)


def test_soft_targets_are_cross_entropy_not_multilabel():
    one_hot = torch.nn.functional.one_hot(LABELS, 3).float()
    assert classification_loss(S_CLS, one_hot).item() == pytest.approx(ce_by_hand(S_CLS, LABELS), rel=1e-5)
    mixed = 0.6 * one_hot + 0.4 * one_hot.flip(0)
    expected = 0.6 * ce_by_hand(S_CLS, LABELS) + 0.4 * ce_by_hand(S_CLS, LABELS.flip(0))
    assert classification_loss(S_CLS, mixed).item() == pytest.approx(expected, rel=1e-5)


def test_unknown_kd_type_is_rejected():
    with pytest.raises(ValueError, match="distillation_type"):
        logit_kd(S_CLS, TEACHER, "medium", 1.0)


def test_the_model_files_copy_of_classification_loss_agrees_with_losses():
    """modeling_dearkd_vit.py keeps its own copy (trust_remote_code): both give the same value on every label form."""
    from dearkd_hf.modeling import modeling_dearkd_vit

    one_hot = torch.nn.functional.one_hot(LABELS, 3).float()
    for labels in (LABELS, LABELS.view(-1, 1), one_hot, 0.7 * one_hot + 0.3 * one_hot.flip(0)):
        for logits in (S_CLS, S_CLS.half()):
            ours = classification_loss(logits, labels)
            theirs = modeling_dearkd_vit.classification_loss(logits, labels)
            assert ours.dtype == theirs.dtype == torch.float32 and torch.equal(ours, theirs)
