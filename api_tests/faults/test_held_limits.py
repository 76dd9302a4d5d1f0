"""What one tenant may hold, and what the disk must keep: Server-Sent Event streams and uploads in
progress per tenant (429 past KDSERVE_TENANT_MAX_EVENT_STREAMS / _UPLOADS, the slot given back when
the client goes), free disk space (507 before an upload would take the disk under
KDSERVE_DISK_RESERVE_BYTES, whether its size is declared or not), and orphaned temporary files
(swept at start and periodically, what is in use left alone)."""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from api_tests.harness import (KD_JOB, MACHINE_REDIS, Service, assert_error, post_file, raw_upload, upload_dataset,
                               upload_teacher, wait_job, wait_until)

HOURS = 3600
OLD = time.time() - 2 * HOURS  # older than the 1 h KDSERVE_TEMP_MAX_AGE_S below


def plant(path: Path, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind")
    if old:
        os.utime(path, (OLD, OLD))
    return path


@pytest.fixture(scope="module")
def orphans(tmp_path_factory):
    """What a killed process left in a data dir, planted before the service starts."""
    data = tmp_path_factory.mktemp("limits-svc")
    blobs = data / "blobs"
    hf = Path("/tmp") / f"kdserve-hf-test-{uuid.uuid4().hex[:8]}"
    planted = {"upload": plant(blobs / ".tmp" / "tmpupload.bin"),
               "export_dir": plant(blobs / ".tmp" / "tmpexport" / "model.onnx"),
               "probe": plant(blobs / "tmp" / "probes" / "0123abcd" / "teacher.onnx"),
               "hf_scratch": plant(hf / "config.json"),
               "fresh": plant(blobs / ".tmp" / "tmpfresh.bin", old=False)}
    for d in (blobs / ".tmp" / "tmpexport", blobs / "tmp" / "probes" / "0123abcd", hf):
        os.utime(d, (OLD, OLD))
    yield data, planted
    shutil.rmtree(hf, ignore_errors=True)


@pytest.fixture(scope="module")
def limited(orphans):
    data, _ = orphans
    env = {"KDSERVE_TENANT_MAX_EVENT_STREAMS": "2", "KDSERVE_TENANT_MAX_UPLOADS": "1",
           "KDSERVE_TEMP_MAX_AGE_S": str(HOURS), "KDSERVE_TEMP_SWEEP_INTERVAL_S": "1"}
    with Service(data, redis_url=MACHINE_REDIS, extra_env=env) as svc:
        yield svc


def test_orphans_are_swept_at_start_and_periodically(limited, orphans):
    _, planted = orphans
    wait_until(lambda: not any(p.exists() for k, p in planted.items() if k != "fresh"), 30, "the orphans swept")
    assert not planted["export_dir"].parent.exists() and not planted["hf_scratch"].parent.exists()
    assert planted["fresh"].exists()  # in use (modified just now): left alone
    later = plant(limited.data_dir / "blobs" / ".tmp" / "tmplater.bin")  # while it runs
    wait_until(lambda: not later.exists(), 30, "the later orphan swept")
    assert planted["fresh"].exists()
    with limited.client() as c:
        assert c.get("/healthz").status_code == 200


def stream_events(svc: Service, key: str, job_id: str) -> tuple[httpx.Client, httpx.Response]:
    c = svc.client(api_key=key, timeout=60)
    r = c.send(c.build_request("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}),
               stream=True)
    return c, r


def test_event_streams_per_tenant(limited, files):
    with limited.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}
        job = c.post("/v1/jobs", json={**KD_JOB, **ids, "training": {**KD_JOB["training"], "epochs": 5000}}).json()
    opened = [stream_events(limited, limited.api_key, job["id"]) for _ in range(2)]
    try:
        assert [r.status_code for _, r in opened] == [200, 200]
        c, third = stream_events(limited, limited.api_key, job["id"])
        third.read()
        assert_error(third, 429, "rate_limited")
        c.close()
        with limited.client() as c:  # the JSON form of the same route is not a stream
            assert c.get(f"/v1/jobs/{job['id']}/events").status_code == 200
        other = limited.create_key("stream-neighbour")  # another tenant is not held back by this one
        with limited.client(api_key=other) as c:
            ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"],
                   "dataset_id": upload_dataset(c, files["npz"])["id"]}
            theirs = c.post("/v1/jobs", json={**KD_JOB, **ids}).json()  # queued behind ours: its stream stays
        opened.append(stream_events(limited, other, theirs["id"]))
        assert opened[-1][1].status_code == 200
        opened.pop()[0].close()
        with limited.client() as c:
            c.post(f"/v1/jobs/{theirs['id']}/cancel")
        opened.pop()[0].close()  # a client goes away: its slot comes back once the server notices

        def one_more_opens() -> bool:
            c, r = stream_events(limited, limited.api_key, job["id"])
            if r.status_code == 200:
                opened.append((c, r))
                return True
            c.close()
            return False

        wait_until(one_more_opens, 30, "a stream opened in the slot a client left")
    finally:
        for c, _ in opened:
            c.close()
        with limited.client() as c:
            c.post(f"/v1/jobs/{job['id']}/cancel")
            wait_job(c, job["id"], timeout=120)


def slow_upload(svc: Service, key: str) -> socket.socket:
    """An upload whose body is still coming: headers and the first bytes of its file part sent."""
    boundary = "slowbound"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.csv\"\r\n"
            "Content-Type: text/csv\r\n\r\na,b,label\n").encode()
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=30)
    sock.sendall((f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n").encode()
                 + head)
    return sock


def test_uploads_in_progress_per_tenant(limited):
    csv = b"a,b,label\n1,2,0\n3,4,1\n"
    temp = limited.data_dir / "blobs" / ".tmp"
    sock = slow_upload(limited, limited.api_key)
    try:
        with limited.client() as c:
            # the slow one holds the slot, its file part arriving
            wait_until(lambda: any(temp.iterdir()), 30, "the slow upload's file")
            assert_error(post_file(c, "/v1/datasets", "d.csv", csv), 429, "rate_limited")
        with limited.client(api_key=limited.create_key("upload-neighbour")) as other:
            assert post_file(other, "/v1/datasets", "d.csv", csv).status_code == 201
    finally:
        sock.close()  # the client goes away mid-body: the slot and the temp file are given back
    with limited.client() as c:
        wait_until(lambda: post_file(c, "/v1/datasets", "d.csv", csv).status_code == 201, 30,
                   "an upload accepted again")
    wait_until(lambda: not [p for p in temp.iterdir() if p.name != "tmpfresh.bin"], 30, "the temporary files gone")


@pytest.fixture(scope="module")
def tight_disk(tmp_path_factory):
    """A service whose disk reserve is 256 MiB under what is free now: a few hundred MiB fit."""
    data = tmp_path_factory.mktemp("disk-svc")
    reserve = shutil.disk_usage(data).free - 256 * 1024**2
    with Service(data, redis_url=MACHINE_REDIS, extra_env={"KDSERVE_DISK_RESERVE_BYTES": str(reserve)}) as svc:
        yield svc


def declared_only(svc: Service, size: int) -> httpx.Response:
    """The answer to an upload that declares `size` bytes and sends none of them."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as sock:
        sock.sendall((f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {svc.api_key}\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\nConnection: close\r\n"
                      f"Content-Length: {size}\r\n\r\n").encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return httpx.Response(int(head.split(b" ")[1]), content=body, headers={"Content-Type": "application/json"})


def test_upload_that_would_fill_the_disk_is_refused(tight_disk):
    temp = tight_disk.data_dir / "blobs" / ".tmp"
    with tight_disk.client() as c:
        # declared: refused before its body is read
        r = declared_only(tight_disk, 1024**3)
        assert_error(r, 507, "insufficient_storage", "file")
        assert "KDSERVE_DISK_RESERVE_BYTES" in r.json()["error"]["message"]
        status, sent = raw_upload(tight_disk, 1024**3, chunked=False)
        assert status == 507 and sent < 64 * 1024**2
        # not declared (chunked): refused as it streams, once it would go under the reserve
        status, sent = raw_upload(tight_disk, 2 * 1024**3, chunked=True)
        assert status == 507 and sent < 1024**3
        r = post_file(c, "/v1/datasets", "d.csv", b"a,b,label\n1,2,0\n3,4,1\n")  # small ones still fit
        assert r.status_code == 201, r.text
        assert c.get("/healthz").status_code == 200
    assert not list(temp.iterdir())
