"""The blob store's interface, the same tests on both stores: the local folder and an S3 bucket
on a real S3-compatible server (moto's, over HTTP; see api_tests/s3server.py)."""

from __future__ import annotations

import hashlib
import os

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from api_tests.s3server import s3_store
from kdserve.service.settings import Settings
from kdserve.service.store.blobs import LocalBlobStore, make_blob_store
from kdserve.service.store.s3 import S3BlobStore

BAD_KEYS = ["", "/etc/passwd", "../outside", "a/../../outside", "a/./b", "a//b", "a/", "a\\b", "a\x00b"]


def test_bytes_round_trip(store):
    assert not store.exists("checkpoints/job_1/last.pt")
    store.put_bytes("checkpoints/job_1/last.pt", b"epoch 1")
    assert store.exists("checkpoints/job_1/last.pt")
    assert store.get_bytes("checkpoints/job_1/last.pt") == b"epoch 1"
    assert store.size("checkpoints/job_1/last.pt") == 7
    store.put_bytes("checkpoints/job_1/last.pt", b"epoch 2!")  # overwrite
    assert store.get_bytes("checkpoints/job_1/last.pt") == b"epoch 2!"


def test_missing_blobs(store):
    assert not store.exists("models/nope/model.onnx")
    with pytest.raises(FileNotFoundError):
        store.get_bytes("models/nope/model.onnx")
    with pytest.raises(FileNotFoundError):
        store.local_path("models/nope/model.onnx")
    with pytest.raises(FileNotFoundError):
        store.size("models/nope/model.onnx")
    store.delete_prefix("models/nope")  # nothing there: not an error


def test_put_file_copies_or_moves(store, tmp_path):
    src = tmp_path / "teacher.onnx"
    src.write_bytes(b"onnx bytes")
    store.put_file("teachers/tch_1/teacher.onnx", src)
    assert src.exists()  # copied
    upload = store.temp_path(".onnx")
    assert upload.parent == store.scratch_dir and upload.suffix == ".onnx"
    upload.write_bytes(b"streamed upload")
    store.put_file("teachers/tch_2/teacher.onnx", upload, move=True)
    assert not upload.exists()  # moved
    assert store.local_path("teachers/tch_1/teacher.onnx").read_bytes() == b"onnx bytes"
    assert store.local_path("teachers/tch_2/teacher.onnx").read_bytes() == b"streamed upload"
    assert list(store.scratch_dir.iterdir()) == []  # no temp file left behind


def test_delete_prefix_takes_the_folder_not_its_neighbours(store):
    for key in ("models/mdl_1/model.fp32.onnx", "models/mdl_1/tokenizer/vocab.txt", "models/mdl_10/model.fp32.onnx",
                "models/mdl_1.txt"):
        store.put_bytes(key, key.encode())
    cached = store.local_path("models/mdl_1/model.fp32.onnx")
    store.delete_prefix("models/mdl_1")
    assert not store.exists("models/mdl_1/model.fp32.onnx") and not store.exists("models/mdl_1/tokenizer/vocab.txt")
    assert store.exists("models/mdl_10/model.fp32.onnx") and store.exists("models/mdl_1.txt")
    assert not cached.exists()
    with pytest.raises(FileNotFoundError):
        store.local_path("models/mdl_1/model.fp32.onnx")
    store.put_bytes("cache/one_blob", b"x")
    store.delete_prefix("cache/one_blob")  # a prefix may name one blob
    assert not store.exists("cache/one_blob")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_escape_are_refused(store, tmp_path, key):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for call in (lambda: store.put_bytes(key, b"x"), lambda: store.put_file(key, src), lambda: store.get_bytes(key),
                 lambda: store.local_path(key), lambda: store.exists(key), lambda: store.size(key),
                 lambda: store.delete_prefix(key)):
        with pytest.raises(ValueError, match="escapes the store"):
            call()
    assert src.exists()


def test_a_20_mb_file_round_trips_intact_and_goes_to_s3_in_parts(store, request, tmp_path):
    data = os.urandom(20 * 1000 * 1000)
    src = store.temp_path()
    src.write_bytes(data)
    store.put_file("teachers/tch_big/teacher.pt", src, move=True)
    assert store.size("teachers/tch_big/teacher.pt") == len(data)
    path = store.local_path("teachers/tch_big/teacher.pt")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    if isinstance(store, S3BlobStore):  # it went up in parts: a multipart object's ETag says how many
        head = request.getfixturevalue("s3_server").client().head_object(Bucket=store.bucket,
                                                                          Key="deploy-a/teachers/tch_big/teacher.pt")
        assert head["ETag"].strip('"').endswith("-4")


def test_ping_succeeds_on_a_store_that_is_there(store):
    store.ping()


# -- S3 only: prefix, the local cache -------------------------------------------------------


@pytest.fixture()
def bucket(s3_server, aws_env):
    return s3_server.new_bucket()


def test_s3_keys_live_under_the_prefix(s3_server, bucket, tmp_path):
    store = s3_store(s3_server, bucket, tmp_path / "cache")
    store.put_bytes("datasets/ds_1/data.npz", b"npz")
    other = S3BlobStore(bucket, prefix="deploy-b/", cache_dir=tmp_path / "cache-b", endpoint_url=s3_server.url)
    other.put_bytes("datasets/ds_1/data.npz", b"other deployment")
    assert s3_server.keys(bucket) == ["deploy-a/datasets/ds_1/data.npz", "deploy-b/datasets/ds_1/data.npz"]
    store.delete_prefix("datasets")
    assert s3_server.keys(bucket) == ["deploy-b/datasets/ds_1/data.npz"]


def test_s3_cache_is_reused_and_follows_changes(s3_server, bucket, tmp_path):
    """Two machines on one bucket: each reads through its own cache, and sees the other's writes."""
    api = s3_store(s3_server, bucket, tmp_path / "api-cache")
    worker = s3_store(s3_server, bucket, tmp_path / "worker-cache")
    api.put_bytes("models/mdl_1/model.onnx", b"version 1")
    first = worker.local_path("models/mdl_1/model.onnx")
    assert first.read_bytes() == b"version 1" and first.is_relative_to(tmp_path / "worker-cache")
    inode = first.stat().st_ino
    again = worker.local_path("models/mdl_1/model.onnx")
    assert again == first and again.stat().st_ino == inode  # cached: not downloaded again

    api.put_bytes("models/mdl_1/model.onnx", b"version 2")  # same size: only the ETag tells
    second = worker.local_path("models/mdl_1/model.onnx")
    assert second.read_bytes() == b"version 2"
    assert not first.exists()  # the old version's copy is dropped

    second.write_bytes(b"torn")  # a damaged copy (wrong size) is fetched again
    assert worker.local_path("models/mdl_1/model.onnx").read_bytes() == b"version 2"

    api.delete_prefix("models/mdl_1")  # deleted on another machine: never served from the cache
    with pytest.raises(FileNotFoundError):
        worker.local_path("models/mdl_1/model.onnx")


def test_s3_cache_is_bounded_least_recently_used_first(s3_server, bucket, tmp_path):
    """Over cache_max_bytes, a download removes the copies used longest ago — never one used within
    the grace period — and a removed copy is simply fetched again."""
    store = s3_store(s3_server, bucket, tmp_path / "cache", cache_max_bytes=2500)
    for name in "abc":
        store.put_bytes(f"models/{name}.onnx", name.encode() * 1000)

    def age(name: str, seconds: float) -> None:  # as if last used `seconds` ago
        path = store.local_path(f"models/{name}.onnx")
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - seconds))

    age("a", 2000)
    age("b", 1000)
    assert sorted(p.name.split("~")[0] for p in store.cached_files()) == ["a.onnx", "b.onnx"]  # 2000 bytes: fits
    assert store.local_path("models/c.onnx").read_bytes() == b"c" * 1000  # 3000 > 2500: a goes, b fits
    assert sorted(p.name.split("~")[0] for p in store.cached_files()) == ["b.onnx", "c.onnx"]
    age("b", 0)  # used again just now: c is now the least recently used, but within the grace period
    age("a", 0)  # fetched again (a cache miss, not an error); nothing old enough to evict
    assert sorted(p.name.split("~")[0] for p in store.cached_files()) == ["a.onnx", "b.onnx", "c.onnx"]
    assert store.local_path("models/a.onnx").read_bytes() == b"a" * 1000

    unbounded = s3_store(s3_server, bucket, tmp_path / "cache-2")  # 0: no bound
    for name in "abc":
        age_path = unbounded.local_path(f"models/{name}.onnx")
        os.utime(age_path, (0, 0))
    unbounded.put_bytes("models/d.onnx", b"d" * 1000)
    unbounded.local_path("models/d.onnx")
    assert len(unbounded.cached_files()) == 4


def test_s3_missing_bucket_fails_ping(s3_server, aws_env, tmp_path):
    with pytest.raises(ClientError, match=r"\(404\) when calling the HeadBucket operation"):
        S3BlobStore("kdserve-no-such-bucket", cache_dir=tmp_path, endpoint_url=s3_server.url).ping()


def test_settings_choose_the_store(tmp_path, s3_server, aws_env):
    assert isinstance(make_blob_store(Settings(data_dir=tmp_path)), LocalBlobStore)
    s3 = make_blob_store(Settings(data_dir=tmp_path, blob_store="s3", s3_bucket="b", s3_prefix="p",
                                  s3_endpoint_url=s3_server.url))
    assert isinstance(s3, S3BlobStore) and s3.bucket == "b" and s3.prefix == "p/"
    assert s3.cache_dir == (tmp_path / "blob_cache").resolve() and s3.cache_max_bytes == 20 * 1024**3
    with pytest.raises(ValidationError, match="KDSERVE_S3_BUCKET"):
        Settings(data_dir=tmp_path, blob_store="s3")
