"""FitNets hint loss (docs/methods.md#fitnet), single-stage benchmark form.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, arXiv:1412.6550; the single-stage
form and the ConvReg regressor of RepDistiller (`distiller_zoo/FitNet.py`, `models/util.py`) and
mdistiller (`mdistiller/distillers/FitNet.py`, `_common.py`).

A learned regressor r maps the student's guided feature to the teacher's hint shape:

    L = w_ce·CE(s, y) + β·MSE_mean(r(F_S), sg(F_T)) + w_kd·τ²·KL(p^T_τ ‖ p^S_τ)

MSE_mean averages over every element (N·C·H·W, or N·D). Defaults are the benchmark recipe:
w_ce = 1, β = 100, no KD term (w_kd = 0); a positive w_kd adds Hinton KD (batchmean, τ²).

Regressor, chosen from the feature shapes:
- [B, D_s] → [B, D_t], or tokens [B, L, D_s] → [B, L, D_t]: nn.Linear(D_s, D_t).
- [B, C_s, H_s, W_s] → [B, C_t, H_t, W_t]: ConvReg as mdistiller — a 3×3 stride-2 conv when
  H_s = 2·H_t, a 4×4 stride-2 transposed conv when 2·H_s = H_t, otherwise a conv of kernel
  (1 + H_s − H_t, 1 + W_s − W_t) (a 1×1 conv when the spatial sizes match); then BatchNorm2d and
  ReLU, so 4-D hints are meant to be post-ReLU feature maps as in the reference recipe.

The regressor's parameters belong to this loss module and are trained with the student. The trainer
must create it before it builds the optimizer, from one batch's feature shapes:

    loss.setup(student_features.shape, teacher_features.shape)    # then loss.to(device)
    optimizer = SGD(list(student.parameters()) + list(loss.parameters()), ...)

(and also before `load_state_dict` on resume). If forward() meets features before setup() it creates
the regressor there, with a warning: its parameters are then missing from an optimizer built earlier.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdserve.service.spec.methods import FitNetParams

from .base import DistillLoss, LossInputs, PrepareData, register_method
from .common import labelled_ce, check_logits, require_extra, require_teacher, upcast


def make_regressor(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """A regressor from batch shapes (batch dimension first; the batch sizes are ignored)."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t):
        raise ValueError(f"fitnet: student feature {s} and teacher feature {t} must have the same rank")
    if len(s) in (2, 3):
        if len(s) == 3 and s[1] != t[1]:
            raise ValueError(f"fitnet: token features need the same length, got {s} and {t}")
        return nn.Linear(s[-1], t[-1])
    if len(s) == 4:
        (_, c_s, h_s, w_s), (_, c_t, h_t, w_t) = s, t
        if h_s == 2 * h_t:
            conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t:
            conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"fitnet: no ConvReg maps a {h_s}×{w_s} student map to a {h_t}×{w_t} teacher map")
        return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU(inplace=False))
    raise ValueError(f"fitnet: features must be [B, D], [B, L, D] or [B, C, H, W], got {s}")


@register_method("fitnet")
class FitNetLoss(DistillLoss):

    def __init__(self, params: FitNetParams):
        super().__init__(params)
        self.regressor: nn.Module | None = None

    def setup(self, student_feat_shape: Sequence[int], teacher_feat_shape: Sequence[int]) -> nn.Module:
        """Create the regressor from one batch's feature shapes (call before building the optimizer)."""
        self.regressor = make_regressor(student_feat_shape, teacher_feat_shape)
        return self.regressor

    def student_layer(self) -> int:
        return self.params.student_layer

    def prepare(self, data: PrepareData) -> None:
        if data.teacher_features is None:
            raise ValueError("fitnet needs teacher features: name a teacher output in the job's teacher_features")
        self.setup(data.student_feature_shape, (1, *data.teacher_features.shape[1:]))

    def hint_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        """MSE_mean(r(F_S), F_T), the teacher feature detached."""
        fs = upcast(student_features)
        ft = upcast(teacher_features).detach()
        if self.regressor is None:
            warnings.warn(
                "fitnet: regressor created lazily in forward(); call loss.setup(...) before building the optimizer "
                "or its parameters are not trained",
                stacklevel=2,
            )
            self.setup(fs.shape, ft.shape)
            self.regressor.to(device=fs.device)
        reg_dtype = next(self.regressor.parameters()).dtype
        out = self.regressor(fs.to(reg_dtype))
        if out.shape != ft.shape:
            raise ValueError(f"fitnet: regressor output {tuple(out.shape)} ≠ teacher feature {tuple(ft.shape)}")
        return F.mse_loss(out, ft.to(out.dtype))

    def forward(self, inp: LossInputs) -> torch.Tensor:
        p = self.params
        check_logits(inp.student_logits)
        fs = require_extra(inp.extras, "student_features", "fitnet")
        ft = require_extra(inp.extras, "teacher_features", "fitnet")
        loss = p.ce_weight * labelled_ce(inp.student_logits, inp.labels) + p.hint_weight * self.hint_loss(fs, ft)
        if p.kd_weight > 0:
            teacher = require_teacher(inp.teacher_logits, inp.student_logits, "fitnet")
            tau = p.temperature
            log_ps = F.log_softmax(upcast(inp.student_logits) / tau, dim=1)
            log_pt = F.log_softmax(upcast(teacher) / tau, dim=1)
            loss = loss + p.kd_weight * tau * tau * (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
        return loss
