"""S3BlobStore: blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph, …) for deployments whose
API and workers run on several machines.

Same interface as LocalBlobStore. What differs, and why:

- Writes: one PUT (small) or a multipart upload (big, boto3's upload_file splits it). Either way
  S3 makes the object visible only once it is complete, which is the store's atomicity promise.
- local_path(): torch and onnxruntime need real files, so an object is downloaded into a local
  cache (KDSERVE_S3_CACHE_DIR) under a name that carries its ETag. Every call asks the bucket for
  the current ETag and size (one HEAD), so a replaced object is downloaded again and a deleted one
  is FileNotFoundError, never a stale copy. The download is pinned to that ETag (If-Match) and
  lands with a rename, so a reader never sees half a file. Old versions of a key are removed when
  a newer one is cached. The cache is bounded (KDSERVE_S3_CACHE_MAX_BYTES): after each download,
  the least recently used copies go until it fits, except copies used in the last
  CACHE_GRACE_S — a path just handed to a caller is not pulled from under it. A removed copy is
  only a cache miss: the next local_path() downloads it again. (Files already open, a loaded
  onnxruntime session or teacher, are not disturbed by the unlink.)
- Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile,
  an instance role); nothing of them is in kdserve's settings.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import threading
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from kdserve.service.store.keys import check_key, temp_file

MiB = 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING


class S3BlobStore:
    CACHE_GRACE_S = 600.0  # a copy used more recently than this is never evicted

    def __init__(self, bucket: str, *, cache_dir: Path, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, multipart_threshold: int = 16 * MiB, multipart_chunksize: int = 16 * MiB,
                 cache_max_bytes: int = 0):
        """cache_max_bytes: bound on the local copies (0: none)."""
        self.bucket = bucket
        self.cache_max_bytes = cache_max_bytes
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url, self.region = endpoint_url, region
        self.cache_dir = Path(cache_dir).resolve()
        self.scratch_dir = self.cache_dir / ".tmp"
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize)
        self._client, self._client_pid = None, None
        self._client_lock = threading.Lock()

    @property
    def client(self):
        """This process's boto3 client. One client serves every thread (clients are thread-safe),
        but its connection pool must not cross a fork: Celery's prefork pool forks after the store
        may have been made, so a child makes its own."""
        if self._client_pid != os.getpid():
            with self._client_lock:
                if self._client_pid != os.getpid():
                    # path-style addressing for a custom endpoint (MinIO, moto): `http://host:9000/bucket/key`
                    # needs no wildcard DNS; checksums only where S3 requires them, which every clone accepts
                    config = Config(s3={"addressing_style": "path"} if self.endpoint_url else {},
                                    request_checksum_calculation="when_required",
                                    response_checksum_validation="when_required", retries={"mode": "standard"})
                    self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url,
                                                                  region_name=self.region, config=config)
                    self._client_pid = os.getpid()
        return self._client

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _head(self, key: str) -> dict:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise

    # -- writes ------------------------------------------------------------------------------

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh local file (uploads stream into it) that put_file(move=True) uploads and removes."""
        return temp_file(self.scratch_dir, suffix)

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        name = self._name(key)
        self.client.upload_file(str(src), self.bucket, name, Config=self.transfer)
        if move:
            Path(src).unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)

    # -- reads -------------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return self._head(key)["ContentLength"]

    def fetch_url(self, key: str, expires_s: int) -> str | None:
        """A presigned GET URL for one object, valid expires_s: lets a process without S3
        credentials (the prober, which runs untrusted teachers) read just this file."""
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._name(key)},
                                                  ExpiresIn=int(expires_s))

    def local_path(self, key: str) -> Path:
        """A local file with the blob's current content: the cached copy when its ETag and size
        match the bucket's, else a fresh download. The API's download route serves this file
        (Range, ETag), so S3 deployments keep the same download behaviour."""
        for _ in range(3):  # the object may be replaced between the HEAD and the GET
            head = self._head(key)
            etag, size = head["ETag"], head["ContentLength"]
            path = self.cache_dir / f"{key}~{_tag(etag)}"
            if path.is_file() and path.stat().st_size == size:
                _touch(path)  # its modification time is its last use (the eviction order)
                return path
            if self._download(key, etag, size, path):
                self._drop_other_versions(key, path)
                self._evict_over_budget()
                return path
        raise RuntimeError(f"blob {key!r} keeps changing while it is downloaded")

    def _download(self, key: str, etag: str, size: int, path: Path) -> bool:
        """Fetch exactly the version `etag` into `path` (atomic); False when it was replaced."""
        tmp = self.temp_path()
        try:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self._name(key), IfMatch=etag)["Body"]
            except ClientError as exc:
                if _missing(exc):
                    raise FileNotFoundError(key) from None
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                    return False
                raise
            with body, open(tmp, "wb") as f:
                for chunk in body.iter_chunks(MiB):
                    f.write(chunk)
            if tmp.stat().st_size != size:
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _drop_other_versions(self, key: str, keep: Path) -> None:
        for old in keep.parent.glob(f"{glob.escape(Path(key).name)}~*"):
            if old != keep:
                old.unlink(missing_ok=True)

    def cached_files(self) -> list[Path]:
        """The local copies (not the downloads in progress under .tmp)."""
        return [p for p in self.cache_dir.rglob("*~*") if p.is_file() and self.scratch_dir not in p.parents]

    def _evict_over_budget(self) -> None:
        """Remove the least recently used copies until the cache fits cache_max_bytes, sparing
        those used within CACHE_GRACE_S (the cache may stay over budget until they age)."""
        if not self.cache_max_bytes:
            return
        entries = []
        for path in self.cached_files():
            try:
                st = path.stat()
            except FileNotFoundError:  # removed meanwhile (another thread or process)
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        now = time.time()
        for mtime, size, path in sorted(entries):
            if total <= self.cache_max_bytes or now - mtime < self.CACHE_GRACE_S:
                break  # oldest first: the rest are newer still
            path.unlink(missing_ok=True)
            total -= size

    # -- deletes and health ------------------------------------------------------------------

    def delete_prefix(self, prefix: str) -> None:
        """The blob `prefix` and every blob under `prefix/` (not `prefix2/…`), and their cached copies."""
        name = self._name(prefix)
        names = [name]
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=name + "/"):
            names += [obj["Key"] for obj in page.get("Contents", [])]
        self._delete_names(names)
        cached = self.cache_dir / prefix
        shutil.rmtree(cached, ignore_errors=True)
        for old in cached.parent.glob(f"{glob.escape(cached.name)}~*"):
            old.unlink(missing_ok=True)

    def _delete_names(self, names: list[str]) -> None:
        for i in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            result = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": n} for n in names[i:i + 1000]], "Quiet": True})
            if result.get("Errors"):
                first = result["Errors"][0]
                raise OSError(f"S3 refused to delete {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}")

    def delete_older_than(self, prefix: str, age_s: float) -> int:
        """Remove the objects under `prefix/` last modified more than `age_s` seconds ago (orphans:
        a staged probe whose request died); returns how many went."""
        cutoff = time.time() - age_s
        names = [obj["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
                     Bucket=self.bucket, Prefix=self._name(prefix) + "/")
                 for obj in page.get("Contents", []) if obj["LastModified"].timestamp() < cutoff]
        self._delete_names(names)
        return len(names)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:  # evicted by another process just now: the caller's next open fails
        pass                    # like any missing blob's, and its next local_path() fetches it again


def _tag(etag: str) -> str:
    """An ETag as a file-name suffix (`"abc-2"` → `abc-2`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", etag.strip('"'))[:128]
