"""Every registered method: finite loss and gradients on awkward inputs, and float64 gradcheck."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from loss_fixtures import (
    FLOAT32_ONLY,
    REQUIRES,
    SELF_DETACHED_TARGETS,
    UNDEFINED_FOR_ONE_CLASS,
    assert_finite,
    build_case,
)

from kdserve.worker.losses import METHODS

ALL = sorted(METHODS)


def test_fixture_table_covers_every_method():
    assert set(REQUIRES) == set(METHODS)
    for name, info in METHODS.items():
        assert set(info.loss_cls.requires) == REQUIRES[name], name


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("extreme", [False, True], ids=["normal", "extreme"])
def test_finite_in_every_precision(name, dtype, extreme):
    value, grads = build_case(name, extreme=extreme).run(dtype)
    assert_finite(value, grads)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("labels", ["all", "partial", "unlabelled", "none"])
def test_label_modes(name, labels):
    case = build_case(name, labels=labels, extreme=True)
    value, grads = case.run(torch.float32)
    assert_finite(value, grads)


@pytest.mark.parametrize("name", ALL)
def test_batch_of_one(name):
    for extreme in (False, True):
        value, grads = build_case(name, b=1, extreme=extreme).run(torch.float32)
        assert_finite(value, grads)


@pytest.mark.parametrize("name", ALL)
def test_single_class(name):
    if name in UNDEFINED_FOR_ONE_CLASS:
        case = build_case(name, c=1)
        with pytest.raises(ValueError, match="at least 2 classes"):
            case.run(torch.float32)
        return
    for extreme in (False, True):
        value, grads = build_case(name, c=1, extreme=extreme).run(torch.float32)
        assert_finite(value, grads)


@pytest.mark.parametrize("name", sorted(set(ALL) - FLOAT32_ONLY - SELF_DETACHED_TARGETS))
def test_gradcheck_float64(name):
    case = build_case(name, b=4, c=5, labels="partial", seed=1)
    keys = sorted(case.leaves)
    masters = tuple(case.leaves[k].detach().clone().requires_grad_(True) for k in keys)

    def fn(*tensors):
        return case.loss(case.inputs(dict(zip(keys, tensors))))

    assert torch.autograd.gradcheck(fn, masters, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_params_schema_is_documented(name):
    info = METHODS[name]
    schema = info.params.model_json_schema()
    for field, spec in schema.get("properties", {}).items():
        assert spec.get("description"), f"{name}.{field} has no description"
    assert info.description and info.reference
    # unknown params are refused
    with pytest.raises(ValidationError, match="no_such_param"):
        info.params.model_validate({"no_such_param": 1})
