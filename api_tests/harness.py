"""What the test modules share (no test module imports another): the service harness from testkit,
the job body and checks the API and fault tests repeat, and the browser the dashboard tests drive.
Fixtures are in conftest.py."""

from __future__ import annotations

import io
import os
import select
import socket

import onnxruntime as ort

from testkit.service import (REPO, Service, child_processes, postgres_database, upload_dataset,  # noqa: F401
                             upload_teacher, wait_job, wait_until)

MACHINE_REDIS = os.environ.get("KDSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

CHROMIUM = "/usr/bin/chromium"  # scripts/ensure-services installs it (apt) when it is missing
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

KD_JOB = {
    "student": {"architecture": "mlp", "params": {"hidden_sizes": [32]}},
    "method": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
    "training": {"epochs": 30, "batch_size": 64, "learning_rate": 0.005, "seed": 0},
}


def job_body(ids: dict, epochs: int) -> dict:
    """A small `kd` job on `ids` (teacher_id, dataset_id) that runs `epochs` epochs (no early stop)."""
    return {**ids, "student": {"architecture": "mlp", "params": {"hidden_sizes": [32]}},
            "method": {"name": "kd"}, "training": {"epochs": epochs, "learning_rate": 0.005,
                                                   "early_stopping_patience": None}}


def events(c, job_id: str) -> list[dict]:
    return c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def models_of(c, job_id: str) -> list[dict]:
    return [m for m in c.get("/v1/models", params={"limit": 100}).json()["data"] if m["job_id"] == job_id]


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_error(r, status: int, code: str, param: str | None = "__any__"):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"]
    if param != "__any__":
        assert err["param"] == param, err


def stored_files(service) -> list[str]:
    root = service.data_dir / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def post_file(client, route: str, name: str, content: bytes, **form):
    return client.post(route, files={"file": (name, io.BytesIO(content))}, data=form)


class Payload:
    """Unpickling this creates a file: the proof that a loader ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def raw_upload(service, total: int, chunked: bool) -> tuple[int, int]:
    """Stream `total` bytes of a multipart upload over a raw socket, reading the answer as soon as
    the server sends one. Returns (status, bytes sent)."""
    boundary = "kdbound"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = [f"POST /v1/datasets HTTP/1.1", f"Host: 127.0.0.1:{service.port}",
               f"Authorization: Bearer {service.api_key}",
               f"Content-Type: multipart/form-data; boundary={boundary}"]
    headers.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(head) + total + len(tail)}")
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=60)
    sent, block = 0, b"\x01" * (1 << 20)
    answer = b""
    try:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())

        def send(data: bytes) -> None:
            sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)

        send(head)
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                send(block)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(block)
        sock.settimeout(30)
        while b"\r\n" not in answer:
            answer += sock.recv(4096)
    finally:
        sock.close()
    return int(answer.split(b" ")[1]), sent

