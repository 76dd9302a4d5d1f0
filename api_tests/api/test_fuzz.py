"""Property-based fuzzing of every /v1 and /v2 operation with schemathesis (its CLI, against the
running session service), generated from the service's own /openapi.json: no 5xx, every response
matches its documented schema and status codes. Bounded: KDSERVE_FUZZ_EXAMPLES examples per
operation (default 15) and a fixed seed, so a CI run is repeatable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api_tests.harness import Service

EXAMPLES = os.environ.get("KDSERVE_FUZZ_EXAMPLES", "15")


@pytest.fixture(scope="module")
def fresh_service(tmp_path_factory):
    """A service of its own: the fuzzer's stateful phase follows ids it finds, so it must not
    depend on (or disturb) what other test modules left in the shared one."""
    with Service(tmp_path_factory.mktemp("fuzz")) as svc:
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
