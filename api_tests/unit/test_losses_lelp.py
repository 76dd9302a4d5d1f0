"""lelp (docs/methods.md#lelp): fitting, subclass targets, aggregation, lifecycle, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.lelp import class_logits, estimate_output_weight, random_rotation


def _data(n=300, d=12, c=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(c, d, generator=gen, dtype=torch.float64)
    t = e @ w.t() + 0.3
    y = torch.randint(0, c, (n,), generator=gen)
    return e, w, t, y


def test_directions_live_in_the_null_space_of_the_output_weights():
    e, w, t, y = _data()
    for weight in (w, None):  # given, or estimated by least squares from (embedding, logit) pairs
        loss = build_loss("lelp", {"num_subclasses": 3})
        loss.fit(e, t, y, output_weight=weight)
        dirs = loss.sub_directions.double()  # [C, d, S]
        assert (torch.einsum("cd,kds->kcs", w, dirs).abs().max() < 1e-4)
        # each class's directions are orthonormal (rotated principal directions)
        for k in range(3):
            assert torch.allclose(dirs[k].t() @ dirs[k], torch.eye(3, dtype=torch.float64), atol=1e-5)


def test_least_squares_recovers_a_linear_head():
    e, w, t, _ = _data()
    assert torch.allclose(estimate_output_weight(e, t), w, atol=1e-8)


def test_subclass_probabilities_split_the_class_probabilities():
    e, _, t, y = _data()
    loss = build_loss("lelp", {"num_subclasses": 4, "temperature": 2.0, "subclass_temperature": 0.5})
    loss.fit(e, t, y)
    log_p = loss.teacher_subclass_log_probs(t[:10], e[:10])
    assert log_p.shape == (10, 12)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(10, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(class_logits(log_p, 4), F.log_softmax(t[:10] / 2.0, 1), atol=1e-6)
    # the split carries information: it varies across samples
    split = log_p.view(10, 3, 4).softmax(2)
    assert split.std(0).max() > 0.05


def test_loss_formula():
    e, _, t, y = _data()
    loss = build_loss("lelp", {"num_subclasses": 2, "alpha": 0.7, "temperature": 3.0})
    loss.fit(e, t, y)
    z = torch.randn(5, 6, dtype=torch.float64)
    value = loss(LossInputs(z, y[:5], t[:5], extras={"teacher_features": e[:5]}))
    log_pt = loss.teacher_subclass_log_probs(t[:5], e[:5])
    log_ps = F.log_softmax(z / 3.0, 1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
    ce = F.cross_entropy(class_logits(z, 2), y[:5])
    assert abs(value.item() - (0.3 * ce + 0.7 * 9.0 * kl).item()) < 1e-10


def test_zero_at_a_perfect_student():
    e, _, t, y = _data()
    loss = build_loss("lelp", {"num_subclasses": 3})
    loss.fit(e, t, y)
    z = loss.teacher_subclass_log_probs(t[:8], e[:8])  # student logits = teacher subclass log-probs
    assert abs(loss(LossInputs(z, None, t[:8], extras={"teacher_features": e[:8]})).item()) < 1e-6


def test_seeded_and_deterministic():
    e, _, t, y = _data()
    a, b, c = (build_loss("lelp", {"seed": s}) for s in (0, 0, 1))
    for m in (a, b, c):
        m.fit(e, t, y)
    assert torch.equal(a.sub_directions, b.sub_directions)
    assert not torch.allclose(a.sub_directions, c.sub_directions)
    r = random_rotation(5, 3)
    assert torch.allclose(r @ r.t(), torch.eye(5, dtype=torch.float64), atol=1e-12)


def test_state_dict_round_trip():
    e, _, t, y = _data()
    loss = build_loss("lelp")
    loss.fit(e, t, y)
    fresh = build_loss("lelp")
    assert not fresh.fitted
    fresh.load_state_dict(loss.state_dict())
    assert fresh.fitted and torch.equal(fresh.sub_directions, loss.sub_directions)


def test_validation_errors():
    e, _, t, y = _data(d=5, c=3)
    with pytest.raises(ValueError, match="null space"):
        build_loss("lelp", {"num_subclasses": 4}).fit(e, t, y)  # d − C = 2 < S
    loss = build_loss("lelp", {"num_subclasses": 2})
    with pytest.raises(ValueError, match="fit"):
        loss(LossInputs(torch.randn(4, 6), None, t[:4], extras={"teacher_features": e[:4]}))
    loss.fit(e, t, y)
    with pytest.raises(ValueError, match=r"S·C"):
        loss(LossInputs(torch.randn(4, 3), None, t[:4], extras={"teacher_features": e[:4]}))
    with pytest.raises(ValueError, match="teacher_features"):
        loss(LossInputs(torch.randn(4, 6), None, t[:4]))


def test_unlabelled_fit_uses_teacher_argmax_and_sparse_classes_fall_back():
    e, _, t, _ = _data(n=40, c=4)
    labels = torch.full((40,), -1)
    labels[0] = 3  # class 3 gets one labelled sample plus the teacher's argmax ones
    loss = build_loss("lelp", {"num_subclasses": 2})
    loss.fit(e, t, labels)
    assert torch.isfinite(loss.sub_directions).all() and torch.isfinite(loss.sub_scales).all()
