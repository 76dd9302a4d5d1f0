"""dist (docs/methods.md#dist): worked-example values, torchdistill DISTLoss cross-check, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_fixtures import CE19, TOL, inputs19, s19, t19
from torchdistill.losses.mid_level import DISTLoss as TorchdistillDISTLoss

from kdserve.worker.losses import LossInputs, build_loss
from kdserve.worker.losses.dist import dist_parts


@pytest.mark.parametrize(
    "tau,inter,intra,total",
    [(1.0, 0.271122, 0.106589, 0.377711), (4.0, 2.826382, 1.105241, 3.931623)],
)
def test_dist_values(tau, inter, intra, total):
    l_inter, l_intra = dist_parts(s19(), t19(), tau)
    assert abs(tau * tau * l_inter.item() - inter) < TOL
    assert abs(tau * tau * l_intra.item() - intra) < TOL
    loss = build_loss("dist", {"temperature": tau, "beta": 1.0, "gamma": 1.0})
    assert abs(loss(inputs19()).item() - (CE19 + total)) < TOL


def test_defaults_are_the_effective_paper_weights():
    # CE weight 1, β = γ = 2 (module β = γ = 1 added with weight 2)
    loss = build_loss("dist", {"temperature": 1.0})
    assert abs(loss(inputs19()).item() - (CE19 + 2 * 0.377711)) < TOL


def test_pearson_agrees_with_numpy_corrcoef():
    ys, yt = F.softmax(s19(), 1).numpy(), F.softmax(t19(), 1).numpy()
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(3)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(4)])
    # ε = 1e−8 on the product of norms moves ρ by ~1e−6 here; without it the match is exact
    l_inter, l_intra = dist_parts(s19(), t19(), 1.0, eps=1e-300)
    assert abs(l_inter.item() - inter) < 1e-12 and abs(l_intra.item() - intra) < 1e-12
    l_inter, l_intra = dist_parts(s19(), t19(), 1.0)
    assert abs(l_inter.item() - inter) < 1e-5 and abs(l_intra.item() - intra) < 1e-5


def test_matches_torchdistill_distloss_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        s = 3 * torch.randn(32, 10, generator=gen)
        t = 3 * torch.randn(32, 10, generator=gen)
        tau = float(torch.empty(1).uniform_(0.5, 5.0, generator=gen))
        beta, gamma = (float(v) for v in torch.rand(2, generator=gen) * 3)
        ours = build_loss("dist", {"temperature": tau, "beta": beta, "gamma": gamma, "ce_weight": 0.0})(
            LossInputs(s, torch.randint(0, 10, (32,), generator=gen), t)
        )
        theirs = TorchdistillDISTLoss(".", "output", ".", "output", beta=beta, gamma=gamma, tau=tau)(
            {".": {"output": s}}, {".": {"output": t}}
        )
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_zero_for_a_perfect_match_and_invariant_to_teacher_shift():
    s = torch.randn(8, 6, dtype=torch.float64)
    inter, intra = dist_parts(s, s + 5.0, 2.0, eps=1e-300)
    assert abs(inter.item()) < 1e-8 and abs(intra.item()) < 1e-8
