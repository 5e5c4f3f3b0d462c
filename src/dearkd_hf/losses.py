"""The DearKD losses as pure tensor functions (METHOD.md sections 2 and 3), so they can be checked by hand."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DISTILLATION_TYPES = ("hard", "soft", "none")
LABEL_LOSS_HEADS = ("averaged_logits", "each_head")
BETA_SCHEDULES = ("balanced", "constant", "linear", "agreement")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices or, with mixup/cutmix, float soft targets ``(B, C)`` (never multi-label).

    The DearKD ViT's modeling file holds a copy (it must load with ``trust_remote_code`` without dearkd_hf);
    tests/test_losses.py checks that the two agree.
    """
    if labels.is_floating_point() and labels.shape == logits.shape:
        return torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), labels.long().view(-1))


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """DeiT's distillation: ``hard`` = CE(s, argmax t); ``soft`` = KL(s/tau || t/tau) * tau^2 over elements."""
    if kind == "hard":
        return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))
    if kind == "soft":
        kl = F.kl_div(
            F.log_softmax(student_logits.float() / tau, dim=-1),
            F.log_softmax(teacher_logits.float() / tau, dim=-1),
            reduction="sum",
            log_target=True,
        )
        return kl * tau * tau / student_logits.numel()
    raise ValueError(f"distillation_type must be one of {DISTILLATION_TYPES} for logit KD, got {kind!r}.")


class _MeanSquaredDifference(torch.autograd.Function):
    """``mean((a - t)^2)`` accumulated in float32; the backward pass keeps only ``a - t``, in ``a``'s dtype.

    ``F.mse_loss`` on float32 copies would keep both copies (under bf16, four times the bytes) and make more
    float32 temporaries, which at 224 px add to the step's peak memory.
    """

    @staticmethod
    def forward(ctx, aligned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        difference = aligned - target.to(aligned.dtype)
        ctx.save_for_backward(difference)
        # The norm accumulates in float32 without a float32 copy of the difference.
        accumulate = torch.promote_types(difference.dtype, torch.float32)
        return torch.linalg.vector_norm(difference, dtype=accumulate).square() / difference.numel()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        (difference,) = ctx.saved_tensors
        grad_aligned = difference * (grad * (2.0 / difference.numel())).to(difference.dtype)
        return grad_aligned, -grad_aligned if ctx.needs_input_grad[1] else None


def alignment_loss(aligned: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over pairs of the MSE between aligned student maps and the teacher's normalised maps (float32)."""
    return sum(_MeanSquaredDifference.apply(a, t) for a, t in zip(aligned, targets, strict=True))


def stage2_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor | None,
    labels: torch.Tensor,
    heads: str = "averaged_logits",
) -> torch.Tensor:
    """Labels alone. With a distillation token, ``heads="averaged_logits"`` is the CE of ``(s_cls + s_dist) / 2``
    (the prediction the student makes at inference); ``"each_head"`` averages the two heads' CEs. Without a
    distillation token: the class head's CE.
    """
    if dist_logits is None:
        return classification_loss(cls_logits, labels)
    if heads == "averaged_logits":
        return classification_loss((cls_logits.float() + dist_logits.float()) / 2, labels)
    if heads == "each_head":
        return (classification_loss(cls_logits, labels) + classification_loss(dist_logits, labels)) / 2
    raise ValueError(f"label_loss_heads must be one of {LABEL_LOSS_HEADS}, got {heads!r}.")


def scheduled_beta(beta: float, schedule: str, epoch: float, stop_epoch: float) -> float:
    """The alignment weight at ``epoch``: ``constant`` keeps ``beta``; ``linear`` decays it to 0 at ``stop_epoch``;
    ``balanced`` keeps ``beta`` as the ceiling that :func:`balanced_beta` lowers step by step; ``agreement`` keeps
    ``beta`` on the loss and gates what reaches the student's blocks (:mod:`dearkd_hf.gradient_agreement`)."""
    if schedule in ("constant", "balanced", "agreement"):
        return beta
    if schedule == "linear":
        return beta * max(0.0, 1.0 - epoch / stop_epoch) if stop_epoch > 0 else 0.0
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}.")


def balanced_beta(beta: float, ratio: float, task_loss: torch.Tensor, align_loss: torch.Tensor) -> torch.Tensor:
    """``min(beta, ratio * task_loss / align_loss)`` on detached values: the alignment term ``beta * align_loss``
    is capped at ``ratio`` times the label + logit-KD term (a loss-ratio balancer, as NVIDIA ModelOpt's dynamic
    distillation-loss scale), so it shrinks as the label loss falls on a task the student learns quickly and stays
    near ``beta`` while the label loss is high. ``beta`` when the alignment loss is 0."""
    task, align = task_loss.detach().float(), align_loss.detach().float()
    cap = torch.where(align > 0, ratio * task / align.clamp_min(torch.finfo(torch.float32).tiny), beta)
    return cap.clamp(max=beta)


def stage1_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor | None,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    aligned: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    distillation_type: str,
    alpha: float,
    beta: float,
    tau: float,
    label_loss_heads: str = "averaged_logits",
    align_ratio: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(1 - alpha) CE(s_cls, y) + alpha KD(s_dist, t) + beta sum_k L_align_k``, and its components for logging
    (``beta``: the weight the alignment got).

    Without a distillation token KD applies to ``s_cls``. With ``distillation_type="none"`` (ours) the logit term
    is dropped and the heads train on labels as in stage 2 (``label_loss_heads``), plus the alignment. With
    ``align_ratio``, the weight is :func:`balanced_beta` of the step's (label + KD) and alignment losses.
    """
    align = alignment_loss(aligned, targets) if aligned else cls_logits.new_zeros(())
    if distillation_type == "none":
        ce = stage2_loss(cls_logits, dist_logits, labels, label_loss_heads)
        kd = cls_logits.new_zeros(())
        task = ce
    else:
        ce = classification_loss(cls_logits, labels)
        kd_logits = dist_logits if dist_logits is not None else cls_logits
        kd = logit_kd(kd_logits, teacher_logits, distillation_type, tau)
        task = (1 - alpha) * ce + alpha * kd
    weight = torch.tensor(float(beta)) if align_ratio is None else balanced_beta(beta, align_ratio, task, align)
    loss = task + weight.to(align.device) * align
    parts = {"loss_ce": ce.detach(), "loss_kd": kd.detach(), "loss_align": align.detach(), "beta": weight.detach()}
    return loss, parts
