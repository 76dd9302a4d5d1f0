"""Hinton KD and the plain supervised baseline (docs/methods.md#kd, docs/methods.md#ce)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, kl_batchmean, labelled_ce, register_method, upcast


@register_method("kd")
class KDLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        tau, alpha = self.params.temperature, self.params.alpha
        log_ps = F.log_softmax(upcast(inp.student_logits) / tau, dim=1)
        log_pt = F.log_softmax(upcast(inp.teacher_logits) / tau, dim=1)
        soft = tau * tau * kl_batchmean(log_pt, log_ps)
        return (1.0 - alpha) * labelled_ce(inp.student_logits, inp.labels) + alpha * soft


@register_method("ce")
class CELoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        return labelled_ce(inp.student_logits, inp.labels, self.params.label_smoothing)
