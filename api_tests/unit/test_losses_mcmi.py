"""MCMI teacher refinement (docs/methods.md#mcmi): worked-example values, centroids, sign, gradients, robustness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, q19, s19, y19

from kdserve.worker.losses.mcmi import CentroidAccumulator, MCMIParams, class_centroids, cmi_estimate, teacher_loss


def test_mcmi_values():
    assert abs(cmi_estimate(s19(), y19(), q19()).item() - 0.518431) < TOL
    assert abs(teacher_loss(s19(), y19(), q19(), lam=0.15).item() - 1.042794) < TOL
    assert abs(teacher_loss(s19(), y19(), q19(), lam=0.0).item() - CE19) < TOL


def test_centroids_are_class_means_and_stream():
    gen = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(50, 4, generator=gen, dtype=torch.float64), 1)
    labels = torch.randint(0, 3, (50,), generator=gen)  # class 3 never appears
    labels[:5] = -1
    q = class_centroids(probs, labels, 4)
    for c in range(3):
        assert torch.allclose(q[c], probs[labels == c].mean(0))
    assert torch.allclose(q[3], torch.full((4,), 0.25, dtype=torch.float64))
    acc = CentroidAccumulator(4)
    for chunk in range(0, 50, 7):
        acc.update(probs[chunk : chunk + 7], labels[chunk : chunk + 7])
    assert torch.allclose(acc.compute(), q)


def test_sign_maximises_cmi():
    # a gradient step on the teacher loss (λ > 0) increases the CMI estimate
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(16, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (16,), generator=gen)
    q = class_centroids(F.softmax(z.detach(), 1), y, 5)
    cmi_before = cmi_estimate(z, y, q).item()
    (-cmi_estimate(z, y, q)).backward()  # the −λ·Î part alone, λ = 1
    with torch.no_grad():
        z2 = z - 0.1 * z.grad
    assert cmi_estimate(z2, y, q).item() > cmi_before


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, -1, 3, 2, 0])
    probs = F.softmax(torch.randn(30, 4, generator=gen, dtype=torch.float64), 1)
    q = class_centroids(probs, torch.randint(0, 4, (30,), generator=gen), 4)
    assert torch.autograd.gradcheck(lambda x: teacher_loss(x, y, q, 0.2), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_with_extreme_logits_and_low_precision(dtype):
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype, requires_grad=True)
    y = torch.tensor([1, 0])
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # zeros in the centroids
    value = teacher_loss(z, y, q, 0.15)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad.float()).all()


def test_single_class_and_unlabelled_batch():
    z = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    assert teacher_loss(z, torch.zeros(3, dtype=torch.long), torch.ones(1, 1, dtype=torch.float64)).item() == 0.0
    value = teacher_loss(z, torch.full((3,), -1), torch.ones(1, 1, dtype=torch.float64))
    value.backward()
    assert value.item() == 0.0 and z.grad is not None


def test_recipe_defaults():
    p = MCMIParams()
    assert (p.lam, p.epochs, p.lr, p.momentum, p.weight_decay, p.batch_size) == (0.15, 20, 0.05, 0.9, 5e-4, 64)
