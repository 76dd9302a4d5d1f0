"""The method catalog: flags, defaults from docs/methods.md, parameter constraints."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kdserve.worker.losses import METHODS, build_loss

FLAGS = {  # name: (needs_teacher, needs_labels)
    "rkl": (True, False),
    "jsd": (True, False),
    "sinkd": (True, False),
    "nkd": (True, False),
    "uskd": (False, True),
    "dkd": (True, False),
    "dist": (True, False),
    "pld": (True, False),
    "dhkd": (True, True),
    "pskd": (False, True),
    "fitnet": (True, False),
    "lelp": (True, False),
}

DEFAULTS = {
    "sinkd": {"alpha": 0.8, "temperature": 2.0, "beta": 1.0, "sinkhorn_weight": 0.001, "sinkhorn_temperature": 2.0,
              "epsilon": 0.1, "n_iter": 20},
    "nkd": {"temperature": 3.0, "gamma": 3.5},
    "uskd": {"alpha": 0.1, "beta": 0.1, "mu": 0.1, "rank_score": "code"},
    "dkd": {"alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup": 20, "ce_weight": 1.0},
    "dist": {"temperature": 4.0, "beta": 2.0, "gamma": 2.0, "ce_weight": 1.0, "eps": 1e-8},
    "pld": {"temperature": 4.0},
    "dhkd": {"temperature": 2.0, "alpha": 1.0, "gamma": 1.0, "binary_kl": "norm", "kd_stop_epoch": None},
    "pskd": {"alpha_T": 0.8},
    "fitnet": {"hint_weight": 100.0, "ce_weight": 1.0, "kd_weight": 0.0, "temperature": 4.0, "student_layer": -1},
}


def test_mcmi_and_common_register_nothing():
    assert "mcmi" not in METHODS and "common" not in METHODS


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_method_says_whether_it_needs_a_teacher_and_labels(name):
    info = METHODS[name]
    assert (info.needs_teacher, info.needs_labels) == FLAGS[name]


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_build_loss_without_params_uses_the_documented_defaults(name):
    assert build_loss(name).params.model_dump() == DEFAULTS[name]


@pytest.mark.parametrize(
    "name,bad",
    [
        ("rkl", {"temperature": 0.0}),
        ("jsd", {"alpha": 1.5}),
        ("sinkd", {"epsilon": -0.1}),
        ("sinkd", {"n_iter": 0}),
        ("dkd", {"warmup": -1}),
        ("dist", {"temperature": 0}),
        ("pld", {"temperature": -1}),
        ("dhkd", {"binary_kl": "other"}),
        ("pskd", {"alpha_T": 2.0}),
        ("uskd", {"rank_score": "x"}),
        ("lelp", {"num_subclasses": 1}),
        ("fitnet", {"hint_weight": -1}),
    ],
)
def test_out_of_range_params_are_refused(name, bad):
    with pytest.raises(ValidationError):
        build_loss(name, bad)
