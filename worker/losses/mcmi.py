"""MCMI teacher refinement (docs/methods.md#mcmi) — plain functions, not a student method.

Ye, Mohajer Hamidi, Tan, Yang, "Bayes Conditional Distribution Estimation for Knowledge
Distillation Based on Conditional Mutual Information", ICLR 2024, arXiv:2401.08732 (code
iclr2024mcmi/ICLRMCMI, `CIFAT-100KD/losses.py` `CE_KL_loss`, `centroid.py`, `helper/loops.py`).

MCMI fine-tunes the *teacher* to maximise log-likelihood and the conditional mutual information
I(X; Ŷ | Y) together; any KD method then distils from the refined teacher.

    P_x = softmax(f_teacher(x))                                       τ = 1
    Q_y = mean of P_x over the training samples of class y            computed once, then fixed
    Î   = (1/B) Σ_i KL(P_{x_i} ‖ Q_{y_i})                              minibatch CMI estimate
    L_teacher = CE(f(x), y) − λ·Î                                     λ ∈ {0.1, …, 0.25}; the sign is negative

Procedure (the trainer's job): compute Q with `class_centroids` over the full training set once
(the model in eval() mode — the repo uses train(), which also moves BatchNorm statistics), keep it
fixed, then fine-tune for `MCMIParams.epochs` epochs with SGD (cosine schedule) on `teacher_loss`.
Unlabelled samples (label −1) are ignored by both the centroids and the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdserve.service.spec.methods import MCMIParams  # noqa: F401  (the refinement's params)

from .common import upcast

# floor for centroid probabilities before the log (a centroid entry is a mean of softmax values,
# so it is only 0 when every one of them underflowed)
_TINY = 1e-30


def class_centroids(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Q [C, C]: row y = mean of the probability rows of the samples labelled y.

    `probs` [N, C] are teacher softmax outputs (τ = 1) over the whole training set (or pass batches
    through `CentroidAccumulator`). A class with no sample gets the uniform distribution."""
    acc = CentroidAccumulator(num_classes)
    acc.update(probs, labels)
    return acc.compute()


class CentroidAccumulator:
    """Streams (probs, labels) batches and returns the class centroids Q, in float64."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be [N, {self.num_classes}], got {tuple(probs.shape)}")
        mask = labels >= 0
        p = probs[mask].detach().to("cpu", torch.float64)
        y = labels[mask].to("cpu").long()
        self.sums.index_add_(0, y, p)
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))

    def compute(self) -> torch.Tensor:
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)
        q = self.sums / self.counts.clamp_min(1.0).unsqueeze(1)
        return torch.where(self.counts.unsqueeze(1) > 0, q, uniform)


def cmi_estimate(logits: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(1/B') Σ_i KL(P_i ‖ Q_{y_i}) over the B' labelled samples, P = softmax(logits)."""
    mask = labels >= 0
    if not bool(mask.any()):
        return logits.sum() * 0.0
    z = upcast(logits[mask])
    log_p = F.log_softmax(z, dim=1)
    log_q = centroids.to(z.device, z.dtype)[labels[mask].long()].clamp_min(_TINY).log()
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def teacher_loss(
    logits: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, lam: float = 0.15
) -> torch.Tensor:
    """CE(f(x), y) − λ·mean_i KL(P_i ‖ Q_{y_i}), over the labelled samples (λ ≥ 0 maximises CMI)."""
    mask = labels >= 0
    if not bool(mask.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(upcast(logits[mask]), labels[mask].long())
    return ce - lam * cmi_estimate(logits, labels, centroids)
