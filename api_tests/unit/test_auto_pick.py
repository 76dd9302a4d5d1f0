"""The student and method a job leaves out (service/auto.py): the largest student of the input's
family within the budget, counted as the real module counts it; the method for the teacher."""

from __future__ import annotations

import pytest

from kdserve.models.zoo import count_parameters, create_student
from kdserve.service import auto
from kdserve.service.spec.architectures import TextTeacher


def test_the_budget_is_max_params_or_a_share_of_the_teacher():
    assert auto.budget_of(5000, 3.0, 100_000) == (5000, "student.auto.max_params 5,000")
    assert auto.budget_of(None, None, 100_000)[0] == 10_000
    assert auto.budget_of(None, 4.0, 100_000)[0] == 25_000
    assert auto.budget_of(None, None, None)[0] == auto.NO_TEACHER_MAX_PARAMS


@pytest.mark.parametrize("shape, classes, budget, arch", [
    ([64], 10, 8_500, "mlp"), ([64], 10, 18_310, "mlp"), ([13], 3, 7_014, "mlp"), ([30], 2, 500_000, "mlp"),
    ([1, 28, 28], 10, 50_000, "cnn"), ([3, 16, 16], 5, 8_000, "cnn"),
])
def test_the_picked_student_is_the_largest_that_fits_counted_by_torch(shape, classes, budget, arch):
    picked = auto.pick_student(shape, classes, budget, "test", None)
    assert picked.architecture == arch and picked.max_params == budget
    real = count_parameters(create_student(arch, picked.params, shape, classes))
    assert real == picked.parameters <= budget
    # every student of the family with more parameters is over the budget
    for a, params in auto.tensor_family(shape)[1]:
        n = count_parameters(create_student(a, params, shape, classes))
        assert n <= picked.parameters or n > budget, (params, n)
    assert f"{real:,} parameters" in picked.reason and "test" in picked.reason


def test_a_budget_nothing_fits_names_student_auto():
    with pytest.raises(auto.AutoError) as e:
        auto.pick_student([64], 10, 100, "tiny", None)
    assert e.value.param == "student.auto" and "610 parameters" in e.value.message


def test_text_students_follow_the_teacher():
    bert = TextTeacher(model_type="bert", num_layers=6, hidden_size=384, vocab_size=30522, model_vocab_size=30522,
                       max_positions=512, task="embedding")
    picked = auto.pick_student([], 384, 1_000_000, "test", bert)
    assert picked.architecture == "layer_dropped" and picked.params["every"] == 2
    other = TextTeacher(model_type="gpt2", num_layers=6, hidden_size=384, vocab_size=1000, model_vocab_size=1000,
                        max_positions=512, task="classification")
    picked = auto.pick_student([], 4, 500_000, "test", other)
    assert picked.architecture == "transformer" and picked.parameters <= 500_000
    with pytest.raises(auto.AutoError):
        auto.pick_student([], 4, 10_000, "test", other)


def test_the_method_follows_the_teacher():
    name, reason, candidates = auto.pick_method(True, False)
    assert (name, candidates) == ("kd", ["kd", "dist"]) and reason.startswith("kd or dist, whichever a short trial")
    assert auto.pick_method(True, False, text_teacher=True)[::2] == ("kd", None)
    assert auto.pick_method(True, True)[::2] == ("embedding_cosine", None)
    assert auto.pick_method(False, False)[::2] == ("ce", None)


def test_an_mlp_scales_its_inputs_inside_and_old_weights_still_load():
    """InputScaling: identity until set (no ops), then (x − mean) / std per feature; weights kept
    before the layer existed (a plain Flatten) load into the new student as identity."""
    import torch
    from torch import nn

    from kdserve.models.student import input_scaling
    from kdserve.models.zoo import create_student

    torch.manual_seed(0)
    new = create_student("mlp", {"hidden_sizes": [8]}, [3], 2)
    old_state = {k: v for k, v in new.state_dict().items() if not k.startswith("body.0.")}  # as saved before
    fresh = create_student("mlp", {"hidden_sizes": [8]}, [3], 2)
    fresh.load_state_dict(old_state)
    x = torch.tensor([[1000.0, 1.0, 0.1], [1200.0, 3.0, 0.3]])
    assert torch.equal(fresh(x), new(x))  # identity: the same function
    layer = input_scaling(fresh)
    layer.set(torch.tensor([1100.0, 2.0, 0.2]), torch.tensor([0.01, 1.0, 10.0]))
    body = nn.Sequential(*list(fresh.body)[1:])
    expected = fresh.head(body(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])))
    assert torch.allclose(fresh(x), expected, atol=1e-5)


def test_a_tiny_teacher_with_the_default_budget_gets_the_smallest_student():
    """Nobody asked for teacher/10 when a job sets nothing: a 1 k-parameter teacher's job gets the
    family's smallest student (and says why), not a 422."""
    picked = auto.pick_student([13], 3, 111, "the teacher's 1,117 parameters / 10", None, soft_budget=True)
    assert picked.architecture == "mlp" and picked.parameters > 111
    assert "smallest" in picked.reason and "111" in picked.reason
