"""The alignment path at the users' scale: the same values as the plain formulas, less memory, mixed precision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import make_config, make_resnet_teacher, make_vit

from dearkd_hf import DearKDTrainer
from dearkd_hf.alignment import AlignmentHead, StudentAligners, teacher_target
from dearkd_hf.alignment_pairs import AlignmentPair
from dearkd_hf.losses import alignment_loss


def test_alignment_loss_matches_mse_in_value_and_gradient():
    torch.manual_seed(0)
    aligned = [torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    targets = [torch.randn(2, 9, 4, dtype=torch.float64) for _ in range(2)]
    loss = alignment_loss(aligned, targets)
    expected = sum(F.mse_loss(a, t) for a, t in zip(aligned, targets))
    assert torch.allclose(loss.double(), expected)
    target = targets[0].clone().requires_grad_()
    ours = torch.autograd.grad(alignment_loss([aligned[0]], [target]), (aligned[0], target))
    reference = torch.autograd.grad(F.mse_loss(aligned[0], target), (aligned[0], target))
    for got, want in zip(ours, reference):
        assert torch.allclose(got, want)


def test_alignment_loss_keeps_only_the_difference_for_backward():
    """F.mse_loss on float32 copies keeps both copies; the loss keeps one tensor of the inputs' dtype."""
    aligned = torch.randn(4, 196, 256, dtype=torch.bfloat16, requires_grad=True)
    target = torch.randn(4, 196, 256, dtype=torch.bfloat16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        alignment_loss([aligned], [target])
    assert sum(t.numel() * t.element_size() for t in saved) == aligned.numel() * 2


def test_teacher_target_pools_divisible_maps_like_adaptive_pooling():
    torch.manual_seed(0)
    for size in (56, 28, 14, 10):  # 10 does not divide into 14: the adaptive path
        feature_map = torch.randn(2, 8, size, size)
        pooled = F.adaptive_avg_pool2d(feature_map, (14, 14)) if size != 14 else feature_map
        expected = F.layer_norm(pooled.flatten(2).transpose(1, 2), (8,))
        assert torch.allclose(teacher_target(feature_map, (14, 14)), expected, atol=1e-5), size


def test_aligners_run_under_the_given_autocast():
    """Forward hooks run outside the autocast accelerate puts around forward: the aligners enter their own."""
    student = make_vit()
    aligners = StudentAligners(AlignmentHead([AlignmentPair(1, "a")], 16, [8], (4, 4)), torch.bfloat16)
    aligners.attach(student)
    with aligners.running(True):
        out = student(pixel_values=torch.randn(2, 1, 16, 16), output_hidden_states=True)
    assert aligners.aligned_features(out)[0].dtype == torch.bfloat16


def test_stage1_runs_the_teacher_before_the_student(tmp_path):
    """The teacher's activations are gone before the student's are stored: its forward comes first."""
    order = []
    student, teacher = make_vit(), make_resnet_teacher()
    student.register_forward_pre_hook(lambda *_: order.append("student"))
    teacher.register_forward_pre_hook(lambda *_: order.append("teacher"))
    args = make_config(tmp_path)
    trainer = DearKDTrainer(model=student, teacher_model=teacher, args=args)
    batch = {"pixel_values": torch.randn(2, 1, 16, 16), "labels": torch.tensor([0, 1])}
    order.clear()  # building the aligners ran the teacher once
    trainer.compute_loss(student.train(), batch)
    assert order == ["teacher", "student"]
