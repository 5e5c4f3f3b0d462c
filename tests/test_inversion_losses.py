"""The inversion loss terms on fixed tensors, and InversionConfig's validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dearkd_hf.inversion import InversionConfig
from dearkd_hf.inversion.losses import (
    BatchNormStatistics,
    batchnorm_statistics_loss,
    bpid_boundary,
    bpid_intra,
    competition_loss,
    l2_prior,
    total_variation,
)


def one_bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)
    ).eval()


def test_batchnorm_term_is_zero_at_the_running_statistics_and_positive_elsewhere():
    model = one_bn_model()
    images = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        bn_input = model[0](images)
    model[1].running_mean.copy_(bn_input.mean(dim=(0, 2, 3)))
    model[1].running_var.copy_(bn_input.var(dim=(0, 2, 3), unbiased=False))

    statistics = BatchNormStatistics(model)
    with statistics:
        model(images)
        assert statistics.loss(first_bn_multiplier=10.0).item() == pytest.approx(0.0, abs=1e-5)
        model(images * 2 + 1)
        assert statistics.loss(first_bn_multiplier=10.0).item() > 0.1


def test_batchnorm_term_is_the_norm_of_the_statistics_gaps_weighted_for_the_first_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).eval()
    for layer in model:
        layer.running_mean.uniform_()
        layer.running_var.uniform_(0.5, 2)
    images = torch.randn(3, 2, 4, 4)
    mean, var = images.mean(dim=(0, 2, 3)), images.var(dim=(0, 2, 3), unbiased=False)
    expected_first = math.dist(mean.tolist(), model[0].running_mean.tolist()) + math.dist(
        var.tolist(), model[0].running_var.tolist()
    )
    assert batchnorm_statistics_loss(images, model[0].running_mean, model[0].running_var).item() == pytest.approx(
        expected_first, rel=1e-5
    )
    with BatchNormStatistics(model) as statistics:
        model(images)
        second = batchnorm_statistics_loss(model[0](images), model[1].running_mean, model[1].running_var)
        assert statistics.loss(10.0).item() == pytest.approx(10 * expected_first + second.item(), rel=1e-5)
    assert all(not layer._forward_hooks for layer in model), "hooks must be removed on exit"


def test_a_model_without_batchnorm_cannot_be_inverted():
    with pytest.raises(ValueError, match="cannot be inverted: no BatchNorm2d layers"):
        BatchNormStatistics(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


def test_bpid_terms_match_a_hand_computation():
    features = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.2, 0.6, 0.0], [0.0, 3.0, 0.0], [1.0, 1.5, 1.2], [0.0, 0.0, 0.0]])

    # The batch mean is (2, 1.4); the centred features, by hand:
    centred = [[1.0, 2.6], [-1.0, -1.4], [-2.0, 0.6], [-1.0, -0.4], [3.0, -1.4]]
    cosine = [
        (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))
        for a, b in ((centred[0], centred[1]), (centred[2], centred[3]))  # the same-class pairs
    ]
    assert cosine == pytest.approx([-4.64 / math.sqrt(7.76 * 2.96), 1.76 / math.sqrt(4.36 * 1.16)])
    assert bpid_intra(features, labels).item() == pytest.approx(sum(cosine) / 2, rel=1e-6)

    margin = 1.0
    hinge = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        best_other = max(value for c, value in enumerate(row) if c != y)
        hinge.append(max(0.0, margin - (row[y] - best_other)))
    assert hinge == pytest.approx([0.0, 1.4, 0.0, 0.7, 1.0])
    assert bpid_boundary(logits, labels, margin).item() == pytest.approx(sum(hinge) / len(hinge), rel=1e-6)


def test_bpid_intra_ignores_what_every_feature_shares():
    """The raw cosine of non-negative features is near 1 once they share a large component; centred, it is not."""
    features = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # centred: (1, -1), (-1, 1), (1, 1), (-1, -1): each same-class pair points in opposite directions
    assert bpid_intra(features, labels).item() == pytest.approx(-1.0)
    assert bpid_intra(features + 100.0, labels).item() == pytest.approx(-1.0)
    shifted = features + torch.tensor([50.0, 30.0])
    assert bpid_intra(shifted, labels).item() == pytest.approx(bpid_intra(features, labels).item(), abs=1e-6)


def test_bpid_intra_is_zero_without_same_class_pairs():
    assert bpid_intra(torch.randn(3, 4), torch.tensor([0, 1, 2])).item() == 0.0


def test_image_priors_match_a_hand_computation():
    images = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    # horizontal (1, 4), vertical (3, 6), anti-diagonal 4 - 2, diagonal 1 - 8
    expected_tv = math.hypot(1, 4) + math.hypot(3, 6) + 2 + 7
    assert total_variation(images).item() == pytest.approx(expected_tv, rel=1e-6)
    assert l2_prior(images).item() == pytest.approx(math.sqrt(1 + 4 + 16 + 64), rel=1e-6)


def test_competition_term_is_one_when_student_agrees_and_lower_when_it_does_not():
    teacher_logits = torch.tensor([[4.0, 0.0, -4.0], [0.0, 5.0, 0.0]])
    assert competition_loss(teacher_logits, teacher_logits).item() == pytest.approx(1.0)
    disagreeing = competition_loss(teacher_logits.flip(1) * 3, teacher_logits).item()
    assert 0.0 <= disagreeing < 0.95


def test_config_defaults_follow_deepinversion_and_resolve_from_the_teacher():
    config = InversionConfig()
    assert (config.iterations, config.lr, config.betas, config.r_bn, config.first_bn_multiplier) == (
        2000,
        0.25,
        [0.5, 0.9],
        0.01,
        10.0,
    )
    resolved = config.resolved(teacher_input_size=32)
    assert (resolved.resolution, resolved.jitter) == (32, 4)
    assert InversionConfig(resolution=64, jitter=0).resolved(32).jitter == 0
    assert InversionConfig().resolved(None).resolution == 224


@pytest.mark.parametrize(
    "field, value",
    [
        ("iterations", 0),
        ("lr", 0.0),
        ("batch_size", 1),
        ("betas", [0.5]),
        ("r_bn", -1.0),
        ("jitter", 16),
        ("method", "gan"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"InversionConfig.{field}="):
        InversionConfig(resolution=16, **{field: value})


@pytest.mark.parametrize(
    "field, value, rule",
    [
        ("fast_steps", 0, "must be >= 1"),
        ("fast_warmup", -1, "must be >= 0"),
        ("fast_lr", 0.0, "must be > 0"),
        ("fast_latent_lr", -0.1, "must be >= 0"),
        ("fast_meta_lr", 1.5, r"must be in \(0, 1\]"),
        ("fast_meta_lr", 0.0, r"must be in \(0, 1\]"),
        ("fast_width", 0, "must be >= 1"),
        ("fast_latent_dim", 0, "must be >= 1"),
    ],
)
def test_fast_settings_out_of_range_name_the_field_and_the_range(field, value, rule):
    with pytest.raises(ValueError, match=f"InversionConfig.{field}={value!r} {rule}"):
        InversionConfig(method="fast", **{field: value})


def test_a_setting_of_the_other_method_is_refused_and_left_out_of_the_record():
    with pytest.raises(ValueError, match="InversionConfig.iterations=10 is a setting of method='deepinversion' only"):
        InversionConfig(method="fast", iterations=10)
    with pytest.raises(ValueError, match="InversionConfig.fast_steps=3 is a setting of method='fast' only"):
        InversionConfig(fast_steps=3)
    fast = InversionConfig(method="fast").to_dict()
    assert fast["method"] == "fast" and "fast_steps" in fast and "iterations" not in fast and "lr" not in fast
    plain = InversionConfig().to_dict()
    assert (
        plain["method"] == "deepinversion" and "iterations" in plain and not any(k.startswith("fast_") for k in plain)
    )
