"""DIST — Knowledge Distillation from A Stronger Teacher (docs/methods.md#dist).

Huang et al., NeurIPS 2022, arXiv:2205.10536 (code hunto/image_classification_sota,
`lib/models/losses/dist_kd.py`; torchdistill `DISTLoss`).

Only relations are matched, through Pearson correlation (invariant to shift and scale):

    Y^S = softmax(s/τ), Y^T = softmax(t/τ)                               both [B, C]
    ρ(a, b) = ⟨a − ā, b − b̄⟩ / (‖a − ā‖·‖b − b̄‖ + ε),  ε = 1e−8 on the product of norms
    L_inter = 1 − (1/B) Σ_i ρ(Y^S_i,:, Y^T_i,:)                          per sample, across classes
    L_intra = 1 − (1/C) Σ_c ρ(Y^S_:,c, Y^T_:,c)                          per class, across the batch
    L = w_ce·CE(s, y) + τ²·(β·L_inter + γ·L_intra)

The reference module has β = γ = 1 and is added with weight 2 next to CE weight 1, so the
effective paper weights — the defaults here — are w_ce = 1, β = γ = 2. τ = 4 is the CIFAR-100
config (τ = 1 on ImageNet). The intra term needs B ≥ 3 to carry information: with B ≤ 2 every
column correlation is 0 or ±1 (a constant); the loss stays finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method
from .common import checked_teacher, labelled_ce, upcast


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """ρ between matching rows of a and b, shape [rows]."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_inter, L_intra), without τ², β, γ."""
    ys = F.softmax(upcast(student_logits) / tau, dim=1)
    yt = F.softmax(upcast(teacher_logits) / tau, dim=1)
    inter = 1.0 - pearson_rows(ys, yt, eps).mean()
    intra = 1.0 - pearson_rows(ys.t(), yt.t(), eps).mean()
    return inter, intra


@register_method("dist")
class DISTLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        p = self.params
        teacher = checked_teacher(inp, "dist", two_classes="a Pearson correlation across one class is undefined")
        inter, intra = dist_parts(inp.student_logits, teacher, p.temperature, p.eps)
        tau2 = p.temperature * p.temperature
        return p.ce_weight * labelled_ce(inp.student_logits, inp.labels) + tau2 * (p.beta * inter + p.gamma * intra)
