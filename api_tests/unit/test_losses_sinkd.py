"""sinkd (docs/methods.md#sinkd): worked-example cost, cost matrix and plan, marginals, POT cross-check, mixing."""

from __future__ import annotations

import numpy as np
import ot
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, inputs19, s19, t19

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.sinkd import sinkhorn_cost, sinkhorn_cost_matrix, sinkhorn_plan

M19 = [[0.421028, 0.848912, 0.802871], [0.860720, 0.389419, 0.728518], [0.468562, 0.785658, 0.276941]]
PLAN19 = [[0.929105, 0.026546, 0.041702], [0.004214, 0.967685, 0.032303], [0.066681, 0.005769, 0.925995]]


def test_raw_cost_and_intermediates():
    value, plan, cost = sinkhorn_cost(s19(), t19(), tau=2.0, epsilon=0.1, n_iter=20, return_plan=True)
    assert abs(value.item() - 1.143414) < TOL
    assert torch.allclose(cost, torch.tensor(M19, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(plan, torch.tensor(PLAN19, dtype=torch.float64), atol=1e-6)
    assert abs(0.001 * value.item() - 0.001143) < 1e-6


def test_marginals():
    _, plan, _ = sinkhorn_cost(s19(), t19(), return_plan=True)
    assert torch.allclose(plan.sum(dim=0), torch.ones(3, dtype=torch.float64), atol=1e-12)  # last step: columns
    assert torch.allclose(plan.sum(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-2)  # ≈ 1 after 20 iterations
    assert abs(plan.sum().item() - 3.0) < 1e-12  # mass B


def test_total_loss_composition():
    # (1−α)·CE + α·mean_i(−Σ p^T_τ log p^S_τ) + β·w·⟨Π, M⟩; worked example: CE-form × τ² at τ = 4 is 21.582949
    params = {"alpha": 0.6, "temperature": 4.0, "beta": 0.5, "sinkhorn_weight": 0.001}
    value = build_loss("sinkd", params)(inputs19()).item()
    expected = 0.4 * CE19 + 0.6 * 21.582949 / 16.0 + 0.5 * 0.001 * 1.143414
    assert abs(value - expected) < TOL


def test_kd_term_has_the_kl_gradient():
    # the CE form differs from the KL form by a constant: same gradient w.r.t. the student
    s = s19().requires_grad_(True)
    build_loss("sinkd", {"alpha": 1.0, "beta": 0.0, "temperature": 3.0})(LossInputs(s, None, t19())).backward()
    expected = (F.softmax(s.detach() / 3.0, 1) - F.softmax(t19() / 3.0, 1)) / 3.0 / 3
    assert torch.allclose(s.grad, expected, atol=1e-12)


def test_matches_pot_at_convergence():
    gen = torch.Generator().manual_seed(0)
    for b, c, eps in [(5, 4, 0.1), (8, 10, 0.05), (16, 3, 0.2)]:
        s = 2 * torch.randn(b, c, generator=gen, dtype=torch.float64)
        t = 2 * torch.randn(b, c, generator=gen, dtype=torch.float64)
        cost = sinkhorn_cost_matrix(s, t, 2.0)
        ours = sinkhorn_plan(cost, eps, n_iter=3000)
        m = cost.numpy()
        ones = np.ones(b)
        theirs = ot.sinkhorn(ones, ones, m, eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-13)
        assert np.allclose(ours.numpy(), theirs, atol=1e-8)
        pot_cost = float((theirs * m).sum())
        assert abs((ours * cost).sum().item() - pot_cost) < 1e-8
        # POT with the textbook 1/B marginals is the same plan divided by B
        uniform = ot.sinkhorn(ones / b, ones / b, m, eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-13)
        assert np.allclose(ours.numpy() / b, uniform, atol=1e-8)


def test_log_domain_survives_tiny_epsilon_and_fp16():
    gen = torch.Generator().manual_seed(2)
    s = (1e4 * torch.randn(6, 5, generator=gen)).clamp(-1e4, 1e4).half().requires_grad_(True)
    t = (1e4 * torch.randn(6, 5, generator=gen)).clamp(-1e4, 1e4).half()
    value = sinkhorn_cost(s, t, epsilon=1e-4, n_iter=50)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad.float()).all()
    # the multiplicative form underflows here: exp(−M/ε) is 0 for every M ≥ ~0.01
    cost = sinkhorn_cost_matrix(s.detach().float(), t.float())
    assert (torch.exp(-cost / 1e-4) == 0).any()


def test_batch_dependence_is_documented_behaviour():
    # the loss depends on the batch: one sample alone gives ⟨Π, M⟩ = M_11
    v1 = sinkhorn_cost(s19()[:1], t19()[:1]).item()
    assert abs(v1 - M19[0][0]) < 1e-6
