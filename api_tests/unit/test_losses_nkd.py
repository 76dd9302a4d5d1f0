"""nkd and uskd (docs/methods.md#nkd, #uskd): worked-example values, code-exact USKD ranking, fallbacks, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, inputs19, s19, t19, u19, y19

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.nkd import nkd_parts, uskd_parts, uskd_soft_targets, uskd_terms, zipf_non_target_labels

# ---- NKD --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tau,gamma,target,non_target,total",
    [(1.0, 1.5, 0.552245, 1.260381, 1.812626), (3.0, 3.5, 0.552245, 33.156161, 33.708406)],
)
def test_nkd_values(tau, gamma, target, non_target, total):
    tgt, non = nkd_parts(s19(), t19(), y19(), tau, gamma)
    assert abs(tgt.item() - target) < TOL
    assert abs(non.item() - non_target) < TOL
    loss = build_loss("nkd", {"temperature": tau, "gamma": gamma})(inputs19())
    assert abs(loss.item() - (CE19 + total)) < TOL  # CE kept with weight 1


def test_nkd_non_target_is_a_renormalised_softmax():
    # q̂ = softmax over non-target logits = non-target probabilities / their sum
    s, y = s19(), y19()
    p = F.softmax(s, 1)
    mask = F.one_hot(y, 4).bool()
    renorm = p[~mask].view(3, 3) / p[~mask].view(3, 3).sum(1, keepdim=True)
    ones_like_teacher = s.clone()
    _, non = nkd_parts(s, ones_like_teacher, y, 1.0, 1.0)
    assert abs(non.item() - (-(renorm * renorm.log()).sum(1).mean().item())) < 1e-12


def test_nkd_unlabelled_samples_use_teacher_argmax():
    loss = build_loss("nkd", {"temperature": 1.0, "gamma": 1.5})
    inp = inputs19()
    inp.labels = torch.tensor([0, -1, -1])
    argmax = t19().argmax(1)  # [0, 2, 0]
    tgt, non = nkd_parts(s19(), t19(), torch.tensor([0, argmax[1].item(), argmax[2].item()]), 1.0, 1.5)
    ce0 = F.cross_entropy(s19()[:1], torch.tensor([0]))
    assert torch.allclose(loss(inp), ce0 + tgt + non, atol=1e-12)
    inp.labels = None
    tgt, non = nkd_parts(s19(), t19(), argmax, 1.0, 1.5)
    assert torch.allclose(loss(inp), tgt + non, atol=1e-12)


def test_nkd_teacher_target_probability_is_a_detached_weight():
    # with only the teacher requiring grad, the target term has no graph: p^T_y is a constant weight
    tgt, non = nkd_parts(s19(), t19().requires_grad_(True), y19(), 1.0, 1.0)
    assert not tgt.requires_grad
    assert non.requires_grad  # q̂^T is not detached by the formula (the trainer's teacher logits are)
    # and the student gradient of the target term is −p^T_y·(onehot − softmax(s))/B
    s = s19().requires_grad_(True)
    tgt, _ = nkd_parts(s, t19(), y19(), 1.0, 1.0)
    tgt.backward()
    pt_y = F.softmax(t19(), 1).gather(1, y19().view(-1, 1))
    expected = -pt_y * (F.one_hot(y19(), 4) - F.softmax(s.detach(), 1)) / 3
    assert torch.allclose(s.grad, expected, atol=1e-12)


# ---- USKD -------------------------------------------------------------------------------------


def test_uskd_weights_and_terms():
    s, y = s19(), y19()
    sigma_y = F.softmax(s, 1).gather(1, y.view(-1, 1)).squeeze(1)
    w = sigma_y**2 + 1 - (sigma_y**2).mean()
    assert torch.allclose(w, torch.tensor([0.893571, 1.195136, 0.911293], dtype=torch.float64), atol=1e-6)
    l_t, _, l_weak = uskd_parts(s, u19(), y, mu=0.005)
    assert abs(l_t.item() - 1.061741) < TOL
    assert abs(l_weak.item() - 0.005574) < TOL


@pytest.mark.parametrize(
    "rank_score,order,l_non,total",
    [
        ("code", [[1, 0, 2, 3], [2, 3, 1, 0], [0, 3, 2, 1]], 1.010487, 1.168364),
        ("prob", [[1, 0, 2, 3], [2, 3, 1, 0], [0, 3, 1, 2]], 1.022768, 1.169592),
    ],
)
def test_uskd_code_exact_and_probability_variants(rank_score, order, l_non, total):
    s, u, y = s19(), u19(), y19()
    # the Zipf weight of class c is 1/(position of c + 1); recover the order from the soft labels
    z = zipf_non_target_labels(s, u, y, rank_score)
    for i in range(3):
        zipf = torch.zeros(4, dtype=torch.float64)
        for pos, cls in enumerate(order[i]):
            zipf[cls] = 1.0 / (pos + 1)
        keep = [c for c in range(4) if c != y[i].item()]
        expected = zipf[keep] / zipf[keep].sum()
        assert torch.allclose(z[i], expected, atol=1e-12)
    l_t, non, l_weak = uskd_parts(s, u, y, mu=0.005, rank_score=rank_score)
    assert abs(non.item() - l_non) < TOL
    assert abs((l_t + 0.1 * non + l_weak).item() - total) < TOL
    params = {"alpha": 1.0, "beta": 0.1, "mu": 0.005, "rank_score": rank_score}
    loss = build_loss("uskd", params)(LossInputs(s, y, None, extras={"aux_logits": u}))
    assert abs(loss.item() - (CE19 + total)) < TOL


def test_uskd_gradcheck_with_targets_held_fixed():
    # w and z are stop-gradient targets computed from the student itself: hold them at the base point
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 6, (5,), generator=gen)
    w, z = uskd_soft_targets(s, u, y)

    def fn(s_, u_):
        l_t, l_non, l_weak = uskd_terms(s_, u_, y, w, z, mu=0.3)
        return 0.7 * l_t + 0.2 * l_non + l_weak

    assert torch.autograd.gradcheck(fn, (s, u))
    # and the loss module's gradient equals the gradient of those terms
    s2, u2 = s.detach().clone().requires_grad_(True), u.detach().clone().requires_grad_(True)
    loss = build_loss("uskd", {"alpha": 0.7, "beta": 0.2, "mu": 0.3})
    (loss(LossInputs(s2, y, None, extras={"aux_logits": u2})) - F.cross_entropy(s2, y)).backward()
    s3, u3 = s.detach().clone().requires_grad_(True), u.detach().clone().requires_grad_(True)
    fn(s3, u3).backward()
    assert torch.allclose(s2.grad, s3.grad, atol=1e-12) and torch.allclose(u2.grad, u3.grad, atol=1e-12)


def test_uskd_ignores_unlabelled_samples():
    loss = build_loss("uskd", {"alpha": 1.0, "beta": 0.1, "mu": 0.005})
    s, u = s19(), u19()
    partial = loss(LossInputs(s, torch.tensor([0, -1, 3]), None, extras={"aux_logits": u}))
    keep = torch.tensor([0, 2])
    only = loss(LossInputs(s[keep], torch.tensor([0, 3]), None, extras={"aux_logits": u[keep]}))
    assert torch.allclose(partial, only, atol=1e-12)


def test_uskd_requires_aux_logits():
    with pytest.raises(ValueError, match="aux_logits"):
        build_loss("uskd")(LossInputs(s19(), y19(), None))
