"""rkl and jsd (docs/methods.md#rkl, #jsd): worked-example values, JS limits, gradient formula, mixing with CE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, inputs19, s19, t19

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.divergences import jensen_shannon, reverse_kl


def _value(name, tau, alpha=1.0):
    return build_loss(name, {"temperature": tau, "alpha": alpha})(inputs19()).item()


def test_rkl_values():
    assert abs(_value("rkl", 1.0) - 0.303878) < TOL
    assert abs(_value("rkl", 4.0) - 0.355708) < TOL


def test_jsd_values():
    assert abs(_value("jsd", 1.0) - 0.066348) < TOL
    assert abs(_value("jsd", 4.0) - 0.088334) < TOL


def test_mixing_with_ce():
    assert abs(_value("rkl", 4.0, 0.9) - (0.1 * CE19 + 0.9 * 0.355708)) < TOL
    assert abs(_value("jsd", 1.0, 0.25) - (0.75 * CE19 + 0.25 * 0.066348)) < TOL


def test_unlabelled_samples_only_get_the_divergence():
    inp = inputs19()
    inp.labels = torch.tensor([0, -1, -1])
    ce_first = F.cross_entropy(s19()[:1], torch.tensor([0])).item()
    value = build_loss("rkl", {"temperature": 1.0, "alpha": 0.5})(inp).item()
    assert abs(value - (0.5 * ce_first + 0.5 * 0.303878)) < TOL


def test_js_is_zero_for_identical_distributions():
    x = torch.randn(6, 7, dtype=torch.float64)
    assert abs(jensen_shannon(x, x, 1.0).item()) < 1e-12
    assert abs(jensen_shannon(x, x + 3.0, 2.0).item()) < 1e-12  # softmax is shift-invariant
    assert abs(reverse_kl(x, x, 1.0).item()) < 1e-12


def test_js_symmetric_and_bounded_by_log2():
    gen = torch.Generator().manual_seed(0)
    for scale in (1.0, 10.0, 1e4):
        a = scale * torch.randn(8, 6, generator=gen, dtype=torch.float64)
        b = scale * torch.randn(8, 6, generator=gen, dtype=torch.float64)
        ab, ba = jensen_shannon(a, b, 1.0).item(), jensen_shannon(b, a, 1.0).item()
        assert abs(ab - ba) < 1e-12
        assert 0.0 <= ab <= math.log(2.0) + 1e-12
    # disjoint one-hot distributions reach the bound
    a = torch.tensor([[1e4, -1e4]], dtype=torch.float64)
    assert abs(jensen_shannon(a, -a, 1.0).item() - math.log(2.0)) < 1e-12


def test_rkl_gradient_formula():
    # docs/methods.md#rkl: ∂RKL_i/∂s_j = p_j[(log p_j − log q_j) − RKL_i]/τ for one sample
    tau = 2.0
    s = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 5, dtype=torch.float64)
    reverse_kl(s, t, tau).backward()
    log_p, log_q = F.log_softmax(s.detach() / tau, 1), F.log_softmax(t / tau, 1)
    rkl = (log_p.exp() * (log_p - log_q)).sum()
    expected = log_p.exp() * ((log_p - log_q) - rkl) / tau
    assert torch.allclose(s.grad, expected, atol=1e-12)


def test_needs_teacher():
    with pytest.raises(ValueError, match="teacher"):
        build_loss("jsd")(LossInputs(s19(), None, None))
    with pytest.raises(ValueError, match="same shape"):
        build_loss("rkl")(LossInputs(s19(), None, t19()[:, :3]))
