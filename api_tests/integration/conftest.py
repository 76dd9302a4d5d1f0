"""The blob store fixtures of the S3 and sweep tests: the same tests run on the local folder and on
an S3 bucket of moto's server (the session's s3_server, api_tests/conftest.py)."""

from __future__ import annotations

import pytest

from api_tests.s3server import CREDENTIALS, s3_store
from kdserve.service.store.blobs import LocalBlobStore


@pytest.fixture()
def aws_env(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    request.getfixturevalue("aws_env")
    server = request.getfixturevalue("s3_server")
    return s3_store(server, server.new_bucket(), tmp_path / "cache")
