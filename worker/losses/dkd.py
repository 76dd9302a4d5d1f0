"""DKD — Decoupled Knowledge Distillation (docs/methods.md#dkd).

Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022, arXiv:2203.08679 (code
megvii-research/mdistiller, `mdistiller/distillers/DKD.py`).

Classical KD splits exactly as KL(p^T ‖ p^S) = TCKD + (1 − p^T_y)·NCKD. DKD weights the parts freely.
All at temperature τ, p = softmax(z/τ):

    b = [p_y, 1 − p_y]                                  binary target-vs-rest distribution
    TCKD_i = KL(b^T_i ‖ b^S_i)
    NCKD_i = KL(p̂^T_i ‖ p̂^S_i),  p̂ = softmax over the C−1 non-target logits / τ
    L_DKD  = w(e) · τ² · (1/B) Σ_i (α·TCKD_i + β·NCKD_i),  w(e) = min(e/E_warm, 1), e = 1-based epoch
    L      = w_ce · CE(s, y) + L_DKD

log(1 − p_y) is computed as logsumexp(non-target z/τ) − logsumexp(z/τ), which never hits log 0
(the fp16 pitfall in docs/methods.md#dkd); the non-target softmax drops the target column instead of the code's
−1000 mask. Unlabelled samples use the teacher's argmax as their target class and get no CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method
from .common import checked_teacher, labelled_ce, non_target, resolve_targets, upcast


def _binary_log_probs(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, 2] log of [p_y, 1 − p_y] for p = softmax(z), computed without log(0)."""
    lse_all = torch.logsumexp(z, dim=1)
    log_p_y = z.gather(1, target.view(-1, 1)).squeeze(1) - lse_all
    log_rest = torch.logsumexp(non_target(z, target), dim=1) - lse_all
    return torch.stack([log_p_y, log_rest], dim=1)


def dkd_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD_i, NCKD_i) at temperature τ, shape [B] each; no τ², α, β or warm-up."""
    zs, zt = upcast(student_logits) / tau, upcast(teacher_logits) / tau
    log_bs, log_bt = _binary_log_probs(zs, target), _binary_log_probs(zt, target)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(dim=1)
    log_qs = F.log_softmax(non_target(zs, target), dim=1)
    log_qt = F.log_softmax(non_target(zt, target), dim=1)
    nckd = (log_qt.exp() * (log_qt - log_qs)).sum(dim=1)
    return tckd, nckd


def warmup_factor(epoch: int, warmup: int) -> float:
    """w(e) = min(e/E_warm, 1) with e = epoch + 1 (LossInputs.epoch is 0-based); 1 when warmup = 0."""
    if warmup <= 0:
        return 1.0
    return min((epoch + 1) / warmup, 1.0)


@register_method("dkd")
class DKDLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        p = self.params
        teacher = checked_teacher(inp, "dkd", two_classes="NCKD needs a non-target class")
        target = resolve_targets(inp.labels, teacher)
        tckd, nckd = dkd_parts(inp.student_logits, teacher, target, p.temperature)
        tau2 = p.temperature * p.temperature
        dkd = warmup_factor(inp.epoch, p.warmup) * tau2 * (p.alpha * tckd + p.beta * nckd).mean()
        return p.ce_weight * labelled_ce(inp.student_logits, inp.labels) + dkd
