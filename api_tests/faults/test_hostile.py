"""Hostile input bounces off: path-escaping and linked zip members, a zip bomb, a 3 GB stream
against the 1 GB cap (with and without Content-Length), absurd JSON numbers, NaN, wrong content
types. Each gets its documented 4xx, no file is left behind and the server stays healthy."""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
import pytest

from api_tests.harness import KD_JOB, assert_error, post_file, raw_upload

GiB = 1024**3


def zip_bytes(members: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("route", ["/v1/teachers", "/v1/datasets"])
@pytest.mark.parametrize("member", ["../../evil.npy", "/abs/x.npy", "a/../../b.npy"])
def test_zip_members_escaping_the_archive(client, unchanged, route, member):
    content = zip_bytes({"x.npy": npy(np.zeros((4, 2), np.float32)), member: b"boom"})
    assert_error(post_file(client, route, "d.npz", content), 422, "unsafe_file", "file")


def test_zip_with_a_symlink(client, unchanged):
    content = zip_bytes({"x.npy": npy(np.zeros((4, 2), np.float32))}, link="y.npy")
    assert_error(post_file(client, "/v1/datasets", "d.npz", content), 422, "unsafe_file", "file")


def test_zip_bomb(client, unchanged, tmp_path):
    """512 MiB of zeros that deflate to half a megabyte, against a 256 MiB unpack limit."""
    path = tmp_path / "bomb.npz"
    chunk = b"\0" * (1 << 24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w", force_zip64=True) as f:
        for _ in range(32):
            f.write(chunk)
    assert path.stat().st_size < 2 * 1024**2
    r = post_file(client, "/v1/datasets", "bomb.npz", path.read_bytes())
    assert_error(r, 413, "payload_too_large", "file")
    assert "unpacks to" in r.json()["error"]["message"]


@pytest.mark.parametrize("chunked", [False, True])
def test_three_gigabytes_against_a_one_gigabyte_cap(service, client, unchanged, chunked):
    status, sent = raw_upload(service, 3 * GiB, chunked)
    assert status == 413
    if chunked:  # the server reads up to the cap, then refuses
        assert GiB <= sent < 1.2 * GiB
    else:  # Content-Length says 3 GB: refused before the body is read
        assert sent < 64 * 1024**2
    assert not list((service.data_dir / "blobs" / ".tmp").iterdir())


@pytest.mark.parametrize("raw", [
    b'{"dataset_id": "ds_x", "student": {"architecture": "mlp"}, "method": {"name": "kd"}, "training": {"epochs": 1e400}}',
    b'{"dataset_id": "ds_x", "student": {"architecture": "mlp"}, "method": {"name": "kd"}, "training": {"epochs": '
    + b"9" * 5000 + b"}}",
    b'{"dataset_id": "ds_x", "student": {"architecture": "mlp"}, "method": {"name": "kd"}, '
    b'"training": {"learning_rate": NaN}}',
    b'{"dataset_id": "ds_x", "student": {"architecture": "mlp"}, "method": {"name": "kd", "params": '
    b'{"temperature": Infinity}}}',
    b'[1, 2, 3]',
    b'"just a string"',
])
def test_absurd_json(client, unchanged, raw):
    r = client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_wrong_content_types(client, unchanged):
    r = client.post("/v1/jobs", content=b"dataset_id=ds_x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.post("/v1/teachers", json={"file": "AAAA"})
    assert_error(r, 415, "unsupported_media_type")
    r = client.post("/v1/datasets", content=b"x,y\n1,2\n", headers={"Content-Type": "text/csv"})
    assert_error(r, 415, "unsupported_media_type")
    r = client.post("/v1/datasets", content=b"--b\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 422
    r = client.post("/v1/datasets", files={"other": ("x.csv", b"a\n1\n")})
    assert_error(r, 422, "invalid_request", "file")


def test_metadata_and_names_are_bounded(client, unchanged):
    body = {**KD_JOB, "dataset_id": "ds_x", "metadata": {f"k{i}": "v" for i in range(40)}}
    assert client.post("/v1/jobs", json=body).status_code == 422
