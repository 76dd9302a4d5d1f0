"""service/budgets.py: the API's torch-free parameter counts against the real students built by
models/zoo.py (exact for the tensor students; the text encoder within its pooler's width), and the
memory estimate's parts."""

from __future__ import annotations

import pytest

from kdserve.models.text import TextSource
from kdserve.models.zoo import ARCHITECTURES, count_parameters, create_student
from kdserve.service import budgets


def defaults(arch: str, params: dict) -> dict:
    """What the API's pre-flight hands the estimate: the params completed with the schema's defaults."""
    schema = ARCHITECTURES[arch].params.model_json_schema()["properties"]
    return {**{k: v["default"] for k, v in schema.items() if "default" in v}, **params}


@pytest.mark.parametrize("arch, params, shape", [
    ("mlp", {"hidden_sizes": [32]}, [64]),
    ("mlp", {"hidden_sizes": [100, 50, 7], "batch_norm": True, "dropout": 0.1}, [3, 8, 8]),
    ("cnn", {}, [64]),
    ("cnn", {"channels": [8, 16, 32], "kernel_size": 5}, [3, 16, 16]),
    ("cnn", {"channels": [4], "image_shape": [4, 16]}, [64]),
    ("patch_transformer", {}, [64]),
    ("patch_transformer", {"patch_size": 7, "dim": 48, "depth": 3, "heads": 6, "mlp_ratio": 1.5}, [100]),
    ("patch_transformer", {"patch_size": 4, "image_shape": [8, 8]}, [64]),
])
def test_tensor_students_are_counted_exactly(arch, params, shape):
    student = create_student(arch, params, shape, 10)
    x = budgets.Shapes(input_shape=shape, width=10, rows=100, batch_size=32)
    assert budgets.estimate(arch, defaults(arch, params), x).parameters == count_parameters(student)


@pytest.mark.parametrize("task, pooling", [("classification", "cls"), ("embedding", "mean")])
def test_text_transformer_is_counted_within_its_pooler(task, pooling):
    source = TextSource(vocab_size=1000, pad_token_id=0, sep_token_id=3, max_positions=128, task=task, output_dim=16)
    params = {"layers": 2, "hidden": 64, "heads": 4, "pooling": pooling}
    real = count_parameters(create_student("transformer", params, [], 16, source=source))
    x = budgets.Shapes(input_shape=[], width=16, rows=10, batch_size=8, max_length=32,
                       teacher_details={"vocab_size": 1000, "max_positions": 128})
    estimated = budgets.estimate("transformer", defaults("transformer", params), x).parameters
    assert real <= estimated <= real + 64 * 64 + 64  # the estimate always counts a pooler


def test_builders_refusals_are_not_estimated():
    x = budgets.Shapes(input_shape=[63], width=10, rows=10, batch_size=8)
    assert budgets.estimate("cnn", defaults("cnn", {}), x) is None  # 63 features are no square image
    assert budgets.estimate("no_such_architecture", {}, x) is None


def test_memory_parts():
    x = budgets.Shapes(input_shape=[64], width=10, rows=1000, batch_size=50, teacher_parameters=1000)
    est = budgets.estimate("mlp", defaults("mlp", {"hidden_sizes": [32]}), x)
    assert est.memory["training_state"] == est.parameters * 4 * 4
    assert est.memory["activations"] == 50 * (64 + 4 * 32 + 10) * 4
    assert est.memory["data"] == 1000 * (64 + 10) * 4
    assert est.memory["teacher"] == 4000
    text = budgets.Shapes(input_shape=[], width=2, rows=1000, batch_size=8, max_length=128,
                          teacher_details={"vocab_size": 100, "max_positions": 512})
    assert budgets.estimate("transformer", defaults("transformer", {}), text).memory["tokens"] == 1000 * 128 * 8 * 3


def test_worker_memory_limit():
    assert budgets.worker_memory_limit(123) == 123 and budgets.worker_memory_limit(0) == 0  # 0: no limit
    share = budgets.worker_memory_limit(None)
    assert 0 < share and budgets.worker_memory_limit(None, workers=4) == share // 4
