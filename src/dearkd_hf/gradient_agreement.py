"""Gradient agreement at the aligned tokens: does the alignment push the student where the task pulls it?

docs/METHOD.md section 2 (``[ours]``, candidates of the transfer suite). In one backward pass, at the output ``h`` of
each aligned student block, the alignment's gradient ``g_a`` (through the aligner) and the task's gradient ``g_t``
(through the upper blocks: the label and logit-KD terms) are seen apart:

1. the aligner reads ``h`` through :class:`_Tap`, an identity whose backward records ``g_a``;
2. a hook on ``h`` receives their sum once both are in (autograd accumulates every use of ``h`` before it runs the
   hook), so ``g_t = sum - g_a``;
3. per sample (its patch tokens, flattened), :func:`combine_gradients` returns what flows into the lower blocks:
   ``g_t + gate * g_a'``, where ``g_a'`` is ``g_a`` with the part along ``g_t`` removed when they conflict
   (``<g_a, g_t> < 0``; PCGrad, Yu et al. 2020) under ``align_conflicts="project"``, and ``gate`` is 1 unless
   ``beta_schedule="agreement"``, which reads it from the running share of samples whose ``g_a`` agrees with
   ``g_t`` (:func:`agreement_gate`): the alignment keeps its hold on the student only while it points the task's
   way more often than chance.

The aligners themselves always learn from the full alignment loss (they sit above the tap); only what the student's
blocks receive changes. The running share is a buffer of :class:`GradientAgreement`, a submodule of the alignment
head, so it is checkpointed with the aligners and a resumed run continues it exactly.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

ALIGN_CONFLICTS = ("keep", "project")
AGREEMENT_MOMENTUM = 0.9  # the running share forgets a batch in about ten steps: "sustained" (dis)agreement


def agreeing_samples(task: torch.Tensor, align: torch.Tensor) -> torch.Tensor:
    """The ``(B,)`` boolean of ``<align, task> > 0`` for ``(B, ...)`` per-sample gradients (float32 products)."""
    return (task.flatten(1).float() * align.flatten(1).float()).sum(dim=1) > 0


def combine_gradients(
    task: torch.Tensor, align: torch.Tensor, *, project: bool, gate: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """``task + gate * align'`` for ``(B, ...)`` per-sample gradients: ``align'`` is ``align`` with, where a sample's
    ``<align, task>`` is negative and ``project`` is set, its component along ``task`` removed. Computed in float32;
    returned in ``task``'s dtype."""
    t, a = task.flatten(1).float(), align.flatten(1).float()
    dot = (t * a).sum(dim=1)
    if project:
        norm = (t * t).sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        a = a - (dot.clamp(max=0) / norm).unsqueeze(1) * t
    combined = t + torch.as_tensor(gate, dtype=torch.float32, device=t.device) * a
    return combined.view_as(task).to(task.dtype)


def agreement_gate(share: torch.Tensor) -> torch.Tensor:
    """The alignment's weight into the student from the running share of agreeing samples: ``clamp(2 share - 1, 0,
    1)``: 1 when every sample agrees, 0 at chance (half) or below."""
    return (2 * share - 1).clamp(0, 1)


class _Tap(torch.autograd.Function):
    """Identity on ``h``; its backward hands the alignment's gradient to ``box`` (summed, should ``h`` be tapped
    twice) and passes it on unchanged."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, box: dict) -> torch.Tensor:
        ctx.box = box
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.box["align"] = grad if "align" not in ctx.box else ctx.box["align"] + grad
        return grad, None


class GradientAgreement(nn.Module):
    """Taps the aligned hidden states (see the module docstring); ``share`` is the running share of agreeing samples,
    one per pair, starting at 1 (the alignment is trusted until its gradients say otherwise)."""

    def __init__(self, num_pairs: int, *, project: bool, gate: bool, num_patches: int):
        super().__init__()
        self.project, self.gate, self.num_patches = project, gate, num_patches
        self.register_buffer("share", torch.ones(num_pairs))
        self._measured: dict[str, list[torch.Tensor]] = {"align_agreement": [], "align_gate": []}

    def tap(self, hidden: torch.Tensor, pair_index: int) -> torch.Tensor:
        """``hidden`` for the aligner to read; in a backward pass the lower blocks then get the combined gradient."""
        if not (torch.is_grad_enabled() and hidden.requires_grad):
            return hidden
        box: dict[str, torch.Tensor] = {}
        hidden.register_hook(functools.partial(self._combine, box, pair_index))
        return _Tap.apply(hidden, box)

    def _combine(self, box: dict, pair_index: int, total: torch.Tensor) -> torch.Tensor | None:
        align = box.pop("align", None)
        if align is None:  # the alignment took no part in this backward
            return None
        patches = slice(total.shape[1] - self.num_patches, None)
        task = total - align
        with torch.no_grad():
            agrees = agreeing_samples(task[:, patches], align[:, patches])
            share = self.share[pair_index]
            if self.gate:
                share.mul_(AGREEMENT_MOMENTUM).add_((1 - AGREEMENT_MOMENTUM) * agrees.float().mean())
            gate = agreement_gate(share) if self.gate else torch.ones((), device=total.device)
            combined = combine_gradients(task[:, patches], align[:, patches], project=self.project, gate=gate)
        self._measured["align_agreement"].append(agrees.float().mean())
        self._measured["align_gate"].append(gate.detach().clone())
        out = task.clone()  # prefix tokens: the alignment reads none, so their gradient is the task's alone
        out[:, patches] = combined
        return out

    def pop_measurements(self) -> dict[str, list[torch.Tensor]]:
        """The share of agreeing samples and the gate of every tapped backward since the last call; then cleared."""
        measured = {key: values[:] for key, values in self._measured.items() if values}
        for values in self._measured.values():
            values.clear()
        return measured
