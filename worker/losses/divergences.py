"""Reverse KL and Jensen–Shannon as KD losses (docs/methods.md#rkl, docs/methods.md#jsd).

Both replace the forward KL of Hinton KD (docs/methods.md#kd) and are mixed with cross-entropy the same way:

    L = (1 − α)·CE(s, y) + α·τ²·D(p^S_τ, p^T_τ)            (batchmean over the B samples)

    RKL_i = Σ_c p^S_c (log p^S_c − log p^T_c)                       mode-seeking
    JS_i  = ½ KL(p^T ‖ m) + ½ KL(p^S ‖ m),  m = ½(p^T + p^S)         symmetric, ≤ log 2

m is mixed in probability space. Its log is taken as log m = logaddexp(log p^T, log p^S) − log 2:
the same number as log(clamp(m)), but with no floor to pick and no log(0) even when both
probabilities underflow (extreme logits, fp16 inputs).

References: Hinton et al. 2015 (arXiv:1503.02531) for the τ² convention; RKL as in
KD_generalization ("RevKD", τ = 1); SinKD (arXiv:2402.17110), its discussion of FKL/RKL/JS.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdserve.service.spec.methods import DivergenceParams

from .base import DistillLoss, LossInputs, register_method
from .common import checked_teacher, labelled_ce, upcast


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """(1/B) Σ_i KL(p^S_τ,i ‖ p^T_τ,i), no τ²."""
    log_ps = F.log_softmax(upcast(student_logits) / tau, dim=1)
    log_pt = F.log_softmax(upcast(teacher_logits) / tau, dim=1)
    return (log_ps.exp() * (log_ps - log_pt)).sum(dim=1).mean()


def jensen_shannon(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """(1/B) Σ_i [½ KL(p^T ‖ m) + ½ KL(p^S ‖ m)], m = ½(p^T + p^S), no τ²."""
    log_ps = F.log_softmax(upcast(student_logits) / tau, dim=1)
    log_pt = F.log_softmax(upcast(teacher_logits) / tau, dim=1)
    # log m = log(½ (p^T + p^S)), computed in log space (never log 0)
    log_m = torch.logaddexp(log_pt, log_ps) - math.log(2.0)
    kl_tm = (log_pt.exp() * (log_pt - log_m)).sum(dim=1)
    kl_sm = (log_ps.exp() * (log_ps - log_m)).sum(dim=1)
    return (0.5 * (kl_tm + kl_sm)).mean()


def _mixed(inp: LossInputs, params: DivergenceParams, divergence, method: str) -> torch.Tensor:
    teacher = checked_teacher(inp, method)
    tau, alpha = params.temperature, params.alpha
    soft = tau * tau * divergence(inp.student_logits, teacher, tau)
    return (1.0 - alpha) * labelled_ce(inp.student_logits, inp.labels) + alpha * soft


@register_method("rkl")
class ReverseKLLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        return _mixed(inp, self.params, reverse_kl, "rkl")


@register_method("jsd")
class JensenShannonLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        return _mixed(inp, self.params, jensen_shannon, "jsd")
