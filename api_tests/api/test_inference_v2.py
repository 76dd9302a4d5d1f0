"""Serving through the real service: Open Inference Protocol v2 and /v1/models/{id}/predict on a
student published by a real job, checked against onnxruntime run directly on the downloaded file."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_tests.harness import KD_JOB, upload_dataset, upload_teacher, wait_job
from kdserve.service.api.metrics import hashed_label


@pytest.fixture(scope="module")
def published(service, files, tmp_path_factory):
    """A kd student published by a real job, and its fp32 file as a client downloads it."""
    with service.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"],
               "dataset_id": upload_dataset(c, files["npz"])["id"]}
        job = c.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 10},
                                       "metadata": {"name": "digits-v2-student"}}).json()
        job = wait_job(c, job["id"])
        assert job["status"] == "succeeded", job
        card = c.get(f"/v1/models/{job['model_id']}").json()
        path = tmp_path_factory.mktemp("download") / "student.onnx"
        path.write_bytes(c.get(f"/v1/models/{card['id']}/download").content)
    return {"card": card, "path": path, "ids": ids}


@pytest.fixture(scope="module")
def direct(published):
    session = ort.InferenceSession(str(published["path"]), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": np.asarray(x, np.float32)})[0]


def infer_body(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def logits_of(answer: dict) -> np.ndarray:
    (out,) = answer["outputs"]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_infer_round_trip_equals_onnxruntime_on_the_downloaded_file(client, published, direct, digits):
    mid = published["card"]["id"]
    x = digits.x_test[:5]
    r = client.post(f"/v2/models/{mid}/infer", json=infer_body(x, id="r1", parameters={"priority": 1}))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == "r1" and answer["model_name"] == "digits-v2-student" and answer["model_version"] == "fp32"
    (out,) = answer["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [5, 10]
    np.testing.assert_array_equal(logits_of(answer), direct(x))  # bit for bit: same file, same batch
    # without an id, none is invented
    assert "id" not in client.post(f"/v2/models/{mid}/infer", json=infer_body(x[:1])).json()


def test_tensor_forms_and_datatypes(client, published, direct, digits):
    mid = published["card"]["id"]
    x = digits.x_test[:3]
    want = direct(x)
    nested = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": x.tolist()}]}
    np.testing.assert_array_equal(logits_of(client.post(f"/v2/models/{mid}/infer", json=nested).json()), want)
    fp64 = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP64", "data": x.astype(np.float64).tolist()}]}
    np.testing.assert_array_equal(logits_of(client.post(f"/v2/models/{mid}/infer", json=fp64).json()), want)
    pixels = (x * 16).round().astype(np.int64)  # digits are 0..16 intensities scaled by 1/16
    for dtype in ("INT64", "INT32"):
        body = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": dtype, "data": pixels.ravel().tolist()}]}
        r = client.post(f"/v2/models/{mid}/infer", json=body)
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(logits_of(r.json()), direct(pixels.astype(np.float32)))
    # outputs chosen by name, by id or by the model's name, with an explicit version
    selected = client.post(f"/v2/models/digits-v2-student/versions/fp32/infer",
                           json=infer_body(x, outputs=[{"name": "logits"}])).json()
    np.testing.assert_array_equal(logits_of(selected), want)


@pytest.mark.parametrize("inputs,fragment", [
    ([{"name": "input", "shape": [2, 63], "datatype": "FP32", "data": [0.0] * 128}], "shape [2, 63] needs 126"),
    ([{"name": "input", "shape": [2, 32], "datatype": "FP32", "data": [0.0] * 64}], "dimension 1 is 32"),
    ([{"name": "input", "shape": [64], "datatype": "FP32", "data": [0.0] * 64}], "rank 1"),
    ([{"name": "input", "shape": [0, 64], "datatype": "FP32", "data": []}], "batch dimension is 0"),
    ([{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [[0.0] * 64, [0.0] * 63]}], "rectangular"),
    ([{"name": "input", "shape": [1, 64], "datatype": "FP16", "data": [0.0] * 64}], "not supported as JSON"),
    ([{"name": "input", "shape": [1, 64], "datatype": "BYTES", "data": ["a"] * 64}], "not supported as JSON"),
    ([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ["0.5"] * 64}], "must be numbers"),
    ([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [None] * 64}], "must be numbers"),
    ([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [True] * 64}], "not true/false"),
    ([{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": [0.5] * 64}], "must be integers"),
    ([{"name": "input", "shape": [1, 64], "datatype": "BOOL", "data": [True] * 64}], "cannot feed the model's FP32"),
    ([{"name": "input", "shape": [1, 64], "datatype": "BOOL", "data": [1] * 64}], "true/false values"),
    ([{"name": "input", "shape": [1, 64], "datatype": "FP64", "data": [1e300] * 64}], "overflows"),
    ([{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}], "no such input"),
    ([{"name": "input", "shape": [1, 64], "datatype": "FP32"}], "binary_data_size for binary data"),
    ([{"name": "input", "shape": [1, -64], "datatype": "FP32", "data": [0.0] * 64}], "negative dimension"),
    ([], "inputs"),
])
def test_bad_tensors_are_400_with_a_message(client, published, inputs, fragment):
    r = client.post(f"/v2/models/{published['card']['id']}/infer", json={"id": "bad", "inputs": inputs})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and fragment in error, error


def test_other_bad_requests_are_v2_errors(client, published, digits):
    mid = published["card"]["id"]
    nan = '{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [NaN, 1]}]}'
    r = client.post(f"/v2/models/{mid}/infer", content=nan, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "NaN" in r.json()["error"]
    r = client.post(f"/v2/models/{mid}/infer", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "the request body is not valid JSON"}
    r = client.post(f"/v2/models/{mid}/infer", content=b'{"inputs": []}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "must be JSON" in r.json()["error"]
    r = client.post(f"/v2/models/{mid}/infer", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "Input should be an object"
    r = client.post(f"/v2/models/{mid}/infer", json=infer_body(digits.x_test[:1], outputs=[{"name": "probs"}]))
    assert r.status_code == 400 and "unknown output" in r.json()["error"]
    r = client.post(f"/v2/models/{mid}/infer", json={"inputs": [{"name": "input"}]})
    assert r.status_code == 400 and r.json()["error"].startswith("inputs.0.shape")
    assert client.get("/v2/nowhere").json() == {"error": "Not Found"}
    r = client.put(f"/v2/models/{mid}/infer")
    assert r.status_code == 405 and isinstance(r.json()["error"], str)


def binary_request(x: np.ndarray, **extra) -> tuple[bytes, dict]:
    """A request in the binary tensor data extension: JSON header, then the FP32 bytes."""
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}], **extra}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def test_binary_tensor_data_in_and_out(client, published, direct, digits):
    mid, x = published["card"]["id"], digits.x_test[:9]
    body, headers = binary_request(x, id="b1")
    r = client.post(f"/v2/models/{mid}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "b1"
    np.testing.assert_allclose(logits_of(r.json()), direct(x), atol=1e-5)  # JSON answer by default

    body, headers = binary_request(x, parameters={"binary_data_output": True})
    r = client.post(f"/v2/models/{mid}/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    (out,) = json.loads(r.content[:n])["outputs"]
    assert out["shape"] == [9, 10] and "data" not in out and out["parameters"]["binary_data_size"] == 9 * 10 * 4
    got = np.frombuffer(r.content[n:], "<f4").reshape(9, 10)
    np.testing.assert_allclose(got, direct(x), atol=1e-5)

    # the same through an output's own flag, with a JSON input
    r = client.post(f"/v2/models/{mid}/infer",
                    json=infer_body(x[:2], outputs=[{"name": "logits", "parameters": {"binary_data": True}}]))
    n = int(r.headers["inference-header-content-length"])
    np.testing.assert_allclose(np.frombuffer(r.content[n:], "<f4").reshape(2, 10), direct(x[:2]), atol=1e-5)


@pytest.mark.parametrize("mutate,fragment", [
    (lambda b, h: (b[:-4], h), "runs past the body's 32 bytes"),                          # short body
    (lambda b, h: (b.replace(b'"shape": [1, 9]', b'"shape": [1, 8]'), h), "needs 32 bytes, binary_data_size is 36"),
    (lambda b, h: (b + b"\0\0\0\0", h), "bytes of binary data that no input"),           # trailing bytes
    (lambda b, h: (b, {**h, "Inference-Header-Content-Length": "100000"}), "the body has"),  # header too long
    (lambda b, h: (b, {**h, "Inference-Header-Content-Length": "x"}), "byte count"),
    (lambda b, h: (b[: int(h["Inference-Header-Content-Length"])],
                   {"Content-Type": "application/json"}), "no Inference-Header-Content-Length"),
    (lambda b, h: (b[: -36] + np.full(9, np.nan, "<f4").tobytes(), h), "NaN"),
])
def test_bad_binary_requests_are_400(client, published, mutate, fragment):
    body, headers = mutate(*binary_request(np.zeros((1, 9), np.float32)))  # 36 bytes of FP32
    r = client.post(f"/v2/models/{published['card']['id']}/infer", content=body, headers=headers)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_unknown_model_or_version_is_404(client, published, digits):
    r = client.post("/v2/models/mdl_doesnotexist/infer", json=infer_body(digits.x_test[:1]))
    assert r.status_code == 404 and "no model 'mdl_doesnotexist'" in r.json()["error"]
    r = client.post(f"/v2/models/{published['card']['id']}/versions/int4/infer", json=infer_body(digits.x_test[:1]))
    assert r.status_code == 404 and "no version 'int4'" in r.json()["error"]
    assert client.get("/v2/models/mdl_doesnotexist").status_code == 404
    assert client.get("/v2/models/mdl_doesnotexist/ready").status_code == 404


def test_auth_and_tenant_isolation(service, published, digits):
    mid, name = published["card"]["id"], published["card"]["name"]
    r = httpx.post(f"{service.base_url}/v2/models/{mid}/infer", json=infer_body(digits.x_test[:1]))
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(f"{service.base_url}/v2").status_code == 401
    with service.client(api_key="kd_" + "x" * 43) as bad:
        assert bad.get(f"/v2/models/{mid}").status_code == 401
    with service.client(api_key=service.create_key("v2-other-tenant")) as other:
        for ref in (mid, name):  # by id or by name: another tenant's model does not exist for them
            r = other.post(f"/v2/models/{ref}/infer", json=infer_body(digits.x_test[:1]))
            assert r.status_code == 404 and isinstance(r.json()["error"], str)
            assert other.get(f"/v2/models/{ref}").status_code == 404
            assert other.get(f"/v2/models/{ref}/ready").status_code == 404
        r = other.post(f"/v1/models/{mid}/predict", json={"inputs": digits.x_test[:1].tolist()})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert other.get("/v2").status_code == 200  # their key works; the model is just not theirs


def test_health_and_metadata(service, client, published):
    card = published["card"]
    # probes: no key needed (Kubernetes cannot send one)
    assert httpx.get(f"{service.base_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{service.base_url}/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "kdserve" and isinstance(server["version"], str) and server["extensions"] == ["classification"]
    for ref in (card["id"], card["name"]):
        meta = client.get(f"/v2/models/{ref}").json()
        assert meta == {"name": card["name"], "versions": ["fp32"], "platform": "onnx_onnxv1",
                        "inputs": [{"name": "input", "shape": [-1, 64], "datatype": "FP32"}],
                        "outputs": [{"name": "logits", "shape": [-1, 10], "datatype": "FP32"}]}
        assert client.get(f"/v2/models/{ref}/versions/fp32").json() == meta
        ready = client.get(f"/v2/models/{ref}/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert client.get(f"/v2/models/{ref}/versions/fp32/ready").status_code == 200
    assert client.get(f"/v2/models/{card['id']}/versions/int8/ready").status_code == 404


def test_predict(client, published, direct, digits):
    mid = published["card"]["id"]
    x = digits.x_test[:7]
    r = client.post(f"/v1/models/{mid}/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    answer = r.json()
    np.testing.assert_array_equal(np.asarray(answer["logits"], np.float32), direct(x))
    assert answer["predictions"] == direct(x).argmax(1).tolist()
    everything = client.post(f"/v1/models/{mid}/predict", json={"inputs": digits.x_test.tolist()}).json()
    assert everything["predictions"] == direct(digits.x_test).argmax(1).tolist()
    for bad, fragment in (([[0.0] * 63], "dimension 1 is 63"), ([["a"] * 64], "must be numbers"),
                          ([[0.0] * 64, [0.0]], "rectangular"), ([], "inputs")):
        r = client.post(f"/v1/models/{mid}/predict", json={"inputs": bad})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_request" and r.json()["error"]["param"] == "inputs"
        assert fragment in r.json()["error"]["message"]
    assert client.post("/v1/models/mdl_nope/predict", json={"inputs": x.tolist()}).status_code == 404
    r = client.post(f"/v1/models/{mid}/predict", params={"precision": "int8"}, json={"inputs": x.tolist()})
    assert r.status_code == 404 and r.json()["error"]["param"] == "version"
    # /v1 names a model by id only
    by_name = client.post(f"/v1/models/{published['card']['name']}/predict", json={"inputs": x.tolist()})
    assert by_name.status_code == 404


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(service, published, direct, digits):
    """32 clients at once (dynamic batching is on by default): each answer is that client's rows."""
    mid = published["card"]["id"]
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []
    barrier = threading.Barrier(32)

    def client_thread(i: int) -> None:
        rows = digits.x_test[i * 3 : i * 3 + 1 + i % 3]  # 1, 2 or 3 rows
        with service.client() as c:
            barrier.wait()
            for _ in range(3):
                r = c.post(f"/v2/models/{mid}/infer", json=infer_body(rows, id=f"c{i}"))
                if r.status_code != 200 or r.json()["id"] != f"c{i}":
                    errors.append(r.text)
                    return
                results[i] = logits_of(r.json())

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 32
    for i, got in results.items():
        rows = digits.x_test[i * 3 : i * 3 + 1 + i % 3]
        # batched with others: the same numbers up to float32 summation order
        np.testing.assert_allclose(got, direct(rows), rtol=1e-5, atol=1e-5)

    metrics = {f.name: f for f in text_string_to_metric_families(httpx.get(service.base_url + "/metrics").text)}
    label = hashed_label(mid)  # without KDSERVE_METRICS_TOKEN, /metrics names a model by a hash of its id
    served = [s.value for s in metrics["kdserve_inference_requests"].samples
              if s.labels.get("model") == label and s.labels.get("protocol") == "v2" and s.labels.get("outcome") == "ok"
              and s.name.endswith("_total")]
    assert served and served[0] >= 96
    runs = [s for s in metrics["kdserve_inference_run_batch_size"].samples
            if s.labels.get("model") == label and s.name.endswith("_count")]
    assert runs and runs[0].value < served[0]  # fewer onnxruntime runs than requests: they were merged


def test_a_deleted_model_is_no_longer_served(client, published, digits):
    body = {**KD_JOB, **published["ids"], "training": {"epochs": 1}}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job
    mid = job["model_id"]
    assert client.post(f"/v2/models/{mid}/infer", json=infer_body(digits.x_test[:1])).status_code == 200
    assert client.delete(f"/v1/models/{mid}").status_code == 204
    r = client.post(f"/v2/models/{mid}/infer", json=infer_body(digits.x_test[:1]))
    assert r.status_code == 404 and json.loads(r.text)["error"].startswith("no model")


def test_the_classification_extension_answers_the_top_classes(client, published, direct, digits):
    """Triton's classification extension: an output requested with parameters {"classification":
    k} answers each row's k best classes as BYTES "score:index", best first."""
    mid, x = published["card"]["id"], digits.x_test[:3]
    body = infer_body(x, outputs=[{"name": "logits", "parameters": {"classification": 2}}])
    r = client.post(f"/v2/models/{mid}/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [3, 2]
    logits = direct(x)
    want = [int(i) for row in np.argsort(-logits, axis=1, kind="stable")[:, :2] for i in row]
    assert [int(cell.split(":")[1]) for cell in out["data"]] == want
    assert [float(cell.split(":")[0]) for cell in out["data"]] == pytest.approx(
        [float(logits[r, i]) for r in range(3) for i in want[2 * r:2 * r + 2]], rel=1e-5)
    for bad in (0, "2", True):
        body = infer_body(x, outputs=[{"name": "logits", "parameters": {"classification": bad}}])
        assert client.post(f"/v2/models/{mid}/infer", json=body).status_code == 400


def test_a_renamed_model_is_served_under_its_new_name(client, published, direct, digits):
    """PATCH /v1/models/{id} {"name"}: /v2/models/{name} answers at once, the old name does not
    (within this API process); names that are not URL-safe or look like ids are 422."""
    mid, x = published["card"]["id"], digits.x_test[:2]
    r = client.patch(f"/v1/models/{mid}", json={"name": "wine-classifier"})
    assert r.status_code == 200 and r.json()["name"] == "wine-classifier", r.text
    try:
        r = client.post("/v2/models/wine-classifier/infer", json=infer_body(x))
        assert r.status_code == 200 and r.json()["model_name"] == "wine-classifier", r.text
        np.testing.assert_array_equal(logits_of(r.json()), direct(x))
        assert client.post("/v2/models/digits-v2-student/infer", json=infer_body(x)).status_code == 404
        for bad in ({"name": "a b"}, {"name": "mdl_123"}, {"name": ""}, {"title": "x"}):
            r = client.patch(f"/v1/models/{mid}", json=bad)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
        assert client.patch("/v1/models/mdl_nope", json={"name": "x"}).status_code == 404
    finally:
        assert client.patch(f"/v1/models/{mid}", json={"name": "digits-v2-student"}).status_code == 200


def test_a_patch_transformer_student_is_published_and_served(service, client, published, digits, tmp_path):
    body = {**KD_JOB, **published["ids"], "training": {"epochs": 2}, "export": {"quantize": ["fp16"]},
            "student": {"architecture": "patch_transformer", "params": {"dim": 32, "depth": 1, "heads": 2}}}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job
    card = client.get(f"/v1/models/{job['model_id']}").json()
    assert card["artifacts"][0]["max_abs_diff"] <= 1e-4  # through the job's parity gate
    path = tmp_path / "pt.onnx"
    path.write_bytes(client.get(f"/v1/models/{card['id']}/download").content)
    x = digits.x_test[:7]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    r = client.post(f"/v2/models/{card['id']}/infer", json=infer_body(x, id="pt"))
    assert r.status_code == 200 and r.json()["id"] == "pt"
    np.testing.assert_array_equal(logits_of(r.json()), want)

    # A damaged file in the store (here the fp16 variant, never loaded yet) is a 503 with the reason,
    # on ready and on infer alike, not a 500; the fp32 version keeps serving.
    assert [a["precision"] for a in card["artifacts"]] == ["fp32", "fp16"]
    (service.data_dir / "blobs" / "models" / card["id"] / "model.fp16.onnx").write_bytes(b"not an onnx file")
    r = client.get(f"/v2/models/{card['id']}/versions/fp16/ready")
    assert r.status_code == 503 and "cannot be loaded" in r.json()["error"]
    r = client.post(f"/v2/models/{card['id']}/versions/fp16/infer", json=infer_body(x))
    assert r.status_code == 503 and "cannot be loaded" in r.json()["error"]
    r = client.post(f"/v1/models/{card['id']}/predict", params={"precision": "fp16"}, json={"inputs": x.tolist()})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert client.get(f"/v2/models/{card['id']}/ready").status_code == 200
