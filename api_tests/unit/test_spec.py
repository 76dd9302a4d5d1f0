"""A job spec is validated in one place (kdserve.service.spec): the API checks it without torch, and
the worker's builders refuse what the API refuses, with the same rule and the same `param`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from api_tests.harness import REPO
from kdserve.service import vocab
from kdserve.service.spec.architectures import ARCHITECTURES, ArchitectureError, StudentInput, TextTeacher
from kdserve.service.spec.errors import SpecError
from kdserve.service.spec.jobs import DataFacts, TeacherFacts, check_pairing, check_student, validate_params
from kdserve.service.spec.methods import METHODS

# The script runs in an interpreter where torch and the rest of the worker extra cannot be imported.
NO_TORCH = textwrap.dedent("""
    import json, sys
    for m in ("torch", "torchvision", "transformers", "safetensors", "onnx", "sklearn"):
        sys.modules[m] = None  # `import m` raises
    from kdserve.service.api.job_checks import check_spec, normalize
    from kdserve.service.errors import ApiError
    from kdserve.service.schemas import JobCreate
    from kdserve.service.spec import architectures, methods
    from kdserve.service.store.db import Dataset

    def attempt(patch):
        body = JobCreate.model_validate({"dataset_id": "ds_1", "teacher_id": "tch_1", "student": {"architecture": "mlp"},
                                         "method": {"name": "kd"}, **patch})
        try:
            normalize(body)
            dataset = Dataset(id="ds_1", format="npz", feature_shape=[10], labeled=True)
            check_spec(body, methods.METHODS[body.method.name], architectures.ARCHITECTURES[body.student.architecture],
                       dataset, None, None)
        except ApiError as exc:
            return {"status": exc.status, "code": exc.code, "param": exc.param, "message": exc.message}
        return {"method": body.method.params, "student": body.student.params}

    cases = json.loads(sys.argv[1])
    print(json.dumps({"results": [attempt(c) for c in cases],
                      "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "kdserve")
                                         and m.startswith(("torch", "kdserve.models", "kdserve.worker"))
                                         and sys.modules[m] is not None)}))
""")


def test_the_api_validates_a_job_spec_without_torch():
    cases = [
        {},                                                                          # good: defaults filled in
        {"method": {"name": "kd", "params": {"temperature": 2}}},                   # good: as given
        {"method": {"name": "kd", "params": {"temprature": 2}}},                    # unknown param
        {"method": {"name": "kd", "params": {"temperature": -1}}},                  # out of range
        {"method": {"name": "kd", "params": {"temperature": "2"}}},                 # a string is not a number
        {"method": {"name": "no-such-method"}},
        {"student": {"architecture": "mlp", "params": {"hidden_sizes": [0]}}},      # the architecture's own rule
        {"student": {"architecture": "cnn"}},                                       # 10 features: not a square image
        {"student": {"architecture": "transformer"}},                               # a text student on numeric data
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    out = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps(cases)], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["imported"] == []
    good, as_given, *bad = got["results"]
    assert good == {"method": {"temperature": 4.0, "alpha": 0.9},
                    "student": {"hidden_sizes": [128], "activation": "relu", "dropout": 0.0, "batch_norm": False}}
    assert as_given["method"] == {"temperature": 2, "alpha": 0.9}  # stored as sent, defaults added
    assert [(b["status"], b["code"], b["param"]) for b in bad] == [
        (422, "invalid_request", "method.params.temprature"),
        (422, "invalid_request", "method.params.temperature"),
        (422, "invalid_request", "method.params.temperature"),
        (422, "invalid_request", "method.name"),
        (422, "invalid_request", "student.params.hidden_sizes"),
        (422, "invalid_request", "student.params.image_shape"),
        (422, "invalid_request", "student.architecture"),
    ]
    assert bad[0]["message"].startswith("unknown parameter(s) ['temprature']; known: ['alpha', 'temperature']")
    assert bad[1]["message"].startswith("temperature: ")


BERT = TextTeacher(model_type="bert", num_layers=2, hidden_size=32, vocab_size=100, model_vocab_size=100,
                   max_positions=64, task="classification")


@pytest.mark.parametrize("arch,params,inp,param", [
    ("cnn", {}, StudentInput(input_shape=[10]), "student.params.image_shape"),
    ("patch_transformer", {"patch_size": 3}, StudentInput(input_shape=[1, 8, 8]), "student.params.patch_size"),
    ("patch_transformer", {"dim": 30, "heads": 4}, StudentInput(input_shape=[64]), "student.params.dim"),
    ("transformer", {"vocab_size": 20}, StudentInput(text=BERT, max_length=32), "student.params.vocab_size"),
    ("transformer", {"hidden": 30, "heads": 4}, StudentInput(text=BERT, max_length=32), "student.params.hidden"),
    ("transformer", {"max_positions": 16}, StudentInput(text=BERT, max_length=32), "student.params.max_positions"),
    ("transformer", {}, StudentInput(input_shape=[64]), "student.architecture"),
    ("mlp", {}, StudentInput(text=BERT), "student.architecture"),
    ("layer_dropped", {"layers": [0, 5]}, StudentInput(text=BERT), "student.params.layers"),
    ("layer_dropped", {"every": 3}, StudentInput(text=BERT), "student.params.every"),
    ("layer_dropped", {"hidden_size": 64}, StudentInput(text=BERT), "student.params.hidden_size"),
    ("layer_dropped", {"embedding_rank": 32}, StudentInput(text=BERT), "student.params.embedding_rank"),
    ("layer_dropped", {"embedding_full_rows": 10}, StudentInput(text=BERT), "student.params.embedding_full_rows"),
    ("layer_dropped", {}, StudentInput(text=TextTeacher("distilbert", 2, 32, 100, 100, 64)), "student.architecture"),
])
def test_architecture_rules_name_the_param(arch, params, inp, param):
    with pytest.raises(ArchitectureError) as e:
        check_student(ARCHITECTURES[arch], params, inp)
    assert e.value.param == param


def test_a_student_the_rules_accept():
    check_student(ARCHITECTURES["cnn"], {}, StudentInput(input_shape=[64]))
    check_student(ARCHITECTURES["layer_dropped"], {"embedding_rank": 8, "embedding_full_rows": 10},
                  StudentInput(text=BERT, max_length=32))


def test_text_pairing():
    kd, arch = METHODS["kd"], ARCHITECTURES["transformer"]
    text, numeric = DataFacts("ds_t", "jsonl"), DataFacts("ds_n", "npz", [64])
    hf = TeacherFacts("tch_h", "hf", {"task": "embedding", "max_positions": 64, "vocab_size": 100})
    onnx = TeacherFacts("tch_o", "onnx")
    for args, param in [((text, None, None, 32), "teacher_id"), ((text, None, onnx, 32), "teacher_id"),
                        ((numeric, None, hf, 32), "dataset_id"), ((text, numeric, hf, 32), "validation_dataset_id"),
                        ((text, None, hf, 100), "text.max_length"), ((text, None, hf, 32), "method.name")]:
        with pytest.raises(SpecError) as e:
            check_pairing(kd, arch, *args)
        assert e.value.param == param, args
    check_pairing(METHODS["embedding_cosine"], arch, text, None, hf, 32)


def test_params_are_validated_with_json_types():
    with pytest.raises(SpecError) as e:
        validate_params(METHODS["kd"].params, {"alpha": float("nan")}, "method.params")
    assert e.value.param == "method.params.alpha" and "finite" in e.value.message
    with pytest.raises(SpecError):
        validate_params(ARCHITECTURES["mlp"].params, {"batch_norm": 1}, "student.params")


def test_the_worker_refuses_what_the_api_refuses():
    """The builders run the spec's rules: same exception, same param."""
    from kdserve.models.zoo import create_student

    with pytest.raises(ArchitectureError) as e:
        create_student("cnn", {}, [10], 2)
    assert e.value.param == "student.params.image_shape"


def test_vocabularies_are_what_the_code_accepts():
    from kdserve.models.teachers import SUPPORTED
    from kdserve.service import ingest
    from kdserve.service.api import teachers

    assert tuple(vocab.TEACHER_FORMATS) == SUPPORTED == teachers.FORMATS
    assert "safetensors" not in teachers.FORMATS
    assert tuple(vocab.DATASET_FORMATS) == ingest.FORMATS
    assert set(vocab.TEXT_DATASET_FORMATS) <= set(vocab.DATASET_FORMATS)
    assert vocab.choices(vocab.TEACHER_FORMATS) == "torchscript | onnx | hf"
    assert all(text for v in (vocab.TEACHER_FORMATS, vocab.TASKS, vocab.DATASET_FORMATS, vocab.PRECISIONS,
                              vocab.OPTIMIZERS) for text in v.values())
