"""Start the real service for tests and benchmarks: `kdserve up` in a child process (uvicorn +
a Celery worker process + embedded redis-server unless a Redis URL is given), on a free port,
with its own data dir. Used as a context manager; stopping it sends SIGTERM like Ctrl-C would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, data_dir: Path, *, redis_url: str | None = None, database_url: str | None = None,
                 auth: bool = True, extra_env: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, KDSERVE_DATA_DIR=str(self.data_dir), KDSERVE_QUEUE=f"kdtest-{uuid.uuid4().hex[:8]}",
                        KDSERVE_AUTH="enabled" if auth else "disabled", PYTHONUNBUFFERED="1", **(extra_env or {}))
        for key, value in (("KDSERVE_REDIS_URL", redis_url), ("KDSERVE_DATABASE_URL", database_url)):
            if value:
                self.env[key] = value
            else:
                self.env.pop(key, None)
        self.proc: subprocess.Popen | None = None
        self.api_key: str | None = None
        self.log = self.data_dir / "service.log"

    def __enter__(self) -> "Service":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # stdout goes to the log file too, never to a pipe nobody reads: uvicorn writes an access-log
        # line per request there, and a full pipe (64 KiB, ~700 requests) would block its event loop.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "up", "--port", str(self.port)], cwd=REPO, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kdserve up exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.__exit__()
                raise RuntimeError(f"kdserve did not become ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)
        key_file = self.data_dir / "api_key"
        self.api_key = key_file.read_text().strip() if key_file.exists() else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def create_key(self, tenant: str) -> str:
        """A new API key for `tenant`, made the way an operator would: `kdserve keys create`."""
        out = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", tenant], cwd=REPO,
                             env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def client(self, api_key: str | None = "default", timeout: float = 120) -> httpx.Client:
        key = self.api_key if api_key == "default" else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s: {job}")
