"""Hinton KD and the plain supervised baseline (METHODS.md §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import DistillLoss, LossInputs, MethodParams, kl_batchmean, labelled_ce, register_method, upcast


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0, description="softening temperature τ of both distributions")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the τ²-scaled KL term; CE gets 1 − alpha")


@register_method(
    "kd",
    params=KDParams,
    description="Hinton KD: (1−α)·CE(s, y) + α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), batchmean. "
    "Unlabelled samples contribute the KL term only.",
    reference="Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
)
class KDLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        tau, alpha = self.params.temperature, self.params.alpha
        log_ps = F.log_softmax(upcast(inp.student_logits) / tau, dim=1)
        log_pt = F.log_softmax(upcast(inp.teacher_logits) / tau, dim=1)
        soft = tau * tau * kl_batchmean(log_pt, log_ps)
        return (1.0 - alpha) * labelled_ce(inp.student_logits, inp.labels) + alpha * soft


class CEParams(MethodParams):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")


@register_method(
    "ce",
    params=CEParams,
    description="Plain supervised training on the labels, no teacher: the baseline every method is compared with.",
    reference="—",
    needs_teacher=False,
    needs_labels=True,
)
class CELoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        return labelled_ce(inp.student_logits, inp.labels, self.params.label_smoothing)
