"""pld (docs/methods.md#pld): worked-example values, a naive second computation, special cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import TOL, inputs19, s19, t19, y19

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.pld import pld_loss, teacher_optimal_permutation


def naive_pld(s, t, y, tau):
    """Direct sum over positions with explicit tails, one sample at a time."""
    total = 0.0
    q = F.softmax(t / tau, 1)
    for i in range(s.shape[0]):
        rest = sorted((c for c in range(s.shape[1]) if c != y[i]), key=lambda c: (-t[i, c].item(), c))
        perm = [int(y[i])] + rest
        for k, cls in enumerate(perm):
            tail = math.log(sum(math.exp(s[i, c].item()) for c in perm[k:]))
            total += q[i, cls].item() * (tail - s[i, cls].item())
    return total / s.shape[0]


@pytest.mark.parametrize("tau,expected", [(1.0, 0.729627), (4.0, 0.670444)])
def test_pld_values(tau, expected):
    assert abs(build_loss("pld", {"temperature": tau})(inputs19()).item() - expected) < TOL
    assert abs(naive_pld(s19(), t19(), y19(), tau) - expected) < TOL


def test_matches_naive_computation_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    s = 2 * torch.randn(6, 9, generator=gen, dtype=torch.float64)
    t = 2 * torch.randn(6, 9, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 9, (6,), generator=gen)
    assert abs(pld_loss(s, t, y, 1.7).item() - naive_pld(s, t, y, 1.7)) < 1e-10


def test_permutation_puts_label_first_and_breaks_ties_by_index():
    t = torch.tensor([[1.0, 3.0, 1.0, 3.0, 0.0]])
    perm = teacher_optimal_permutation(t, torch.tensor([4]))
    assert perm.tolist() == [[4, 1, 3, 0, 2]]


def test_is_ce_when_the_teacher_is_certain_of_the_label():
    # weights (1, 0, …, 0) reduce PLD to CE
    s = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 4])
    t = F.one_hot(y, 5).double() * 1e4
    assert abs(pld_loss(s, t, y, 1.0).item() - F.cross_entropy(s, y).item()) < 1e-12


def test_translation_invariant_in_the_student_logits():
    s, t, y = s19(), t19(), y19()
    assert abs(pld_loss(s + 7.0, t, y, 2.0).item() - pld_loss(s, t, y, 2.0).item()) < 1e-12


def test_no_separate_ce_term_and_argmax_fallback():
    # unlabelled samples: π* is the teacher's own ranking
    argmax = t19().argmax(1)
    loss = build_loss("pld", {"temperature": 1.0})
    assert torch.allclose(loss(LossInputs(s19(), None, t19())), pld_loss(s19(), t19(), argmax, 1.0))
