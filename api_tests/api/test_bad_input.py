"""Bad input gets the documented 4xx with the error shape, nothing is stored, and the server stays
healthy. Uploaded files are data: a pickle with a payload is refused without being unpickled."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from api_tests.harness import KD_JOB, Payload, assert_error, post_file, upload_dataset, upload_teacher
from testkit import digits as dg


@pytest.fixture(scope="module")
def good(service, files):
    with service.client() as c:
        return {"teacher": upload_teacher(c, files["onnx"]), "dataset": upload_dataset(c, files["npz"])}


def test_corrupted_teacher_is_refused(client, files, unchanged):
    assert_error(post_file(client, "/v1/teachers", "x.onnx", os.urandom(4096)), 422, "unsupported_format", "file")
    truncated = files["torchscript"].read_bytes()[:3000]
    assert_error(post_file(client, "/v1/teachers", "t.pt", truncated), 422, "unsupported_format")
    onnx_bytes = files["onnx"].read_bytes()
    assert_error(post_file(client, "/v1/teachers", "t.onnx", onnx_bytes[: len(onnx_bytes) // 2]), 422, "unsupported_format")


def test_only_formats_that_load_are_accepted(client, files, unchanged):
    """The form accepts the teacher formats the loader runs (kdserve.service.vocab.TEACHER_FORMATS);
    a bare safetensors file, weights without a model, is refused at the door with what to send."""
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    bare = len(header).to_bytes(8, "little") + header + b"\0\0\0\0"
    r = post_file(client, "/v1/teachers", "model.safetensors", bare)
    assert_error(r, 422, "unsupported_format", "file")
    assert "format hf" in r.json()["error"]["message"]
    r = post_file(client, "/v1/teachers", "t.onnx", files["onnx"].read_bytes(), format="safetensors")
    assert_error(r, 422, "invalid_request", "format")
    assert "['torchscript', 'onnx', 'hf']" in r.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_save_zip"])
def test_pickle_teacher_is_refused_and_never_unpickled(client, tmp_path, unchanged, kind):
    marker = tmp_path / "pwned"
    if kind == "raw_pickle":
        content = pickle.dumps(Payload(str(marker)))
    else:  # what torch.save(whole_module_or_object) writes: a zip around a pickle
        buf = io.BytesIO()
        torch.save({"model": Payload(str(marker))}, buf)
        content = buf.getvalue()
    assert_error(post_file(client, "/v1/teachers", "model.pt", content), 422, "unsafe_file", "file")
    assert not marker.exists()


def test_torchscript_with_foreign_globals_is_refused(client, files, tmp_path, unchanged):
    """A TorchScript archive whose data.pkl was swapped for a payload pickle."""
    marker = tmp_path / "pwned"
    src = zipfile.ZipFile(files["torchscript"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for item in src.infolist():
            data = pickle.dumps(Payload(str(marker))) if item.filename.endswith("/data.pkl") else src.read(item)
            out.writestr(item, data)
    assert_error(post_file(client, "/v1/teachers", "model.pt", buf.getvalue()), 422, "unsafe_file")
    assert not marker.exists()


def test_teacher_input_must_match_dataset(client, tmp_path, good):
    narrow = torch.nn.Sequential(torch.nn.Linear(32, 10)).eval()
    teacher = upload_teacher(client, dg.save_onnx(narrow, tmp_path / "narrow.onnx", width=32))
    assert teacher["input_shape"] == [32]
    body = {**KD_JOB, "teacher_id": teacher["id"], "dataset_id": good["dataset"]["id"]}
    before = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    assert_error(client.post("/v1/jobs", json=body), 422, "invalid_request", "dataset_id")
    assert client.get("/v1/jobs", params={"limit": 100}).json()["data"] == before


def test_labels_beyond_teacher_classes(client, tmp_path, good, digits):
    y = digits.y_train.copy()
    y[:5] = 12
    ds = upload_dataset(client, dg.save_npz(digits.x_train, y, tmp_path / "d.npz"))
    assert ds["num_classes"] == 13
    body = {**KD_JOB, "teacher_id": good["teacher"]["id"], "dataset_id": ds["id"]}
    assert_error(client.post("/v1/jobs", json=body), 422, "label_out_of_range", "dataset_id")


@pytest.mark.parametrize("patch,param", [
    ({"method": {"name": "no-such-method"}}, "method.name"),
    ({"method": {"name": "kd", "params": {"temprature": 2}}}, "method.params.temprature"),
    ({"method": {"name": "kd", "params": {"temperature": -1}}}, "method.params.temperature"),
    ({"student": {"architecture": "mlp", "params": {"hidden": [3]}}}, "student.params.hidden"),
    ({"student": {"architecture": "resnet999"}}, "student.architecture"),
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"training": {"optimizer": "lbfgs"}}, "training.optimizer"),
    ({"surprise": 1}, "surprise"),
    ({"teacher_id": None}, "teacher_id"),
    ({"dataset_id": "ds_nope"}, "dataset_id"),
])
def test_job_preflight_rejects(client, good, unchanged, patch, param):
    body = {**KD_JOB, "teacher_id": good["teacher"]["id"], "dataset_id": good["dataset"]["id"], **patch}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code in (404, 422), r.text
    assert r.json()["error"]["param"] == param, r.text


def test_malformed_json_body(client, unchanged):
    r = client.post("/v1/jobs", content=b'{"dataset_id": ', headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_request")


@pytest.mark.parametrize("content,needle", [
    (b"a,b,label\n1,2,0\n3,oops,1\n", "line 3, column 'b'"),
    (b"a,b,label\n1,2,0\n3,4\n", "line 3 has 2 cells"),
    (b"a,b,label\n1,2,0.5\n", "label"),
    (b"a,b\n1,nan\n", "NaN"),
    (b"", "empty"),
])
def test_bad_csv(client, unchanged, content, needle):
    r = post_file(client, "/v1/datasets", "d.csv", content)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


def test_npz_with_object_array_is_refused(client, unchanged):
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}, {"b": 2}], dtype=object))
    assert_error(post_file(client, "/v1/datasets", "d.npz", buf.getvalue()), 422, "unsafe_file")


def test_auth_is_required(service, unchanged):
    with service.client(api_key=None) as anon:
        assert_error(anon.get("/v1/teachers"), 401, "unauthorized")
        assert_error(anon.post("/v1/jobs", json={}), 401, "unauthorized")
    with service.client(api_key="kd_" + "x" * 43) as wrong:
        assert_error(wrong.get("/v1/methods"), 401, "unauthorized")
    with service.client(api_key=None) as anon:
        assert anon.get("/healthz").status_code == 200


def test_other_tenants_ids_answer_404(service, client, good, files):
    job = client.post("/v1/jobs", json={**KD_JOB, "training": {"epochs": 1}, "teacher_id": good["teacher"]["id"],
                                        "dataset_id": good["dataset"]["id"]}).json()
    from api_tests.harness import wait_job
    job = wait_job(client, job["id"])
    assert job["status"] == "succeeded"
    with service.client(api_key=service.create_key("tenant-b")) as other:
        assert other.get("/v1/teachers").json()["data"] == []
        assert other.get("/v1/jobs").json()["data"] == []
        assert other.get("/v1/models").json()["data"] == []
        for path in (f"/v1/teachers/{good['teacher']['id']}", f"/v1/datasets/{good['dataset']['id']}",
                     f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events", f"/v1/models/{job['model_id']}",
                     f"/v1/models/{job['model_id']}/download"):
            assert_error(other.get(path), 404, "not_found")
        assert_error(other.post(f"/v1/jobs/{job['id']}/cancel"), 404, "not_found")
        for path in (f"/v1/teachers/{good['teacher']['id']}", f"/v1/datasets/{good['dataset']['id']}",
                     f"/v1/models/{job['model_id']}"):
            assert_error(other.delete(path), 404, "not_found")
        # and a job that names tenant A's teacher and dataset
        body = {**KD_JOB, "teacher_id": good["teacher"]["id"], "dataset_id": good["dataset"]["id"]}
        assert_error(other.post("/v1/jobs", json=body), 404, "not_found")
    assert client.get(f"/v1/models/{job['model_id']}").status_code == 200


def test_revoked_key_stops_working(service):
    import json
    import subprocess
    import sys
    import time

    from api_tests.harness import REPO

    made = json.loads(subprocess.run([sys.executable, "-m", "kdserve.cli", "keys", "create", "--tenant", "c", "--json"],
                                     cwd=REPO, env=service.env, capture_output=True, text=True, check=True).stdout)
    with service.client(api_key=made["key"]) as c:
        assert c.get("/v1/jobs").status_code == 200
        subprocess.run([sys.executable, "-m", "kdserve.cli", "keys", "revoke", made["id"]], cwd=REPO, env=service.env,
                       capture_output=True, check=True)
        deadline = time.time() + 10  # the API trusts a checked key for KDSERVE_AUTH_CACHE_S (0.5 s)
        while c.get("/v1/jobs").status_code == 200:
            assert time.time() < deadline
            time.sleep(0.5)
        assert_error(c.get("/v1/jobs"), 401, "unauthorized")
