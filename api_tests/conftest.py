"""Shared fixtures: the digits data and teacher files, running services, and `unchanged`.

The services are real: `kdserve up` (uvicorn + a Celery worker process) against the machine's
Redis (127.0.0.1:6379, a fresh queue name per service) and SQLite, unless a test asks otherwise.
The unit tests (unit/) use none of the services: see unit/conftest.py.
"""

from __future__ import annotations

import pytest

from api_tests.harness import MACHINE_REDIS, Service, postgres_database, stored_files
from testkit import digits as dg


@pytest.fixture(scope="session")
def digits() -> dg.Digits:
    return dg.load()


@pytest.fixture(scope="session")
def teacher_model(digits):
    return dg.train_teacher(digits)


@pytest.fixture(scope="session")
def files(tmp_path_factory, digits, teacher_model):
    d = tmp_path_factory.mktemp("uploads")
    return {
        "torchscript": dg.save_torchscript(teacher_model, d / "teacher.pt"),
        "onnx": dg.save_onnx(teacher_model, d / "teacher.onnx"),
        "npz": dg.save_npz(digits.x_train, digits.y_train, d / "digits.npz"),
        "csv": dg.save_csv(digits.x_train, digits.y_train, d / "digits.csv"),
    }


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """One service for the session: machine Redis, SQLite, local blobs; 1 GiB upload cap, 256 MiB unzip cap."""
    limits = {"KDSERVE_MAX_UPLOAD_BYTES": str(1024**3), "KDSERVE_MAX_UNZIPPED_BYTES": str(256 * 1024**2)}
    with Service(tmp_path_factory.mktemp("svc"), redis_url=MACHINE_REDIS, extra_env=limits) as svc:
        yield svc


@pytest.fixture()
def postgres_url():
    """A fresh PostgreSQL database of its own (SQLAlchemy URL), dropped afterwards."""
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server over real HTTP, for the S3 blob store's tests."""
    from api_tests.s3server import MotoServer  # boto3, only for the tests that use it

    with MotoServer(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture()
def client(service):
    with service.client() as c:
        yield c


@pytest.fixture()
def unchanged(service, client):
    """Asserts the test left no record and no file behind and the server is still healthy."""
    before_files = stored_files(service)
    before = {r: client.get(f"/v1/{r}", params={"limit": 100}).json()["data"] for r in ("teachers", "datasets", "jobs")}
    yield
    assert stored_files(service) == before_files
    for r, rows in before.items():
        assert client.get(f"/v1/{r}", params={"limit": 100}).json()["data"] == rows
    assert client.get("/healthz").json() == {"status": "ok"}
