"""dhkd (docs/methods.md#dhkd): worked-example BinaryKL values, head separation, parts for gradient alignment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, s19, t19, y19

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.dhkd import binary_kl, binary_kl_norm


def test_binary_kl_values():
    assert abs(binary_kl_norm(s19(), t19(), 2.0).item() - 0.365885) < TOL
    assert abs(binary_kl(s19(), t19(), 2.0).item() - 0.325341) < TOL


def test_matches_the_clipped_reference_formula():
    # ½ log(½/d) + ½ log(½/(1−d)), d = clip(σ((z − t)/T), 1e−8, 1 − 1e−8), in float64
    gen = torch.Generator().manual_seed(0)
    z = 30 * torch.randn(8, 6, generator=gen, dtype=torch.float64)  # some entries beyond the clip
    t = 30 * torch.randn(8, 6, generator=gen, dtype=torch.float64)
    d = torch.sigmoid((z - t) / 2.0).clamp(1e-8, 1 - 1e-8)
    ref = 4.0 * (0.5 * torch.log(0.5 / d) + 0.5 * torch.log(0.5 / (1 - d))).sum(1).mean()
    assert abs(binary_kl_norm(z, t, 2.0).item() - ref.item()) < 1e-7  # 1 − 1e−8 rounds in float64 too
    # the naive plain BinaryKL overflows at these logits (σ → 1 exactly); compare at moderate ones
    z, t = z / 10, t / 10
    p_t, p_s = torch.sigmoid(t / 2.0), torch.sigmoid(z / 2.0)
    plain = 4.0 * (p_t * (p_t / p_s).log() + (1 - p_t) * ((1 - p_t) / (1 - p_s)).log()).sum(1).mean()
    assert abs(binary_kl(z, t, 2.0).item() - plain.item()) < 1e-6


def test_zero_iff_aux_equals_teacher_and_shift_sensitive():
    t = t19()
    assert abs(binary_kl_norm(t, t, 2.0).item()) < 1e-12
    assert binary_kl_norm(t + 1.0, t, 2.0).item() > 0.1  # not translation invariant


def test_heads_are_trained_separately():
    z1 = s19().requires_grad_(True)
    z2 = (s19() * 0.5).requires_grad_(True)
    loss = build_loss("dhkd", {"alpha": 1.0, "gamma": 1.0, "temperature": 2.0})
    value = loss(LossInputs(z1, y19(), t19(), extras={"aux_logits": z2}))
    value.backward()
    # main head: CE only; aux head: BinaryKL-Norm only
    assert torch.allclose(z1.grad, (F.softmax(s19(), 1) - F.one_hot(y19(), 4)) / 3, atol=1e-12)
    x = (z2.detach() - t19()) / 2.0
    assert torch.allclose(z2.grad, 2.0 * (torch.sigmoid(x) - 0.5) / 3, atol=1e-12)


def test_total_and_parts():
    loss = build_loss("dhkd", {"alpha": 0.5, "gamma": 2.0, "temperature": 2.0})
    inp = LossInputs(s19(), y19(), t19(), extras={"aux_logits": s19()})
    ce, kd = loss.parts(inp)
    assert abs(ce.item() - 2.0 * CE19) < TOL and abs(kd.item() - 0.5 * 0.365885) < TOL
    assert torch.allclose(loss(inp), ce + kd)
    plain = build_loss("dhkd", {"alpha": 1.0, "gamma": 0.0, "binary_kl": "plain"})(inp)
    assert abs(plain.item() - 0.325341) < TOL


def test_kd_stop_epoch():
    loss = build_loss("dhkd", {"kd_stop_epoch": 50})
    before = loss(LossInputs(s19(), y19(), t19(), epoch=49, epochs=100, extras={"aux_logits": s19()}))
    after = loss(LossInputs(s19(), y19(), t19(), epoch=50, epochs=100, extras={"aux_logits": s19()}))
    assert abs(before.item() - (CE19 + 0.365885)) < TOL
    assert abs(after.item() - CE19) < TOL


def test_extreme_difference_is_clipped_not_infinite():
    z = torch.tensor([[1e4, -1e4]], dtype=torch.float32, requires_grad=True)
    t = torch.tensor([[-1e4, 1e4]], dtype=torch.float32)
    value = binary_kl_norm(z, t, 2.0)
    value.backward()
    clip = math.log((1 - 1e-8) / 1e-8)
    per_class = -math.log(2) + 0.5 * (clip + 2 * math.log1p(math.exp(-clip)))
    assert abs(value.item() - 4.0 * 2 * per_class) < 1e-3
    assert torch.all(z.grad == 0)  # outside the clip, as in the reference


def test_requires_aux_logits():
    with pytest.raises(ValueError, match="aux_logits"):
        build_loss("dhkd")(LossInputs(s19(), y19(), t19()))
