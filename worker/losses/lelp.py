"""LELP — pseudo-subclass distillation from linear projections of teacher embeddings (docs/methods.md#lelp).

Loo, Iliopoulos, Hu, Vee, "Linear Projections of Teacher Embeddings for Few-Class Distillation",
arXiv:2409.20449 (2024); modelled on Subclass Distillation (Müller, Kornblith, Hinton 2020,
arXiv:2002.03936). No official code exists.

What the paper pins down, implemented as stated (docs/methods.md#lelp):
- offline, once over the training set, with the teacher's final-layer embeddings
  (extras["teacher_features"], [B, d]): project the embeddings onto the null space of the
  teacher's output weights, run a per-class PCA there, keep the top directions, apply a random
  rotation (fixed seed) so the directions have equal variance in expectation;
- split each class into S pseudo-subclasses whose teacher probabilities come from the
  projections along those directions through a tempered softmax with subclass temperature β;
- the student has an S·C-way head and is trained with one KL over the S·C subclass
  probabilities; class predictions aggregate each class's subclasses; the paper's experiments use
  pure distillation (no label CE), the default here.

Choices the paper leaves open, made here:
1. Subclass probabilities. The teacher's class probability is split, not replaced:
       P^T(c, k | x) = softmax(t/τ)_c · softmax_k(v_c,k(x)/β),
       v_c,k(x) = ⟨d_c,k, e(x) − m_c⟩ / σ_c
   so Σ_k P^T(c, k) = softmax(t/τ)_c exactly (the subclass split only adds information), and in
   logits: t_c/τ + log softmax_k(v_c,k/β). Every sample gets a split of every class, from that
   class's directions.
2. Directions: the top S principal directions (not S−1) of the class's null-space-projected
   embeddings, then rotated by a Haar-random S×S orthogonal matrix (seeded); σ_c is the square
   root of the mean of those S eigenvalues (the per-direction std in expectation), so β is free of
   the embedding scale.
3. Null space: the orthogonal complement of the row space of the teacher's output weight W [C, d].
   W is given to `fit` when the trainer has it; otherwise it is estimated by least squares from
   (embedding, logit) pairs, t ≈ W e + b, which recovers W exactly when the logits are a linear
   function of these embeddings (the usual final layer). Needs d − rank(W) ≥ S.
4. Class of a training sample for the per-class PCA: its label, or the teacher's argmax when it has
   none. A class with fewer than 2 samples uses the pooled within-class covariance (and the global
   mean when it has none).
5. Student head: `student_logits` is [B, S·C], class-major (column c·S + k); the class logits are
   logsumexp over each class's S columns (`class_logits`). The trainer builds the student with
   `output_width(C)` outputs and predicts/exports through `class_logits`.
6. Loss: L = (1 − α)·CE(class_logits(z), y) + α·τ²·KL(P^T_sub ‖ softmax(z/τ)), batchmean; α = 1
   (pure distillation) by default.

`fit` must run before training (and on resume it is deterministic, or `load_state_dict` restores the
fitted buffers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdserve.service.spec.methods import LELPParams

from .base import DistillLoss, LossInputs, PrepareData, register_method
from .common import labelled_ce, check_logits, require_extra, upcast

_FITTED = ("sub_means", "sub_directions", "sub_scales")


def class_logits(subclass_logits: torch.Tensor, num_subclasses: int) -> torch.Tensor:
    """[B, S·C] class-major subclass logits → [B, C] class logits (logsumexp over subclasses)."""
    b, width = subclass_logits.shape
    if width % num_subclasses:
        raise ValueError(f"lelp: {width} student outputs are not a multiple of S={num_subclasses}")
    return subclass_logits.view(b, width // num_subclasses, num_subclasses).logsumexp(dim=2)


def random_rotation(size: int, seed: int) -> torch.Tensor:
    """Haar-random orthogonal [size, size] matrix, float64, from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def estimate_output_weight(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Least-squares W [C, d] in logits ≈ features·Wᵀ + b."""
    x = torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype)], dim=1)
    sol = torch.linalg.lstsq(x, logits, driver="gelsd").solution  # [d+1, C]
    return sol[:-1].t()


@register_method("lelp")
class LELPLoss(DistillLoss):

    def __init__(self, params: LELPParams):
        super().__init__(params)
        for name in _FITTED:
            self.register_buffer(name, None)

    # ---- what the trainer needs ---------------------------------------------------------------

    def output_width(self, num_classes: int) -> int:
        """Number of student outputs: S·C."""
        return self.params.num_subclasses * num_classes

    def class_logits(self, student_logits: torch.Tensor) -> torch.Tensor:
        return class_logits(student_logits, self.params.num_subclasses)

    def prepare(self, data: PrepareData) -> None:
        if data.teacher_features is None or data.teacher_logits is None:
            raise ValueError("lelp needs teacher features: name the teacher's embedding output in teacher_features")
        self.fit(data.teacher_features.flatten(1), data.teacher_logits, data.labels)

    @property
    def fitted(self) -> bool:
        return self.sub_directions is not None

    @torch.no_grad()
    def fit(
        self,
        features: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_weight: torch.Tensor | None = None,
    ) -> None:
        """Fit the subclass directions on the training set: features [N, d], teacher logits [N, C],
        labels [N] (−1 = unlabelled) or None, the teacher's output weight [C, d] if known."""
        s = self.params.num_subclasses
        e = features.detach().to("cpu", torch.float64)
        t = teacher_logits.detach().to("cpu", torch.float64)
        if e.dim() != 2 or t.dim() != 2 or e.shape[0] != t.shape[0]:
            raise ValueError(
                f"lelp.fit: features [N, d] and logits [N, C] expected, got {tuple(e.shape)}, {tuple(t.shape)}"
            )
        d, c = e.shape[1], t.shape[1]
        w = estimate_output_weight(e, t) if output_weight is None else output_weight.detach().to("cpu", torch.float64)
        # orthonormal basis of null(W): right singular vectors beyond the rank of W
        _, sv, vh = torch.linalg.svd(w, full_matrices=True)
        rank = int((sv > sv.max().clamp_min(1e-300) * max(w.shape) * torch.finfo(torch.float64).eps).sum())
        null_basis = vh[rank:].t()  # [d, d − rank]
        if null_basis.shape[1] < s:
            raise ValueError(
                f"lelp: the null space of the teacher's output weights has dimension {null_basis.shape[1]} "
                f"(d={d}, rank={rank}); S={s} subclasses need at least S"
            )
        cls = t.argmax(dim=1)
        if labels is not None:
            lab = labels.detach().to("cpu").long()
            cls = torch.where(lab >= 0, lab, cls)
        x = e @ null_basis  # null-space coordinates [N, d − rank]
        global_mean = e.mean(dim=0)
        means = torch.empty(c, d, dtype=torch.float64)
        covs, pooled, pooled_n = [], torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64), 0
        for k in range(c):
            xk, ek = x[cls == k], e[cls == k]
            means[k] = ek.mean(dim=0) if len(ek) else global_mean
            if len(xk) >= 2:
                centred = xk - xk.mean(dim=0)
                pooled += centred.t() @ centred
                pooled_n += len(xk) - 1
                covs.append(centred.t() @ centred / (len(xk) - 1))
            else:
                covs.append(None)
        pooled = pooled / max(pooled_n, 1)
        directions = torch.empty(c, d, s, dtype=torch.float64)
        scales = torch.empty(c, dtype=torch.float64)
        for k in range(c):
            evals, evecs = torch.linalg.eigh(covs[k] if covs[k] is not None else pooled)
            top = evecs[:, -s:].flip(1)  # top-S principal directions, descending
            directions[k] = null_basis @ top @ random_rotation(s, self.params.seed * 1_000_003 + k)
            var = evals[-s:].clamp_min(0).mean()
            scales[k] = var.sqrt() if var > 0 else 1.0
        # float32 buffers on the features' device; they follow the module's .to() from here on
        self.sub_means = means.to(features.device, torch.float32)
        self.sub_directions = directions.to(features.device, torch.float32)
        self.sub_scales = scales.to(features.device, torch.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # fitted buffers start as None: give them a tensor to load into
        for name in _FITTED:
            if getattr(self, name) is None and prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- the loss ----------------------------------------------------------------------------

    def teacher_subclass_log_probs(self, teacher_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """log P^T(c, k | x), [B, S·C] class-major."""
        if not self.fitted:
            raise ValueError("lelp: call fit(features, teacher_logits, labels) on the training set before training")
        p = self.params
        t, e = upcast(teacher_logits).detach(), upcast(features).detach()
        if e.dim() != 2 or e.shape[1] != self.sub_directions.shape[1]:
            width = self.sub_directions.shape[1]
            raise ValueError(f"lelp: teacher_features must be [B, {width}], got {tuple(e.shape)}")
        dirs = self.sub_directions.to(e.dtype)
        # v_c,k = ⟨d_c,k, e − m_c⟩ / σ_c
        v = torch.einsum("bd,cds->bcs", e, dirs) - torch.einsum("cd,cds->cs", self.sub_means.to(e.dtype), dirs)
        v = v / self.sub_scales.to(e.dtype).view(1, -1, 1)
        log_split = F.log_softmax(v / p.subclass_temperature, dim=2)
        log_class = F.log_softmax(t / p.temperature, dim=1)
        return (log_class.unsqueeze(2) + log_split).reshape(t.shape[0], -1)

    def forward(self, inp: LossInputs) -> torch.Tensor:
        p = self.params
        z = inp.student_logits
        check_logits(z)
        if inp.teacher_logits is None:
            raise ValueError("lelp needs teacher_logits")
        b, c = inp.teacher_logits.shape
        if z.shape != (b, self.output_width(c)):
            raise ValueError(
                f"lelp: student_logits must be [B, S·C] = [{b}, {self.output_width(c)}] (S={p.num_subclasses} "
                f"subclasses per class), got {tuple(z.shape)}"
            )
        feats = require_extra(inp.extras, "teacher_features", "lelp")
        log_pt = self.teacher_subclass_log_probs(inp.teacher_logits, feats)
        log_ps = F.log_softmax(upcast(z) / p.temperature, dim=1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
        ce = labelled_ce(self.class_logits(upcast(z)), inp.labels)
        return (1.0 - p.alpha) * ce + p.alpha * p.temperature * p.temperature * kl
