"""A real S3-compatible server for the tests: moto's standalone server (moto[server]) in a child
process on a free port. boto3 talks to it over HTTP exactly as it would to AWS or MinIO, so the
blob store is tested through signing, multipart uploads, conditional GETs and listings — nothing
is mocked inside the process under test."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from kdserve.service.store.s3 import MiB, S3BlobStore
from testkit.service import free_port

# moto accepts any credentials; boto3 only needs some to sign with (its usual environment chain)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kdserve-test", "AWS_SECRET_ACCESS_KEY": "kdserve-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    def __init__(self, log: Path):
        self.log = Path(log)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MotoServer":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"moto server did not answer:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def new_bucket(self) -> str:
        name = f"kdserve-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def service_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """KDSERVE_* and AWS_* variables that point a kdserve at this server's `bucket`."""
        return {"KDSERVE_BLOB_STORE": "s3", "KDSERVE_S3_BUCKET": bucket, "KDSERVE_S3_PREFIX": prefix,
                "KDSERVE_S3_ENDPOINT_URL": self.url, **CREDENTIALS}


def s3_store(server: MotoServer, bucket: str, cache_dir, **kwargs) -> S3BlobStore:
    """An S3BlobStore on `server`'s `bucket` under the prefix deploy-a."""
    # 5 MiB parts (S3's smallest) so a 20 MB file is a four-part multipart upload
    return S3BlobStore(bucket, prefix="deploy-a", cache_dir=cache_dir, endpoint_url=server.url,
                       multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, **kwargs)
