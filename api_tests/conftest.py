"""Shared fixtures: the digits data and teacher files, and running services.

The services are real: `kdserve up` (uvicorn + a Celery worker process) against the machine's
Redis (127.0.0.1:6379, a fresh queue name per service) and SQLite, unless a test asks otherwise.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import psycopg
import pytest

from api_tests import digits as dg
from api_tests.harness import Service

MACHINE_REDIS = os.environ.get("KDSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN_URL = os.environ.get("KDSERVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


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


@contextmanager
def postgres_database():
    """A fresh PostgreSQL database (SQLAlchemy URL) for the block, dropped afterwards."""
    name = f"kdserve_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
