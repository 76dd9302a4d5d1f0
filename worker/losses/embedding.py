"""Embedding distillation: the student's output vector against the teacher's, for sentence-embedding
teachers (and, as plain vector regression, for logits).

With s_i, t_i the student's and teacher's vectors for sample i of a batch of B, D dimensions:

- `embedding_mse`:        L = (1/(B·D)) Σ_i ‖s_i − t_i‖²  (mean over every element), the objective of
                          Reimers & Gurevych 2020 for distilling sentence embeddings.
- `embedding_cosine`:     L = (1/B) Σ_i (1 − cos(s_i, t_i)), DistilBERT's cosine embedding term.
- `embedding_relational`: L = w_cos·(1/B) Σ_i (1 − cos(s_i, t_i)) + w_rel·(1/B²) Σ_ij (ŝ_i·ŝ_j − t̂_i·t̂_j)²,
                          with x̂ = x/‖x‖: the student's batch cosine-similarity matrix is matched to the
                          teacher's (similarity-preserving KD, Tung & Mori 2019, on normalised
                          embeddings). The relational term alone is invariant to rotations of the
                          student's space, so by default the pointwise cosine term keeps the
                          student in the teacher's space (w_cos = 1); w_cos = 0 gives the pure form.

The vectors are compared as the student outputs them: an embedding student normalises its output
when the teacher does, so both sides are then unit vectors. Labels are not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method, upcast


def _pair(inp: LossInputs, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = inp.student_logits, inp.teacher_logits
    if t is None:
        raise ValueError(f"{method} needs the teacher's outputs")
    if s.dim() != 2 or s.shape != t.shape:
        raise ValueError(f"{method}: student output {tuple(s.shape)} and teacher output {tuple(t.shape)} must both be "
                         "[B, D] with the same D")
    return upcast(s), upcast(t).detach()


def cosine_distance(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean_i (1 − cos(s_i, t_i))."""
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-12)).mean()


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """[B, D] → [B, B] cosine similarities."""
    xn = F.normalize(x, p=2.0, dim=1, eps=1e-12)
    return xn @ xn.T


@register_method("embedding_mse")
class EmbeddingMSELoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        s, t = _pair(inp, "embedding_mse")
        return F.mse_loss(s, t)


@register_method("embedding_cosine")
class EmbeddingCosineLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        s, t = _pair(inp, "embedding_cosine")
        return cosine_distance(s, t)


@register_method("embedding_relational")
class EmbeddingRelationalLoss(DistillLoss):
    def forward(self, inp: LossInputs) -> torch.Tensor:
        s, t = _pair(inp, "embedding_relational")
        p = self.params
        loss = p.relational_weight * (similarity_matrix(s) - similarity_matrix(t)).pow(2).mean()
        if p.cosine_weight:
            loss = loss + p.cosine_weight * cosine_distance(s, t)
        return loss
