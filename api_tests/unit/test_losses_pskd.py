"""pskd (docs/methods.md#pskd): the worked example's α_t and loss, epoch-0 one-hot targets, unlabelled samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, s19, t19, y19

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.pskd import alpha_at


def test_alpha_schedule():
    assert abs(alpha_at(0.8, 149, 300) - 0.4) < 1e-12
    assert abs(alpha_at(0.8, 299, 300) - 0.8) < 1e-12  # α_T only at the last epoch
    assert abs(alpha_at(0.8, 0, 300) - 0.8 / 300) < 1e-12


def test_loss_value_with_previous_predictions():
    loss = build_loss("pskd", {"alpha_T": 0.8})
    inp = LossInputs(s19(), y19(), None, epoch=149, epochs=300, extras={"prev_probs": F.softmax(t19(), 1)})
    assert abs(loss(inp).item() - 1.070472) < TOL


def test_epoch_zero_with_one_hot_table_is_plain_ce():
    loss = build_loss("pskd")
    onehot = F.one_hot(y19(), 4).double()
    inp = LossInputs(s19(), y19(), None, epoch=0, epochs=300, extras={"prev_probs": onehot})
    assert abs(loss(inp).item() - CE19) < TOL


def test_soft_target_ce_formula_and_gradient():
    s = s19().requires_grad_(True)
    prev = F.softmax(t19(), 1)
    loss = build_loss("pskd", {"alpha_T": 0.5})
    value = loss(LossInputs(s, y19(), None, epoch=4, epochs=10, extras={"prev_probs": prev}))
    value.backward()
    a = 0.5 * 5 / 10
    target = (1 - a) * F.one_hot(y19(), 4) + a * prev
    assert torch.allclose(value, -(target * F.log_softmax(s.detach(), 1)).sum(1).mean())
    assert torch.allclose(s.grad, (F.softmax(s.detach(), 1) - target) / 3, atol=1e-12)


def test_unlabelled_samples_contribute_nothing():
    loss = build_loss("pskd")
    prev = F.softmax(t19(), 1)
    partial = loss(LossInputs(s19(), torch.tensor([0, -1, 3]), None, epoch=2, epochs=5, extras={"prev_probs": prev}))
    keep = torch.tensor([0, 2])
    kept = LossInputs(s19()[keep], torch.tensor([0, 3]), None, epoch=2, epochs=5, extras={"prev_probs": prev[keep]})
    only = loss(kept)
    assert torch.allclose(partial, only)


def test_requires_prev_probs():
    with pytest.raises(ValueError, match="prev_probs"):
        build_loss("pskd")(LossInputs(s19(), y19(), None))
