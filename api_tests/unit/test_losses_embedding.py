"""embedding_mse, embedding_cosine and embedding_relational against hand-computed values.

Fixture (B = 2, D = 2): s = [[3, 4], [1, 0]], t = [[4, 3], [2, 2]].
- MSE: differences [−1, 1], [−1, −2] → (1 + 1 + 1 + 4) / 4 = 1.75.
- cos(s0, t0) = (12 + 12)/(5·5) = 0.96; cos(s1, t1) = 2/(1·√8) = 1/√2 = 0.70710678.
  Cosine loss = ((1 − 0.96) + (1 − 0.70710678)) / 2 = 0.16644661.
- Similarity matrices: ŝ0 = [0.6, 0.8], ŝ1 = [1, 0] → S_s01 = 0.6; t̂0 = [0.8, 0.6], t̂1 = [1, 1]/√2 →
  S_t01 = 1.4/√2 = 0.98994949. Diagonals are 1 on both sides, so the relational term is
  2·(0.6 − 0.98994949)² / 4 = 0.07603030.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdserve.worker.losses import METHODS, LossInputs, build_loss

S = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
T = torch.tensor([[4.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
COS = ((1 - 0.96) + (1 - 1 / math.sqrt(2))) / 2
REL = 2 * (0.6 - 1.4 / math.sqrt(2)) ** 2 / 4


def loss(name, params=None, s=S, t=T):
    return float(build_loss(name, params)(LossInputs(student_logits=s, teacher_logits=t)))


def test_mse_by_hand():
    assert loss("embedding_mse") == pytest.approx(1.75, abs=1e-12)


def test_cosine_by_hand():
    assert loss("embedding_cosine") == pytest.approx(COS, abs=1e-12)
    assert COS == pytest.approx(0.16644661, abs=1e-8)


def test_relational_by_hand():
    assert REL == pytest.approx(0.07603030, abs=1e-8)
    assert loss("embedding_relational", {"cosine_weight": 0.0}) == pytest.approx(REL, abs=1e-12)
    assert loss("embedding_relational") == pytest.approx(REL + COS, abs=1e-12)
    assert loss("embedding_relational", {"relational_weight": 2.0, "cosine_weight": 0.5}) == \
        pytest.approx(2 * REL + 0.5 * COS, abs=1e-12)


def test_relational_term_ignores_rotations_the_cosine_term_does_not():
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # 90°
    assert loss("embedding_relational", {"cosine_weight": 0.0}, s=T @ rot, t=T) == pytest.approx(0.0, abs=1e-12)
    assert loss("embedding_cosine", s=T @ rot, t=T) == pytest.approx(1.0, abs=1e-12)  # orthogonal rows


def test_perfect_student_scores_zero_and_gradients_match_autograd_numerics():
    for name in ("embedding_mse", "embedding_cosine", "embedding_relational"):
        assert loss(name, s=T.clone(), t=T) == pytest.approx(0.0, abs=1e-12)
        fn = build_loss(name)
        s = S.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: fn(LossInputs(student_logits=x, teacher_logits=T)), (s,))


def test_shape_mismatch_and_missing_teacher_are_errors():
    with pytest.raises(ValueError, match="same D"):
        loss("embedding_cosine", t=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="teacher"):
        build_loss("embedding_mse")(LossInputs(student_logits=S))


def test_registered_as_vector_methods():
    for name in ("embedding_mse", "embedding_cosine", "embedding_relational"):
        assert METHODS[name].compares == "vectors" and METHODS[name].needs_teacher
    assert METHODS["kd"].compares == "logits"
