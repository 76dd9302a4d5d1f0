"""Property-based fuzzing of every /v1 and /v2 operation with schemathesis (its CLI, against a
running service), generated from the service's own /openapi.json: no 5xx, every response matches
its documented schema and status codes. The service is populated first — a teacher, a dataset, a
finished job and the model it published — so the fuzzer's requests reach real resources, not only
404s; and binary-tensor requests (the Open Inference Protocol's binary extension, which the
OpenAPI document cannot describe) are fuzzed with hypothesis against the served model. Bounded:
KDSERVE_FUZZ_EXAMPLES examples per operation (default 15) and fixed seeds, so a CI run is repeatable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api_tests.harness import Service, wait_job

EXAMPLES = os.environ.get("KDSERVE_FUZZ_EXAMPLES", "15")


@pytest.fixture(scope="module")
def fresh_service(tmp_path_factory, files):
    """A service of its own (the fuzzer's stateful phase follows ids it finds, so it must not depend
    on, or disturb, what other test modules left in the shared one), populated: a teacher, a
    dataset, a succeeded job and its model."""
    with Service(tmp_path_factory.mktemp("fuzz")) as svc, svc.client() as c:
        with open(files["torchscript"], "rb") as f:
            teacher = c.post("/v1/teachers", files={"file": ("teacher.pt", f)}).json()
        with open(files["npz"], "rb") as f:
            dataset = c.post("/v1/datasets", files={"file": ("digits.npz", f)}).json()
        job = c.post("/v1/jobs", json={"teacher_id": teacher["id"], "dataset_id": dataset["id"],
                                       "student": {"architecture": "mlp", "params": {"hidden_sizes": [16]}},
                                       "method": {"name": "kd"}, "training": {"epochs": 2}}).json()
        done = wait_job(c, job["id"])
        assert done["status"] == "succeeded", done
        svc.model_id = done["model_id"]
        yield svc


def test_schemathesis_finds_nothing(fresh_service, tmp_path):
    service = fresh_service
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    report = tmp_path / "report.json"
    cmd = [st, "run", service.base_url + "/openapi.json", "-H", f"Authorization: Bearer {service.api_key}",
           "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
           "--max-examples", EXAMPLES, "--seed", "1", "--include-path-regex", "^/v[12]",
           "--request-timeout", "60", "--report", "ndjson", "--report-ndjson-path", str(report), "--no-color"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    print(out.stdout[-6000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout.lower()
    assert report.stat().st_size > 0
    json.loads(report.read_text().splitlines()[0])  # the report is well-formed


DATATYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "BF16", "X"]


def binary_requests():
    """A JSON header with one or two inputs (random names, shapes, datatypes, binary sizes), a
    declared header length that may lie, and a random binary tail."""
    from hypothesis import strategies as st

    dims = st.lists(st.one_of(st.integers(-2, 70), st.just(2**40)), max_size=3)
    tensor = st.fixed_dictionaries({"name": st.sampled_from(["input", "x", ""]), "shape": dims,
                                    "datatype": st.sampled_from(DATATYPES),
                                    "parameters": st.fixed_dictionaries({"binary_data_size": st.one_of(
                                        st.integers(-1, 20000), st.just(2**62), st.text(max_size=3))})})
    header = st.fixed_dictionaries({"inputs": st.lists(tensor, min_size=0, max_size=2)},
                                   optional={"parameters": st.fixed_dictionaries(
                                       {"binary_data_output": st.booleans()})})
    return st.tuples(header, st.binary(max_size=20000), st.integers(-5, 5), st.booleans())


def test_binary_tensor_requests_never_answer_5xx(fresh_service):
    import httpx
    from hypothesis import HealthCheck, given, settings

    route = f"/v2/models/{fresh_service.model_id}/infer"

    @settings(max_examples=int(EXAMPLES) * 10, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(binary_requests())
    def check(case):
        header, tail, skew, with_key = case
        head = json.dumps(header).encode()
        headers = {"Inference-Header-Content-Length": str(len(head) + skew), "Content-Type": "application/octet-stream"}
        if with_key:
            headers["Authorization"] = f"Bearer {fresh_service.api_key}"
        r = client.post(route, content=head + tail, headers=headers)
        assert r.status_code < 500, (r.status_code, r.text[:500], header)
        assert r.status_code in (200, 400, 401, 404, 413, 422, 429), (r.status_code, r.text[:500])

    with httpx.Client(base_url=fresh_service.base_url, timeout=60) as client:
        check()
        sane = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 256}}]}).encode()
        r = client.post(route, content=sane + bytes(256), headers={
            "Inference-Header-Content-Length": str(len(sane)), "Authorization": f"Bearer {fresh_service.api_key}"})
        assert r.status_code == 200, r.text  # the fuzzer's target does serve well-formed requests
