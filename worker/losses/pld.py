"""PLD — Plackett–Luce list-wise distillation (docs/methods.md#pld).

Bassam, Zhu, Bian, "PLD: A Choice-Theoretic List-Wise Knowledge Distillation", 2025,
arXiv:2506.12542 (loss of the paper's Eq. and Appendix C; no official repository).

The teacher-optimal permutation π* puts the true label first, then every other class in
descending teacher logit (ties: lower class index first). With q = softmax(t/τ_T):

    L_PLD = (1/B) Σ_i Σ_{k=1..C} q_i,π*_k · [ log Σ_{l=k..C} exp(s_i,π*_l) − s_i,π*_k ]

The student logits are not temperature-scaled; τ_T only shapes the weights. The tail logsumexps
come from one logcumsumexp over the reversed permutation. PLD replaces CE + KD: there is no
separate CE term. Unlabelled samples take the teacher's argmax as their "true label", so their
π* is simply the teacher's ranking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method
from .common import checked_teacher, resolve_targets, target_mask, upcast


def teacher_optimal_permutation(teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """π* per sample, [B, C]: the target class first, then the rest by descending teacher logit."""
    t = upcast(teacher_logits).detach()
    key = t.masked_fill(target_mask(target, t.shape[1]), float("inf"))
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def pld_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, tau: float
) -> torch.Tensor:
    s, t = upcast(student_logits), upcast(teacher_logits)
    perm = teacher_optimal_permutation(t, target)
    q = F.softmax(t.detach() / tau, dim=1).gather(1, perm)  # q_π*_k
    s_perm = s.gather(1, perm)  # s_π*_k
    # tail_k = logsumexp(s_π*_k..C): cumulative logsumexp from the end
    tail = torch.logcumsumexp(s_perm.flip(1), dim=1).flip(1)
    return (q * (tail - s_perm)).sum(dim=1).mean()


@register_method("pld")
class PLDLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        teacher = checked_teacher(inp, "pld")
        target = resolve_targets(inp.labels, teacher)
        return pld_loss(inp.student_logits, teacher, target, self.params.temperature)
