"""SinKD: batch-wise Sinkhorn distance for KD (docs/methods.md#sinkd).

Cui et al., "Sinkhorn Distance Minimization for Knowledge Distillation", LREC-COLING 2024,
arXiv:2402.17110 (official code 2018cx/SinKD, `loss.py` class `Sinkhorn`).

The B student and B teacher prediction vectors are two point clouds in R^C; one OT problem is
solved over the B×B sample-pair cost:

    P^S_i = softmax(s_i/τ_s),  P^T_j = softmax(t_j/τ_s)               τ_s = 2 in the code
    M_ij  = ‖P^S_i − P^T_j‖₁                                          (cdist, p = 1), M ∈ [0, 2]
    Π⁰ = K = exp(−M/ε); n_iter times: rows /= row sums, then cols /= col sums      (ε = 0.1, 20 iters)
    L_Sink = w · Σ_ij Π_ij M_ij                                       (unit marginals: mass B)

Gradients flow through Π (all iterations) and M. Only ⟨Π, M⟩ is returned (Cuturi's "Sinkhorn
distance"), no −εH(Π) term.

The iterations run in the log domain: log Π⁰ = −M/ε, then log Π −= logsumexp over rows, then over
columns. That is the same sequence of normalisations as the code's multiplicative form, exactly,
but a kernel entry never underflows to 0 (the code's form breaks for ε ≲ 0.02 or in fp16).

Combination — the GLUE trainer's intended objective (`glue_train.py`; docs/methods.md#sinkd):

    L = (1 − α)·CE(s, y) + α·L_KD(τ) + β·L_Sink,
    L_KD = mean_i(−Σ_c p^T_τ,c log p^S_τ,c)      the CE form, without τ²

The CE form is kept (not the KL form) because the reference trainer computes it: its gradient equals the
KL form's, and its value is larger by the teacher entropy mean_i H(p^T_τ,i), a constant for the
student. Defaults are that trainer's argparse defaults: α = 0.8, τ = 2, β = 1; w = 0.001 (BERT/GLUE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method
from .common import checked_teacher, labelled_ce, upcast


def sinkhorn_plan(cost: torch.Tensor, epsilon: float = 0.1, n_iter: int = 20) -> torch.Tensor:
    """Π after `n_iter` (row, column) normalisations of K = exp(−cost/ε), unit marginals, log domain.

    The last step normalises columns, so column sums are exactly 1 and row sums ≈ 1."""
    log_plan = -cost / epsilon
    for _ in range(n_iter):
        log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True)  # rows sum to 1
        log_plan = log_plan - torch.logsumexp(log_plan, dim=0, keepdim=True)  # columns sum to 1
    return log_plan.exp()


def sinkhorn_cost_matrix(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """M_ij = ‖softmax(s_i/τ) − softmax(t_j/τ)‖₁, shape [B, B] (rows = student, cols = teacher)."""
    ps = F.softmax(upcast(student_logits) / tau, dim=1)
    pt = F.softmax(upcast(teacher_logits) / tau, dim=1)
    return torch.cdist(ps, pt, p=1)


def sinkhorn_cost(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float = 2.0,
    epsilon: float = 0.1,
    n_iter: int = 20,
    return_plan: bool = False,
):
    """Raw ⟨Π, M⟩ (no weight w). With return_plan, also (Π, M)."""
    cost = sinkhorn_cost_matrix(student_logits, teacher_logits, tau)
    plan = sinkhorn_plan(cost, epsilon, n_iter)
    value = (plan * cost).sum()
    if return_plan:
        return value, plan, cost
    return value


@register_method("sinkd")
class SinKDLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        p = self.params
        teacher = checked_teacher(inp, "sinkd")
        s, t = upcast(inp.student_logits), upcast(teacher)
        # CE-form soft loss: mean_i −Σ_c p^T_c log p^S_c at temperature τ
        log_ps = F.log_softmax(s / p.temperature, dim=1)
        pt = F.softmax(t / p.temperature, dim=1)
        kd = -(pt * log_ps).sum(dim=1).mean()
        sink = p.sinkhorn_weight * sinkhorn_cost(s, t, p.sinkhorn_temperature, p.epsilon, p.n_iter)
        return (1.0 - p.alpha) * labelled_ce(inp.student_logits, inp.labels) + p.alpha * kd + p.beta * sink
