"""Dual-Head KD (docs/methods.md#dhkd).

Yang, Zong, Huang, Feng, An, "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with
an Auxiliary Head", arXiv:2411.08937 (code penghui-yang/DHKD, `helper/loops.py`,
`distiller_zoo/BinaryKLNorm.py`, `distiller_zoo/BinaryKL.py`).

Head 1 (student_logits z¹, used at inference) gets CE only; head 2 (extras["aux_logits"] z², a
second Linear(d, C) — or the small MLP of the paper — on the same pooled feature) gets the
logit-level loss only:

    L = γ · CE(z¹, y) + α · L_BKLN(z², t)
    L_BKLN = T² · (1/B) Σ_i Σ_c [ ½ log(½/d_ic) + ½ log(½/(1 − d_ic)) ],
             d_ic = clip(σ((z²_ic − t_ic)/T), 1e−8, 1 − 1e−8)          = KL(Bern(½) ‖ Bern(d))
    L_BKL  = T² · (1/B) Σ_i Σ_c KL(Bern(σ(t_ic/T)) ‖ Bern(σ(z²_ic/T)))   (non-normalised variant)

log d and log(1 − d) are logsigmoid(x) and logsigmoid(−x), x = (z² − t)/T. The clip of d to
[1e−8, 1 − 1e−8] is applied as the equivalent clamp of x to ±log((1 − 1e−8)/1e−8): the same
values and zero gradient outside, but without 1 − 1e−8 rounding to 1 in float32.

Gradient alignment (GA, PCGrad-style) is a trainer step, not a loss: `parts()` returns the two
weighted objectives so the trainer can backpropagate them separately. The BinaryKL weight is set
to 0 from epoch `kd_stop_epoch` on when it is given (50 in the ImageNet recipe).
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from .base import DistillLoss, LossInputs, register_method
from .common import checked_teacher, labelled_ce, require_extra, upcast

# |x| beyond which d = σ(x) is clipped to 1e−8 / 1 − 1e−8
_CLIP_LOGIT = math.log((1.0 - 1e-8) / 1e-8)


def binary_kl_norm(aux_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · mean_i Σ_c KL(Bern(½) ‖ Bern(σ((z − t)/T)))."""
    x = ((upcast(aux_logits) - upcast(teacher_logits)) / temperature).clamp(-_CLIP_LOGIT, _CLIP_LOGIT)
    # ½ log(½/d) + ½ log(½/(1−d)) = −log 2 − ½ (log d + log(1−d))
    per_class = -math.log(2.0) - 0.5 * (F.logsigmoid(x) + F.logsigmoid(-x))
    return temperature * temperature * per_class.sum(dim=1).mean()


def binary_kl(aux_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · mean_i Σ_c KL(Bern(σ(t/T)) ‖ Bern(σ(z/T)))."""
    zs, zt = upcast(aux_logits) / temperature, upcast(teacher_logits) / temperature
    log_ps, log_1ms = F.logsigmoid(zs), F.logsigmoid(-zs)
    log_pt, log_1mt = F.logsigmoid(zt), F.logsigmoid(-zt)
    per_class = log_pt.exp() * (log_pt - log_ps) + log_1mt.exp() * (log_1mt - log_1ms)
    return temperature * temperature * per_class.sum(dim=1).mean()


@register_method("dhkd")
class DHKDLoss(DistillLoss):

    def parts(self, inp: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ·CE on the main head, α·binary KL on the auxiliary head), for gradient alignment."""
        p = self.params
        teacher = checked_teacher(inp, "dhkd")
        aux = require_extra(inp.extras, "aux_logits", "dhkd")
        if aux.shape != teacher.shape:
            raise ValueError(f"dhkd: aux_logits {tuple(aux.shape)} must match teacher_logits {tuple(teacher.shape)}")
        fn = binary_kl_norm if p.binary_kl == "norm" else binary_kl
        kd_weight = 0.0 if p.kd_stop_epoch is not None and inp.epoch >= p.kd_stop_epoch else p.alpha
        return p.gamma * labelled_ce(inp.student_logits, inp.labels), kd_weight * fn(aux, teacher, p.temperature)

    def forward(self, inp: LossInputs) -> torch.Tensor:
        ce, kd = self.parts(inp)
        return ce + kd
