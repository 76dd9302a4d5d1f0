"""PS-KD — Progressive Self-Knowledge Distillation (docs/methods.md#pskd).

Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of Targets",
ICCV 2021, arXiv:2006.12000 (code lgcnsai/PS-KD-Pytorch, `loss/pskd_loss.py`, `main.py`).

No teacher: the model's own softmax predictions from the previous epoch soften its one-hot targets.

    α_t = α_T · (e + 1)/E                        e = 0-based epoch, E = total epochs
    ỹ_i = (1 − α_t)·onehot(y_i) + α_t·P_{e−1}(x_i)
    L   = (1/B) Σ_i Σ_c −ỹ_i,c · log softmax(z_i)_c                 the only term

P_{e−1}(x_i) is extras["prev_probs"], [B, C]: the detached softmax (τ = 1) the trainer stored for
sample i when it last saw it, i.e. in the previous epoch. The trainer keeps that N×C table (indexed
by sample), initialises it to the one-hot labels (so epoch 0 trains on one-hot targets), and
overwrites row i with the current softmax after each forward pass.

Unlabelled samples (label −1) contribute nothing: their target has no one-hot part to refine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method
from .common import check_logits, require_extra, upcast


def alpha_at(alpha_T: float, epoch: int, epochs: int) -> float:
    """α_t = α_T·(e + 1)/E, reaching α_T at the last epoch."""
    return alpha_T * (epoch + 1) / max(epochs, 1)


def pskd_loss(logits: torch.Tensor, labels: torch.Tensor, prev_probs: torch.Tensor, alpha_t: float) -> torch.Tensor:
    """Soft-target CE, batch mean, over a fully labelled batch."""
    z = upcast(logits)
    onehot = F.one_hot(labels, z.shape[1]).to(z.dtype)
    target = (1.0 - alpha_t) * onehot + alpha_t * prev_probs.detach().to(z.dtype)
    return -(target * F.log_softmax(z, dim=1)).sum(dim=1).mean()


@register_method("pskd")
class PSKDLoss(DistillLoss):

    def forward(self, inp: LossInputs) -> torch.Tensor:
        z = inp.student_logits
        check_logits(z)
        prev = require_extra(inp.extras, "prev_probs", "pskd")
        if prev.shape != z.shape:
            raise ValueError(f"pskd: prev_probs {tuple(prev.shape)} must match student_logits {tuple(z.shape)}")
        if inp.labels is None:
            return z.sum() * 0.0
        mask = inp.labels >= 0
        if not bool(mask.any()):
            return z.sum() * 0.0
        alpha_t = alpha_at(self.params.alpha_T, inp.epoch, inp.epochs)
        return pskd_loss(z[mask], inp.labels[mask].long(), prev[mask], alpha_t)
