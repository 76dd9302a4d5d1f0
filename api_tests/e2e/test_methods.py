"""Every registered method runs end to end through the API: a short job on digits, exported and
parity-checked like any other. Feature methods use a teacher with an extra named output (a
TorchScript tuple, an ONNX second output); MCMI refines a TorchScript teacher first."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from api_tests.harness import upload_dataset, upload_teacher, wait_job
from testkit import digits as dg


class WithEmbedding(nn.Module):
    """The digits teacher, returning (logits, penultimate embedding)."""

    def __init__(self, mlp: nn.Sequential):
        super().__init__()
        self.body, self.out = mlp[:-1], mlp[-1]

    def forward(self, x):
        h = self.body(x)
        return self.out(h), h


@pytest.fixture(scope="module")
def setup(service, files, teacher_model, digits, tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    two = WithEmbedding(teacher_model).eval()
    torch.jit.trace(two, torch.zeros(1, 64)).save(str(d / "two.pt"))
    torch.onnx.export(two, (torch.zeros(2, 64),), str(d / "two.onnx"), input_names=["input"],
                      output_names=["logits", "hidden"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                      dynamo=True, external_data=False)
    # 10% labels: the rest is an unlabelled transfer set, as most methods must handle
    y = digits.y_train.copy()
    y[len(y) // 10:] = -1
    with service.client() as c:
        return {
            "plain": upload_teacher(c, files["torchscript"])["id"],
            "two_ts": upload_teacher(c, d / "two.pt"),
            "two_onnx": upload_teacher(c, d / "two.onnx"),
            "data": upload_dataset(c, files["npz"])["id"],
            "partial": upload_dataset(c, dg.save_npz(digits.x_train, y, d / "partial.npz"))["id"],
        }


def test_teacher_outputs_are_listed(setup):
    assert setup["two_ts"]["outputs"] == [{"name": "0", "shape": [10], "logits": True},
                                          {"name": "1", "shape": [256], "logits": False}]
    assert [o["name"] for o in setup["two_onnx"]["outputs"]] == ["logits", "hidden"]


METHOD_CASES = {
    "kd": {}, "ce": {}, "rkl": {}, "jsd": {}, "sinkd": {}, "dkd": {}, "dist": {}, "pld": {}, "dhkd": {},
    "uskd": {"teacher": None}, "pskd": {"teacher": None},
    "fitnet": {"teacher": "two_ts", "teacher_features": "1"},
    "lelp": {"teacher": "two_onnx", "teacher_features": "hidden"},
    # vector methods regress the digits teacher's logits (text embeddings: api_tests/e2e/test_text.py)
    # (raw logits of magnitude ~50 are slow to regress: these get more epochs)
    # NKD's target term is a plain log-likelihood and its non-target term is normalised: with 10 %
    # labels it needs a few more epochs than KD to leave chance on the ~16 labelled validation rows
    "nkd": {"epochs": 6},
    "embedding_mse": {"epochs": 12}, "embedding_cosine": {"epochs": 12}, "embedding_relational": {"epochs": 12},
}


def test_every_registered_method_is_covered(client):
    assert {m["name"] for m in client.get("/v1/methods").json()["data"]} == set(METHOD_CASES)


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
@pytest.mark.parametrize("data", ["data", "partial"])
def test_method_end_to_end(client, setup, method, data):
    case = METHOD_CASES[method]
    teacher = case.get("teacher", "plain")
    info = next(m for m in client.get("/v1/methods").json()["data"] if m["name"] == method)
    body = {"dataset_id": setup[data], "student": {"architecture": "mlp", "params": {"hidden_sizes": [32]}},
            "method": {"name": method}, "training": {"epochs": case.get("epochs", 3), "learning_rate": 0.01}}
    if teacher:
        body["teacher_id"] = setup[teacher] if isinstance(setup[teacher], str) else setup[teacher]["id"]
    if "teacher_features" in case:
        body["teacher_features"] = case["teacher_features"]
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    card = client.get(f"/v1/models/{job['model_id']}").json()
    assert card["output"]["shape"] == [-1, 10]  # LELP's subclass head is pooled back to classes in the export
    assert card["artifacts"][0]["max_abs_diff"] <= 1e-4
    assert job["metrics"]["student_accuracy"] > 0.3, (method, job["metrics"])
    if info["needs_teacher"]:
        assert job["metrics"]["agreement"] is not None


def test_feature_method_needs_teacher_features(client, setup):
    body = {"teacher_id": setup["two_ts"]["id"], "dataset_id": setup["data"], "method": {"name": "fitnet"},
            "student": {"architecture": "mlp"}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["error"]["param"] == "teacher_features"
    r = client.post("/v1/jobs", json={**body, "teacher_features": "nope"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "teacher_features"


def test_self_distillation_needs_labels(client, setup, files, digits, tmp_path):
    unlabelled = upload_dataset(client, dg.save_npz(digits.x_train, None, tmp_path / "u.npz"))
    r = client.post("/v1/jobs", json={"dataset_id": unlabelled["id"], "method": {"name": "pskd"},
                                      "student": {"architecture": "mlp"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id"


def test_mcmi_refines_the_teacher_then_distils(client, setup):
    body = {"teacher_id": setup["plain"], "dataset_id": setup["data"], "method": {"name": "kd"},
            "student": {"architecture": "mlp", "params": {"hidden_sizes": [32]}},
            "teacher_refinement": {"method": "mcmi", "params": {"epochs": 2, "lr": 0.01}},
            "training": {"epochs": 3, "learning_rate": 0.01}}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert sum("refine_epoch" in (e["data"] or {}) for e in events) == 2
    card = client.get(f"/v1/models/{job['model_id']}").json()
    refined = client.get(f"/v1/teachers/{card['refined_teacher_id']}").json()
    assert refined["format"] == "torchscript" and refined["num_classes"] == 10 and "MCMI" in refined["name"]
    original = client.get(f"/v1/teachers/{setup['plain']}").json()
    assert refined["sha256"] != original["sha256"]
    # an ONNX teacher is a black box: it cannot be refined
    r = client.post("/v1/jobs", json={**body, "teacher_id": setup["two_onnx"]["id"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "teacher_refinement"
