"""kd and ce (docs/methods.md#kd): worked-example values, analytic gradients, torchdistill KDLoss cross-check."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, inputs19, s19, t19, y19
from torchdistill.losses.mid_level import KDLoss as TorchdistillKDLoss

from kdserve.worker.losses import LossInputs, build_loss


def test_ce_value():
    assert abs(build_loss("ce")(inputs19()).item() - CE19) < TOL


def test_kd_fkl_values():
    # alpha = 1 leaves τ²·FKL alone
    assert abs(build_loss("kd", {"temperature": 1.0, "alpha": 1.0})(inputs19()).item() - 0.259841) < TOL
    assert abs(build_loss("kd", {"temperature": 4.0, "alpha": 1.0})(inputs19()).item() - 0.353222) < TOL


def test_kd_mixing():
    value = build_loss("kd", {"temperature": 4.0, "alpha": 0.9})(inputs19()).item()
    assert abs(value - (0.1 * CE19 + 0.9 * 0.353222)) < TOL


def test_kd_ce_form_differs_by_teacher_entropy():
    # worked example: CE form × τ² at τ = 4 is 21.582949; the KL form (0.353222) lacks τ²·mean H(p^T)
    pt = F.softmax(t19() / 4.0, dim=1)
    entropy = -(pt * pt.log()).sum(dim=1).mean().item()
    assert abs(0.353222 + 16.0 * entropy - 21.582949) < TOL


def test_kd_gradient_matches_closed_form():
    # ∂/∂s [(1−α)·CE + α·τ²·FKL] = (1−α)(softmax(s) − onehot)/B + α·τ·(p^S_τ − p^T_τ)/B
    tau, alpha = 4.0, 0.7
    s = s19(torch.float32).requires_grad_(True)
    t, y = t19(torch.float32), y19()
    build_loss("kd", {"temperature": tau, "alpha": alpha})(LossInputs(s, y, t)).backward()
    b = s.shape[0]
    expected = (1 - alpha) * (F.softmax(s, 1) - F.one_hot(y, 4)) / b + alpha * tau * (
        F.softmax(s / tau, 1) - F.softmax(t / tau, 1)
    ) / b
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)


def test_ce_gradient_matches_closed_form():
    s = s19(torch.float32).requires_grad_(True)
    y = torch.tensor([0, -1, 3])
    build_loss("ce")(LossInputs(s, y)).backward()
    mask = y >= 0
    expected = torch.zeros(3, 4)
    expected[mask] = (F.softmax(s[mask], 1) - F.one_hot(y[mask], 4)) / 2
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)


def _torchdistill(student, teacher, targets, **kw):
    loss = TorchdistillKDLoss(".", "output", ".", "output", **kw)
    return loss({".": {"output": student}}, {".": {"output": teacher}}, targets)


def test_matches_torchdistill_kdloss_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        s = 3 * torch.randn(16, 10, generator=gen)
        t = 3 * torch.randn(16, 10, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        tau = float(torch.empty(1).uniform_(0.5, 6.0, generator=gen))
        a = float(torch.empty(1).uniform_(0.05, 0.95, generator=gen))
        ours = build_loss("kd", {"temperature": tau, "alpha": a})(LossInputs(s, y, t))
        # torchdistill's alpha weights CE (beta = 1 − alpha weights the τ²-scaled KL): the mirror image
        theirs = _torchdistill(s, t, y, temperature=tau, alpha=1 - a)
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_torchdistill_quirk_bare_kl_without_tau_squared():
    # docs/methods.md#kd pitfall: alpha = 0 (or no targets) returns the bare KL — no τ², no CE
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    tau = 4.0
    ours = build_loss("kd", {"temperature": tau, "alpha": 1.0})(LossInputs(s, y, t))
    bare = _torchdistill(s, t, y, temperature=tau, alpha=0.0)
    assert torch.allclose(ours, tau * tau * bare, rtol=1e-5)
    no_targets = _torchdistill(s, t, None, temperature=tau, alpha=0.5)
    assert torch.allclose(no_targets, bare, rtol=1e-6)
