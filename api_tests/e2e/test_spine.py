"""The spine, end to end: a real uvicorn server, a real Celery worker process, a real Redis.

Upload a digits teacher (TorchScript and ONNX) and the data (npz and CSV), run `kd` jobs, download
the ONNX students and check them in onnxruntime on held-out digits the service never saw."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from api_tests.harness import KD_JOB, run_onnx, upload_dataset, upload_teacher, wait_job
from testkit import digits as dg

@pytest.fixture(scope="module")
def uploads(service, files):
    with service.client() as c:
        return {
            "torchscript": upload_teacher(c, files["torchscript"], name="digits-ts"),
            "onnx": upload_teacher(c, files["onnx"], name="digits-onnx"),
            "npz": upload_dataset(c, files["npz"]),
            "csv": upload_dataset(c, files["csv"], label_column="digit"),
        }


def test_uploads_are_described(uploads, digits):
    for fmt in ("torchscript", "onnx"):
        t = uploads[fmt]
        assert t["format"] == fmt and t["input_shape"] == [64] and t["num_classes"] == 10
        assert t["num_parameters"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    for fmt in ("npz", "csv"):
        d = uploads[fmt]
        assert d["format"] == fmt and d["num_rows"] == len(digits.x_train) and d["feature_shape"] == [64]
        assert d["labeled"] and d["num_classes"] == 10
        assert sum(d["class_counts"].values()) == len(digits.x_train)


@pytest.mark.parametrize("teacher_fmt,data_fmt", [("torchscript", "npz"), ("onnx", "csv"), ("onnx", "npz"),
                                                  ("torchscript", "csv")])
def test_kd_job_end_to_end(client, uploads, digits, teacher_model, tmp_path, teacher_fmt, data_fmt):
    body = {**KD_JOB, "teacher_id": uploads[teacher_fmt]["id"], "dataset_id": uploads[data_fmt]["id"],
            "metadata": {"case": f"{teacher_fmt}-{data_fmt}"}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["epochs"] == 30 and job["metadata"] == body["metadata"]

    job = wait_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0 and job["epoch"] == 30 and job["attempts"] == 1
    assert job["metrics"]["student_accuracy"] > 0.9 and job["metrics"]["agreement"] > 0.9

    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    stages = [e["data"]["stage"] for e in events if e["type"] == "stage" and e["data"] and "stage" in e["data"]]
    assert stages == ["validating", "caching_teacher", "training", "evaluating", "exporting", "verifying", "publishing"]
    assert sum(e["type"] == "metrics" for e in events) == 30

    card = client.get(f"/v1/models/{job['model_id']}").json()
    assert card["job_id"] == job["id"] and card["teacher_id"] == body["teacher_id"]
    assert card["compression_ratio"] > 10
    (art,) = card["artifacts"]
    assert art["precision"] == "fp32" and art["max_abs_diff"] <= 1e-4 and art["argmax_agreement"] == 1.0

    r = client.get(f"/v1/models/{card['id']}/download")
    assert r.status_code == 200
    assert r.headers["etag"] == f'"{art["sha256"]}"' and "attachment" in r.headers["content-disposition"]
    assert hashlib.sha256(r.content).hexdigest() == art["sha256"] and len(r.content) == art["size_bytes"]
    path = tmp_path / "student.onnx"
    path.write_bytes(r.content)

    # The downloaded student, in onnxruntime, on digits the service never saw.
    student_logits = run_onnx(path, digits.x_test)
    with torch.no_grad():
        teacher_logits = teacher_model(torch.from_numpy(digits.x_test)).numpy()
    assert dg.accuracy(student_logits, digits.y_test) >= 0.90
    assert np.mean(student_logits.argmax(1) == teacher_logits.argmax(1)) >= 0.90
    # dynamic batch: one sample and an odd batch work too
    assert run_onnx(path, digits.x_test[:1]).shape == (1, 10)
    assert run_onnx(path, digits.x_test[:7]).shape == (7, 10)


def test_download_supports_range_and_etag(client, uploads):
    body = {**KD_JOB, "training": {"epochs": 2}, "teacher_id": uploads["onnx"]["id"], "dataset_id": uploads["npz"]["id"]}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    url = f"/v1/models/{job['model_id']}/download"
    full = client.get(url)
    etag = full.headers["etag"]
    part = client.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == full.content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(full.content)}"
    tail = client.get(url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == full.content[-16:]
    assert client.get(url, headers={"Range": f"bytes={len(full.content)}-"}).status_code == 416
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    missing = client.get(url, params={"precision": "int8"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_parity_gate_fails_the_job(client, uploads):
    """A tolerance below float32 rounding for a CNN, whose BatchNorm the exporter folds into the
    convolution weights (the file computes conv(x, w·s) + b', PyTorch (conv(x, w) + b − μ)·s + β,
    rounded differently whatever the kernels): the gate must fail the job with parity_failed and
    publish nothing. (An MLP is no test of this: on some CPUs onnxruntime's and PyTorch's matmuls
    agree to the bit.)"""
    body = {**KD_JOB, "student": {"architecture": "cnn", "params": {"channels": [8, 16]}},
            "training": {"epochs": 1}, "export": {"parity_tolerance": 1e-12},
            "teacher_id": uploads["onnx"]["id"], "dataset_id": uploads["npz"]["id"]}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "parity_failed", job
    assert job["model_id"] is None
    assert not [m for m in client.get("/v1/models", params={"limit": 100}).json()["data"] if m["job_id"] == job["id"]]
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    failed = [e for e in events if e["message"] == "ONNX parity check failed"]
    assert failed and failed[0]["data"]["max_abs_diff"] > 1e-12


def test_variants_are_published_with_their_measurements(client, uploads, digits, tmp_path):
    """export.quantize: the quantizing stage builds int8 (static QDQ for a CNN) and fp16, measures each
    on the validation set, says in an event whether it passed the accuracy gate, and publishes the
    ones that did next to fp32 — downloadable and served under their precision."""
    body = {**KD_JOB, "student": {"architecture": "cnn", "params": {"channels": [8, 16]}},
            "training": {"epochs": 8, "learning_rate": 0.005}, "export": {"quantize": ["int8", "fp16"]},
            "teacher_id": uploads["onnx"]["id"], "dataset_id": uploads["npz"]["id"]}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    stages = [e["data"]["stage"] for e in events if e["type"] == "stage" and e["data"] and "stage" in e["data"]]
    assert stages[-3:] == ["verifying", "quantizing", "publishing"]
    verdicts = {e["data"]["precision"]: e for e in events if e["data"] and "published" in e["data"]}
    assert sorted(verdicts) == ["fp16", "int8"]

    card = client.get(f"/v1/models/{job['model_id']}").json()
    by_precision = {a["precision"]: a for a in card["artifacts"]}
    published = {p for p, e in verdicts.items() if e["data"]["published"]}
    assert set(by_precision) == {"fp32"} | published
    assert published == {"int8", "fp16"}  # a 1-point budget: this CNN keeps its accuracy in both
    assert by_precision["int8"]["quantization"].startswith("static int8 QDQ")
    held_out = {}
    for precision, art in by_precision.items():  # fp32 first
        assert art["latency_ms_batch1"] > 0 and art["latency_ms_batch64"] > 0 and art["opset"] >= 13
        assert (art["accuracy_delta"] or 0.0) >= -0.01
        r = client.get(f"/v1/models/{card['id']}/download", params={"precision": precision})
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == art["sha256"]
        path = tmp_path / f"student.{precision}.onnx"
        path.write_bytes(r.content)
        logits = run_onnx(path, digits.x_test)
        assert logits.shape == (len(digits.x_test), 10)
        held_out[precision] = dg.accuracy(logits, digits.y_test)  # on digits the service never saw
        infer = client.post(f"/v2/models/{card['id']}/versions/{precision}/infer", json={"inputs": [
            {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": digits.x_test[:2].ravel().tolist()}]})
        assert infer.status_code == 200 and infer.json()["model_version"] == precision
        assert np.allclose(np.reshape(infer.json()["outputs"][0]["data"], (2, 10)), logits[:2], atol=1e-4)
    assert by_precision["int8"]["size_bytes"] < by_precision["fp32"]["size_bytes"]
    assert held_out["fp32"] >= 0.8
    assert held_out["int8"] >= held_out["fp32"] - 0.03 and held_out["fp16"] >= held_out["fp32"] - 0.01
