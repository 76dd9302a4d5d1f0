"""A job spec's free text and size are bounded at pre-flight: metadata keys, values and the model
name (length and characters), and what the job would cost a worker (classes, parameters, the
single-file ONNX limit, memory by the estimate of service/budgets.py). Each hostile spec gets a
422 naming the parameter to change; nothing is created and the service answers on.

The service here has its own limits (KDSERVE_JOB_MAX_*), low enough for small requests to cross
them, and a parameter limit above what one ONNX file can hold, so that both refusals show."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from api_tests.harness import KD_JOB, Service, assert_error, upload_dataset, upload_teacher, wait_job
from testkit import digits as dg

LIMITS = {"KDSERVE_JOB_MAX_PARAMETERS": str(600_000_000), "KDSERVE_JOB_MAX_MEMORY_BYTES": str(2 * 1024**3),
          "KDSERVE_JOB_MAX_CLASSES": "20"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):  # the `client` and `unchanged` fixtures use this one in this module
    with Service(tmp_path_factory.mktemp("limits"), extra_env=LIMITS) as svc:
        yield svc


@pytest.fixture(scope="module")
def ids(service, files, tmp_path_factory):
    """The digits teacher and data, and a teacher with 50 outputs (more classes than the limit)."""
    wide = dg.save_onnx(nn.Sequential(nn.Linear(64, 50)).eval(), tmp_path_factory.mktemp("wide") / "wide.onnx")
    with service.client() as c:
        return {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"],
                "wide_teacher_id": upload_teacher(c, wide)["id"]}


def job(ids, **changes) -> dict:
    return {**KD_JOB, "teacher_id": ids["teacher_id"], "dataset_id": ids["dataset_id"], **changes}


@pytest.mark.parametrize("metadata, param", [
    ({"k" * 65: "v"}, "metadata"),                          # a key too long
    ({"bad key/../x": "v"}, "metadata"),                    # a key outside the identifier set
    ({"": "v"}, "metadata"),
    ({"note": "x" * 1025}, "metadata.note"),                # a value too long
    ({"note": "a\x00b"}, "metadata.note"),                  # NUL: PostgreSQL text cannot even hold it
    ({"note": "line\r\nSet-Cookie: a=b"}, "metadata.note"),  # control characters
    ({"note": "invoice\u202egnp.exe"}, "metadata.note"),    # a bidi override (invisible formatting)
    ({"name": "x" * 129}, "metadata.name"),                 # longer than a model name may be
    ({"name": "../../models/other"}, "metadata.name"),      # a path segment of /v2/models/{name}
    ({"name": 'a"; filename="evil.sh'}, "metadata.name"),   # the download's Content-Disposition
    ({"name": "-leading-dash"}, "metadata.name"),
])
def test_metadata_is_bounded(client, ids, unchanged, metadata, param):
    assert_error(client.post("/v1/jobs", json=job(ids, metadata=metadata)), 422, "invalid_request", param)


def test_ordinary_metadata_is_kept(client, ids):
    metadata = {"name": "digits_student-v1.2", "team": "vision", "note": "Zürich run, ±2 % — ok"}
    created = client.post("/v1/jobs", json=job(ids, metadata=metadata, training={"epochs": 1}))
    assert created.status_code == 202, created.text
    done = wait_job(client, created.json()["id"])
    assert done["status"] == "succeeded" and done["metadata"] == metadata
    assert client.get(f"/v1/models/{done['model_id']}").json()["name"] == "digits_student-v1.2"


def mlp(*hidden: int) -> dict:
    return {"architecture": "mlp", "params": {"hidden_sizes": list(hidden)}}


def test_more_parameters_than_the_limit(client, ids, unchanged):
    r = client.post("/v1/jobs", json=job(ids, student=mlp(30_000, 30_000)))  # 0.9 G parameters
    assert_error(r, 422, "invalid_request", "student.params")
    assert "KDSERVE_JOB_MAX_PARAMETERS" in r.json()["error"]["message"]


def test_weights_too_large_for_one_onnx_file(client, ids, unchanged):
    """0.5 G parameters are within this service's parameter limit, but 2 GB of float32 weights do
    not fit one ONNX file: refused before training rather than published without its weights."""
    r = client.post("/v1/jobs", json=job(ids, student=mlp(22_400, 22_400)))
    assert_error(r, 422, "invalid_request", "student.params")
    assert "ONNX" in r.json()["error"]["message"]


def test_activations_over_the_memory_budget(client, ids, unchanged):
    """A small student, but a batch of 65,536 rows through 8192-wide layers: ~8 GiB of activations."""
    r = client.post("/v1/jobs", json=job(ids, student=mlp(8192), training={"batch_size": 65_536}))
    assert_error(r, 422, "invalid_request", "training.batch_size")
    assert "KDSERVE_JOB_MAX_MEMORY_BYTES" in r.json()["error"]["message"]


def test_training_state_over_the_memory_budget(client, ids, unchanged):
    """200 M parameters are within the parameter limit; weights, gradients and Adam's moments are 3 GiB."""
    r = client.post("/v1/jobs", json=job(ids, student=mlp(14_000, 14_000)))
    assert_error(r, 422, "invalid_request", "student.params")


def test_more_classes_than_the_limit(client, ids, unchanged):
    r = client.post("/v1/jobs", json=job(ids, teacher_id=ids["wide_teacher_id"]))
    assert_error(r, 422, "invalid_request", "teacher_id")
    assert "KDSERVE_JOB_MAX_CLASSES" in r.json()["error"]["message"]
