"""fitnet (docs/methods.md#fitnet): regressor choice, hint loss, combination with CE and KD, lifecycle."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, inputs19, s19, t19, y19
from torch import nn

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.fitnet import make_regressor


@pytest.mark.parametrize(
    "s_shape,t_shape,kind",
    [
        ((2, 6), (2, 8), nn.Linear),
        ((2, 5, 6), (2, 5, 8), nn.Linear),
        ((2, 4, 8, 8), (2, 6, 8, 8), nn.Conv2d),  # same size: 1×1 conv
        ((2, 4, 16, 16), (2, 6, 8, 8), nn.Conv2d),  # 3×3 stride 2
        ((2, 4, 4, 4), (2, 6, 8, 8), nn.ConvTranspose2d),  # 4×4 transposed, stride 2
        ((2, 4, 10, 10), (2, 6, 8, 8), nn.Conv2d),  # kernel 3×3, no padding
    ],
)
def test_regressor_maps_to_the_teacher_shape(s_shape, t_shape, kind):
    reg = make_regressor(s_shape, t_shape)
    first = reg if isinstance(reg, nn.Linear) else reg[0]
    assert isinstance(first, kind)
    if s_shape[2:] == t_shape[2:] and len(s_shape) == 4:
        assert first.kernel_size == (1, 1)
    assert reg(torch.randn(*s_shape)).shape == torch.Size(t_shape)


def test_unsupported_shapes_raise():
    with pytest.raises(ValueError):
        make_regressor((2, 4, 3, 3), (2, 6, 8, 8))
    with pytest.raises(ValueError):
        make_regressor((2, 4), (2, 4, 4, 4))


def test_loss_is_ce_plus_weighted_mean_squared_error():
    loss = build_loss("fitnet", {"hint_weight": 100.0})
    fs, ft = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    loss.setup(fs.shape, ft.shape)
    loss.double()
    value = loss(LossInputs(s19(), y19(), t19(), extras={"student_features": fs, "teacher_features": ft}))
    mse = ((loss.regressor(fs) - ft) ** 2).mean()  # mean over all N·D elements
    assert abs(value.item() - (F.cross_entropy(s19(), y19()).item() + 100.0 * mse.item())) < 1e-9


def test_optional_kd_term():
    loss = build_loss("fitnet", {"hint_weight": 0.0, "kd_weight": 0.5, "temperature": 4.0})
    fs, ft = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    loss.setup(fs.shape, ft.shape)
    loss.double()
    inp = inputs19(extras={"student_features": fs, "teacher_features": ft})
    assert abs(loss(inp).item() - (CE19 + 0.5 * 0.353222)) < TOL


def test_regressor_is_trained_and_teacher_is_not():
    loss = build_loss("fitnet")
    fs = torch.randn(4, 3, 8, 8, requires_grad=True)
    ft = torch.randn(4, 5, 4, 4, requires_grad=True)
    loss.setup(fs.shape, ft.shape)
    params_before = {n for n, _ in loss.named_parameters()}
    assert params_before  # the optimizer can see them once setup() ran
    s = torch.randn(4, 3, requires_grad=True)
    extras = {"student_features": fs, "teacher_features": ft}
    loss(LossInputs(s, torch.tensor([0, 1, 2, 0]), None, extras=extras)).backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert fs.grad is not None and ft.grad is None


def test_lazy_creation_warns():
    loss = build_loss("fitnet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extras = {"student_features": torch.randn(2, 4), "teacher_features": torch.randn(2, 5)}
        loss(LossInputs(torch.randn(2, 3), None, None, extras=extras))
    assert any("setup" in str(w.message) for w in caught)
    assert isinstance(loss.regressor, nn.Linear)


def test_gradcheck_conv_regressor_float64():
    loss = build_loss("fitnet", {"hint_weight": 3.0, "kd_weight": 0.2})
    gen = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64)
    loss.setup(fs.shape, ft.shape)
    loss.double()
    s = torch.randn(2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, -1])

    def fn(s_, fs_):
        return loss(LossInputs(s_, y, t, extras={"student_features": fs_, "teacher_features": ft}))

    assert torch.autograd.gradcheck(fn, (s, fs))


def test_requires_features():
    with pytest.raises(ValueError, match="student_features"):
        build_loss("fitnet")(LossInputs(s19(), y19(), t19()))
