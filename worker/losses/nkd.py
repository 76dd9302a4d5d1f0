"""NKD and USKD (docs/methods.md#nkd, docs/methods.md#uskd).

Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels", ICCV 2023, arXiv:2303.13005 (code yzd-v/cls_KD,
`mmcls/models/dis_losses/nkd.py` and `uskd.py`, post-fix non-target mask semantics).

NKD (docs/methods.md#nkd), p_1 = softmax at τ = 1, q̂ = softmax over the C−1 non-target logits / τ:

    L_NKD = −(1/B) Σ_i sg(p^T_1,i,y) · log p^S_1,i,y                        target term
            − γ τ² (1/B) Σ_i Σ_{c≠y} q̂^T_i,c · log q̂^S_i,c                  non-target term (CE form)
    L = CE(s, y) + L_NKD

USKD (docs/methods.md#uskd), no teacher; u = logits of the weak auxiliary head (extras["aux_logits"]):

    σ = softmax(s); w_i = sg(σ_i,y² + 1 − mean_batch σ_·,y²)
    L_t    = −(1/B) Σ_i w_i · log σ_i,y
    L_weak = μ · (1/B) Σ_i −Σ_c r_c log softmax(u_i)_c,   r = 0.9·onehot(y) + 0.1/C
    score_c = ω_c/(1 − ω_y + 1e−6) + ℓ_c/(1 − ℓ_y + 1e−6),  ω = softmax(u),
              ℓ = log_softmax(s) ("code", the official code's quirk) or softmax(s) ("prob", the paper)
    classes sorted by descending score (ties: lower class index first); class at 0-based rank k gets 1/(k+1);
    z = those Zipf weights over the non-target classes, renormalised to sum 1 (detached)
    L_non  = −(1/B) Σ_i Σ_{c≠y} z_i,c · log softmax(s_i, non-target classes)_c
    L = CE(s, y) + α·L_t + β·L_non + L_weak
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method
from .common import (
    check_logits,
    checked_teacher,
    labelled_ce,
    non_target,
    require_classes,
    require_extra,
    resolve_targets,
    upcast,
)

# ---- NKD --------------------------------------------------------------------------------------


def nkd_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, tau: float, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target term, non-target term incl. γτ²), each a batch mean."""
    s, t = upcast(student_logits), upcast(teacher_logits)
    idx = target.view(-1, 1)
    # target term at τ = 1, teacher probability as a detached weight
    log_ps_y = F.log_softmax(s, dim=1).gather(1, idx).squeeze(1)
    pt_y = F.softmax(t, dim=1).gather(1, idx).squeeze(1).detach()
    target_term = -(pt_y * log_ps_y).mean()
    # non-target term: CE between the softmaxes over the C−1 non-target logits at τ
    log_qs = F.log_softmax(non_target(s, target) / tau, dim=1)
    qt = F.softmax(non_target(t, target) / tau, dim=1)
    non_target_term = -gamma * tau * tau * (qt * log_qs).sum(dim=1).mean()
    return target_term, non_target_term


@register_method("nkd")
class NKDLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        teacher = checked_teacher(inp, "nkd", two_classes="the non-target term needs a non-target class")
        target = resolve_targets(inp.labels, teacher)
        tgt, non = nkd_parts(inp.student_logits, teacher, target, self.params.temperature, self.params.gamma)
        return labelled_ce(inp.student_logits, inp.labels) + tgt + non


# ---- USKD -------------------------------------------------------------------------------------


def zipf_non_target_labels(
    student_logits: torch.Tensor, aux_logits: torch.Tensor, target: torch.Tensor, rank_score: str = "code"
) -> torch.Tensor:
    """Detached Zipf soft labels over the C−1 non-target classes, shape [B, C−1]."""
    with torch.no_grad():
        s, u = upcast(student_logits), upcast(aux_logits)
        idx = target.view(-1, 1)
        omega = F.softmax(u, dim=1)
        ell = F.log_softmax(s, dim=1) if rank_score == "code" else F.softmax(s, dim=1)
        score = omega / (1.0 - omega.gather(1, idx) + 1e-6) + ell / (1.0 - ell.gather(1, idx) + 1e-6)
        order = torch.sort(score, dim=1, descending=True, stable=True).indices  # class at each position
        rank = torch.argsort(order, dim=1)  # position of each class
        zipf = 1.0 / (rank.to(s.dtype) + 1.0)
        z = non_target(zipf, target)
        return z / z.sum(dim=1, keepdim=True)


def uskd_soft_targets(
    student_logits: torch.Tensor, aux_logits: torch.Tensor, labels: torch.Tensor, rank_score: str = "code"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The detached targets of USKD: (soft target weight w [B], Zipf non-target labels z [B, C−1])."""
    with torch.no_grad():
        sigma_y = F.softmax(upcast(student_logits), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
        weight = sigma_y**2 + 1.0 - (sigma_y**2).mean()  # centred around 1
    return weight, zipf_non_target_labels(student_logits, aux_logits, labels, rank_score)


def uskd_terms(
    student_logits: torch.Tensor,
    aux_logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    soft_labels: torch.Tensor,
    mu: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_t, L_non, L_weak incl. μ) given the detached targets; the differentiable part of USKD."""
    s, u = upcast(student_logits), upcast(aux_logits)
    num_classes = s.shape[1]
    log_sigma_y = F.log_softmax(s, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    l_target = -(weight * log_sigma_y).mean()
    # weak head: label smoothing 0.1 spread over all C classes, weighted by μ
    r = 0.9 * F.one_hot(labels, num_classes).to(u.dtype) + 0.1 / num_classes
    l_weak = mu * (-(r * F.log_softmax(u, dim=1)).sum(dim=1).mean())
    l_non = -(soft_labels * F.log_softmax(non_target(s, labels), dim=1)).sum(dim=1).mean()
    return l_target, l_non, l_weak


def uskd_parts(
    student_logits: torch.Tensor,
    aux_logits: torch.Tensor,
    labels: torch.Tensor,
    mu: float,
    rank_score: str = "code",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_t, L_non, L_weak incl. μ) over a fully labelled batch; no α, β."""
    weight, soft_labels = uskd_soft_targets(student_logits, aux_logits, labels, rank_score)
    return uskd_terms(student_logits, aux_logits, labels, weight, soft_labels, mu)


@register_method("uskd")
class USKDLoss(DistillLoss):

    def forward(self, inp: LossInputs) -> torch.Tensor:
        p = self.params
        s = inp.student_logits
        check_logits(s)
        aux = require_extra(inp.extras, "aux_logits", "uskd")
        if aux.shape != s.shape:
            raise ValueError(f"uskd: aux_logits {tuple(aux.shape)} must match student_logits {tuple(s.shape)}")
        require_classes(s.shape[1], 2, "uskd", "the non-target term needs a non-target class")
        zero = s.sum() * 0.0 + aux.sum() * 0.0
        if inp.labels is None:
            return zero
        mask = inp.labels >= 0
        if not bool(mask.any()):
            return zero
        s_l, u_l, y_l = s[mask], aux[mask], inp.labels[mask].long()
        l_t, l_non, l_weak = uskd_parts(s_l, u_l, y_l, p.mu, p.rank_score)
        return labelled_ce(s_l, y_l) + p.alpha * l_t + p.beta * l_non + l_weak
