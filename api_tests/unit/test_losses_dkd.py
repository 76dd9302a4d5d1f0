"""dkd (docs/methods.md#dkd): worked-example values, the decomposition identity, warm-up, fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, inputs19, s19, t19, y19

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.dkd import dkd_parts, warmup_factor


@pytest.mark.parametrize(
    "alpha,beta,tau,total,tckd,nckd",
    [(1.0, 8.0, 4.0, 1.945721, 0.012798, 0.013601), (1.0, 0.5, 1.0, 0.274373, 0.207578, 0.133591)],
)
def test_dkd_values(alpha, beta, tau, total, tckd, nckd):
    t_part, n_part = dkd_parts(s19(), t19(), y19(), tau)
    assert abs(t_part.mean().item() - tckd) < TOL
    assert abs(n_part.mean().item() - nckd) < TOL
    params = {"alpha": alpha, "beta": beta, "temperature": tau, "warmup": 0}
    assert abs(build_loss("dkd", params)(inputs19()).item() - (CE19 + total)) < TOL


@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0])
def test_decomposition_identity(tau):
    # KL(p^T ‖ p^S) = TCKD + (1 − p^T_y)·NCKD, per sample, to machine precision
    gen = torch.Generator().manual_seed(0)
    for s, t, y in [(s19(), t19(), y19())] + [
        (3 * torch.randn(16, 7, generator=gen, dtype=torch.float64),
         3 * torch.randn(16, 7, generator=gen, dtype=torch.float64),
         torch.randint(0, 7, (16,), generator=gen))
    ]:
        tckd, nckd = dkd_parts(s, t, y, tau)
        log_ps, log_pt = F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
        pt_y = log_pt.exp().gather(1, y.view(-1, 1)).squeeze(1)
        assert (kl - (tckd + (1 - pt_y) * nckd)).abs().max().item() < 1e-12


def test_warmup_ramp():
    assert warmup_factor(0, 20) == pytest.approx(1 / 20)
    assert warmup_factor(9, 20) == pytest.approx(0.5)
    assert warmup_factor(19, 20) == 1.0
    assert warmup_factor(50, 20) == 1.0
    assert warmup_factor(0, 0) == 1.0
    loss = build_loss("dkd", {"warmup": 4, "ce_weight": 0.0, "beta": 8.0})  # METHODS.md §19: β = 8
    full = 1.945721
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        value = loss(LossInputs(s19(), y19(), t19(), epoch=epoch, epochs=20)).item()
        assert abs(value - factor * full) < TOL


def test_unlabelled_samples_use_teacher_argmax():
    loss = build_loss("dkd", {"warmup": 0, "ce_weight": 1.0})
    argmax = t19().argmax(1)
    unlabelled = loss(LossInputs(s19(), None, t19())).item()
    as_labels = build_loss("dkd", {"warmup": 0, "ce_weight": 0.0})(LossInputs(s19(), argmax, t19())).item()
    assert abs(unlabelled - as_labels) < 1e-12


def test_no_log_zero_for_confident_predictions():
    # p_y → 1 in fp16-sized logits: the binary log-probabilities stay finite
    s = torch.tensor([[60000.0, -60000.0, 0.0]], dtype=torch.float16).requires_grad_(True)
    t = torch.tensor([[-60000.0, 60000.0, 0.0]], dtype=torch.float16)
    value = build_loss("dkd", {"warmup": 0})(LossInputs(s, torch.tensor([0]), t))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad.float()).all()
