"""The API's request limits against a running `kdserve up`, one attack per test, each built here:
a huge body without a key (401, body unread), bodies over KDSERVE_MAX_REQUEST_BYTES with and
without Content-Length (413), too many rows (413), a zip of 300 000 members (413 from its end
record), multipart forms of 2000 fields (413), binary /v2 requests without a key (401), and a flood
of slow teacher uploads while another tenant's GETs still answer. Each answer has the error shape,
nothing is stored or left behind, and the service goes on answering. The parts alone:
api_tests/unit/test_api_limit_parts.py."""

from __future__ import annotations

import json
import sys
import threading
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from api_tests.harness import KD_JOB, Service, assert_error, upload_dataset, upload_teacher, wait_job, wait_until
from testkit.hostile import many_members_zip, send

MiB = 1024**2
CAP = MiB  # this module's KDSERVE_MAX_REQUEST_BYTES
ROWS = 100  # its KDSERVE_MAX_REQUEST_ROWS
JSON_ROUTES = ["/v1/jobs", "/v1/models/mdl_none/predict", "/v2/models/mdl_none/infer"]

# The probes of this module's service run through this interpreter: the real one, but while the
# gate file exists the teacher jail's runner (`-m kdserve.worker.teacher_host`) waits for the gate to go
# (its folder is bound read-only into the jail), so a test can hold probes in flight for as long as
# it needs (a teacher whose probe is slow). The test counts the waiting runners from /proc.
SLOW_PYTHON = """#!/bin/sh
case "$*" in *kdserve.worker.teacher_host*)
  while [ -e "{gate}" ]; do sleep 0.05; done;;
esac
exec {python} "$@"
"""


def waiting_runners(wrapper: Path) -> int:
    """Jailed probe runners still inside the slow wrapper (its shell loop), seen from the host."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if str(wrapper).encode() in args and b"kdserve.worker.teacher_host" in args and not args[0].endswith(b"bwrap"):
            count += 1
    return count


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """This module's own service (it replaces the session's): small request limits, two probes at
    once (one per tenant), probes held while the gate file exists."""
    root = tmp_path_factory.mktemp("limits")
    python = root / "python"
    python.write_text(SLOW_PYTHON.format(gate=root / "gate", python=sys.executable))
    python.chmod(0o755)
    env = {"KDSERVE_MAX_REQUEST_BYTES": str(CAP), "KDSERVE_MAX_REQUEST_ROWS": str(ROWS),
           "KDSERVE_PROBE_MAX_CONCURRENT": "2", "KDSERVE_PROBE_MAX_PER_TENANT": "1", "KDSERVE_PYTHON": str(python),
           "KDSERVE_MAX_UPLOAD_BYTES": str(256 * MiB),
           "KDSERVE_TENANT_MAX_UPLOADS": "100"}  # the probe limiter's test floods uploads: no upload-slot 429s
    with Service(root / "svc", extra_env=env) as svc:
        svc.gate = root / "gate"
        yield svc


@pytest.fixture(scope="module")
def model(service, files):
    """A real digits student, distilled here (a few epochs)."""
    with service.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"],
               "dataset_id": upload_dataset(c, files["npz"])["id"]}
        job = c.post("/v1/jobs", json={**KD_JOB, **ids, "training": {**KD_JOB["training"], "epochs": 3}})
        assert job.status_code == 202, job.text
        done = wait_job(c, job.json()["id"])
        assert done["status"] == "succeeded", done
        return done["model_id"]


def error_of(path: str, answer: dict) -> str:
    """The message of an error answer, checking its shape: /v1's object or /v2's string."""
    if path.startswith("/v2"):
        assert set(answer) == {"error"} and isinstance(answer["error"], str), answer
        return answer["error"]
    assert answer["error"]["code"] and answer["error"]["message"], answer
    return answer["error"]["message"]


# ---- auth before body, and the body cap ------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", JSON_ROUTES)
def test_a_huge_body_without_a_key_is_refused_unread(service, client, unchanged, route, chunked):
    """512 MiB offered without a key (or with a wrong one): 401 while the client is still sending,
    after a few MiB at most, the socket buffers; no server that read the body answers before it
    ends, and one that checked its size first would say 413."""
    headers = {} if chunked else {"Authorization": "Bearer kd_not-a-key"}
    status, sent, answer = send(service, route, headers, 512 * MiB, chunked)
    assert status == 401 and "API key" in error_of(route, answer)
    assert sent < 64 * MiB
    assert client.get("/v1/jobs").status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", JSON_ROUTES)
def test_a_body_over_the_cap_is_413(service, client, unchanged, route, chunked):
    """With a key: 413 on Content-Length before any of it is read (the message quotes the length),
    or, chunked, once the bytes read pass the cap (1 MiB here; a job spec's is 256 KiB)."""
    headers = {"Authorization": f"Bearer {service.api_key}"}
    status, sent, answer = send(service, route, headers, 64 * MiB, chunked)
    message = error_of(route, answer)
    assert status == 413, answer
    assert (f"more than {256 * 1024 if route == '/v1/jobs' else CAP} bytes" in message) if chunked \
        else f"({64 * MiB} bytes)" in message
    if not route.startswith("/v2"):
        assert answer["error"]["code"] == "payload_too_large"
    assert sent < 64 * MiB
    assert client.get("/healthz").json() == {"status": "ok"}


def binary_request(rows: int, width: int = 64) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "shape": [rows, width], "datatype": "FP32",
                                     "parameters": {"binary_data_size": rows * width * 4}}]}).encode()
    return header + np.zeros((rows, width), "<f4").tobytes(), {
        "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def test_binary_infer_without_a_key_is_401(service, client, unchanged):
    """The binary tensor extension: nothing of the body is looked at before the key, so a body that
    does not add up is a 401 without one, a 400 with one."""
    valid, headers = binary_request(4)
    broken = {**headers, "Inference-Header-Content-Length": str(10 * len(valid))}
    with service.client(api_key=None) as anonymous, service.client(api_key="kd_not-a-key") as wrong:
        for c in (anonymous, wrong):
            for body, h in ((valid, headers), (b"\xff" * 1000, broken)):
                r = c.post("/v2/models/mdl_none/infer", content=body, headers=h)
                assert r.status_code == 401 and "API key" in error_of("/v2", r.json())
    r = client.post("/v2/models/mdl_none/infer", content=b"\xff" * 1000, headers=broken)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


# ---- rows per request, and large bodies parsed in a child process ------------------------------------


def test_too_many_rows(service, client, model, digits):
    x = digits.x_test[:ROWS + 1].tolist()
    r = client.post(f"/v1/models/{model}/predict", json={"inputs": x})
    assert_error(r, 413, "payload_too_large", "inputs")
    assert f"{ROWS + 1} rows" in r.json()["error"]["message"]
    r = client.post(f"/v2/models/{model}/infer", json={"inputs": [
        {"name": "input", "shape": [ROWS + 1, 64], "datatype": "FP32", "data": x}]})
    assert r.status_code == 413 and "KDSERVE_MAX_REQUEST_ROWS" in r.json()["error"]
    body, headers = binary_request(ROWS + 1)
    r = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == 413 and "KDSERVE_MAX_REQUEST_ROWS" in r.json()["error"]
    body, headers = binary_request(ROWS)
    r = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"][0] == ROWS


def test_a_large_body_answers_what_small_ones_do(service, client, model, digits):
    """ROWS samples with long decimals (over 64 KiB of JSON: parsed in a child process) give the
    logits that the same samples give in requests of ten rows (parsed on the event loop)."""
    rng = np.random.default_rng(0)
    x = (digits.x_test[:ROWS] + rng.uniform(0, 1e-6, (ROWS, 64))).tolist()
    assert len(json.dumps({"inputs": x})) > 64 * 1024
    large = client.post(f"/v1/models/{model}/predict", json={"inputs": x})
    small = [client.post(f"/v1/models/{model}/predict", json={"inputs": x[i:i + 10]}) for i in range(0, ROWS, 10)]
    assert large.status_code == 200 and all(r.status_code == 200 for r in small)
    np.testing.assert_allclose(large.json()["logits"], sum((r.json()["logits"] for r in small), []), rtol=1e-5)
    v2 = client.post(f"/v2/models/{model}/infer", json={"inputs": [
        {"name": "input", "shape": [ROWS, 64], "datatype": "FP32", "data": x}]})
    np.testing.assert_allclose(np.reshape(v2.json()["outputs"][0]["data"], (ROWS, -1)), large.json()["logits"],
                               rtol=1e-5)
    ragged = client.post(f"/v1/models/{model}/predict", json={"inputs": x[:-1] + [x[-1][:3]]})
    assert_error(ragged, 422, "invalid_request", "inputs")


# ---- archives and forms ------------------------------------------------------------------------------


def test_a_zip_of_300k_members_is_refused_from_its_end_record(service, client, unchanged, tmp_path):
    path = many_members_zip(tmp_path / "many.npz", 300_000)
    with open(path, "rb") as f:
        r = client.post("/v1/datasets", files={"file": ("many.npz", f)}, timeout=60)
    assert_error(r, 413, "payload_too_large", "file")
    assert "declares 300000 members" in r.json()["error"]["message"]
    assert not list((service.data_dir / "blobs" / ".tmp").iterdir())


def test_a_zip_whose_end_record_lies_is_refused_too(service, client, unchanged, tmp_path):
    path = many_members_zip(tmp_path / "liar.npz", 20_000, declared=3)
    assert len(zipfile.ZipFile(path).infolist()) == 20_000  # what zipfile would have listed
    for route in ("/v1/datasets", "/v1/teachers"):
        with open(path, "rb") as f:
            r = client.post(route, files={"file": ("liar.npz", f)})
        assert_error(r, 413, "payload_too_large", "file")
        assert "more than 10000 members" in r.json()["error"]["message"]


def form(fields: list[tuple[str, bytes]], file: bytes = b"x,y\n1,2\n") -> tuple[bytes, dict[str, str]]:
    boundary = "kdlimits"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
             for name, value in fields]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n'
                 "Content-Type: text/csv\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize("fields,what", [
    ([(f"f{i}", b"v" * 60_000) for i in range(2000)], "fields are over"),  # 120 MB that 2000 fields once held
    ([(f"f{i}", b"v" * 60_000) for i in range(10)], "fields are over"),  # each under 64 KiB, 600 KB together
    ([(f"f{i}", b"ok") for i in range(2000)], "more than 32 parts"),
], ids=["2000-fields-of-60-KB", "10-fields-of-60-KB", "2000-small-fields"])
def test_multipart_fields_are_bounded(service, client, unchanged, fields, what):
    body, headers = form(fields)
    for route in ("/v1/datasets", "/v1/teachers"):
        r = client.post(route, content=body, headers=headers)
        assert_error(r, 413, "payload_too_large")
        assert what in r.json()["error"]["message"]
    assert not list((service.data_dir / "blobs" / ".tmp").iterdir())


def test_multipart_part_headers_are_bounded(service, client, unchanged):
    body, headers = form([])
    body = body.replace(b"Content-Type: text/csv", b"\r\n".join([b"X-Pad: " + b"p" * 4000] * 3))
    r = client.post("/v1/datasets", content=body, headers=headers)
    assert_error(r, 413, "payload_too_large")
    assert "bytes of headers" in r.json()["error"]["message"]


# ---- the probe limiter -------------------------------------------------------------------------------


def test_slow_teacher_uploads_cannot_block_the_api(service, client, files):
    """Two probes held in flight (the limits here: two at once, one per tenant): a second upload of
    the same tenant is a 429, forty more of another tenant are 503s, all answered at once, while a
    fourth tenant's GETs answer. Released, the two held uploads are created; nothing else is."""
    keys = {t: service.create_key(t) for t in ("a", "b", "c", "d")}
    teacher = files["onnx"].read_bytes()
    results: dict[str, list[httpx.Response]] = {t: [] for t in keys}

    def upload(tenant: str) -> None:
        with service.client(api_key=keys[tenant]) as c:
            results[tenant].append(c.post("/v1/teachers", files={"file": ("t.onnx", teacher)}))

    def started() -> int:
        return waiting_runners(service.gate.parent / "python")

    service.gate.touch()
    held = []
    try:
        for tenant in ("a", "b"):
            held.append(threading.Thread(target=upload, args=(tenant,)))
            held[-1].start()
            wait_until(lambda n=len(held): started() >= n, 60, f"{len(held)} probe(s) in flight", 0.05)
        upload("a")
        flood = [threading.Thread(target=upload, args=("c",)) for _ in range(40)]
        for t in flood:
            t.start()
        with service.client(api_key=keys["d"], timeout=30) as d:
            assert d.get("/v1/jobs").status_code == 200 and d.get("/v1/teachers").json()["data"] == []
        for t in flood:
            t.join(timeout=60)
        assert [r.status_code for r in results["a"]] == [429]
        assert_error(results["a"][0], 429, "rate_limited")
        assert [r.status_code for r in results["c"]] == [503] * 40
        assert_error(results["c"][0], 503, "unavailable")
        assert started() == 2  # the refused uploads never started a probe
    finally:
        service.gate.unlink(missing_ok=True)
        for t in held:
            t.join(timeout=120)
    assert [r.status_code for r in results["a"]] == [429, 201] and [r.status_code for r in results["b"]] == [201]
    with service.client(api_key=keys["c"]) as c:
        assert c.get("/v1/teachers").json()["data"] == []
    assert not list((service.data_dir / "blobs" / ".tmp").iterdir())
