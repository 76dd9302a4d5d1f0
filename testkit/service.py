"""Start the real service for tests and benchmarks: `kdserve up` in a child process (uvicorn +
`workers` Celery worker processes + embedded redis-server unless a Redis URL is given), on a free
port, with its own data dir. Used as a context manager; stopping it sends SIGTERM like Ctrl-C would.

Also what talking to it takes: uploads, waiting for a job or any other condition, and a throwaway
PostgreSQL database. No torch here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")
T = TypeVar("T")
POSTGRES_ADMIN_URL = os.environ.get("KDSERVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, data_dir: Path, *, redis_url: str | None = None, database_url: str | None = None,
                 auth: bool = True, extra_env: dict[str, str] | None = None, workers: int = 1,
                 cwd: Path | None = None):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.cwd = cwd or REPO
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, KDSERVE_DATA_DIR=str(self.data_dir), KDSERVE_QUEUE=f"kdtest-{uuid.uuid4().hex[:8]}",
                        KDSERVE_AUTH="enabled" if auth else "disabled", PYTHONUNBUFFERED="1")
        self.env.update(extra_env or {})  # may name its own queue (a restart on the same data dir)
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
            # -I, as the images run it: the working directory is not on sys.path (tests plant modules there)
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-u", "-m", "kdserve.cli", "up", "--port", str(self.port), "--workers",
                 str(self.workers)], cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
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

    def worker_pids(self) -> list[int]:
        """The live Celery worker processes `kdserve up` started (its children running celery)."""
        return sorted(pid for pid, cmd in child_processes(self.proc.pid) if "celery" in cmd)

    def job_worker_pid(self, job_id: str) -> int | None:
        """The pid of the worker process whose delivery holds the job (the row's lease says
        `host:pid:message`), read from the service's database."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.env.get("KDSERVE_DATABASE_URL")
                                          or f"sqlite:///{self.data_dir.resolve() / 'kdserve.db'}")
        try:
            with engine.connect() as conn:
                worker = conn.execute(sqlalchemy.text("SELECT worker FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
        finally:
            engine.dispose()
        return int(worker.split(":")[1]) if worker else None

    def create_key(self, tenant: str) -> str:
        """A new API key for `tenant`, made the way an operator would: `kdserve keys create`."""
        out = subprocess.run([sys.executable, "-m", "kdserve.cli", "keys", "create", "--tenant", tenant], cwd=REPO,
                             env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def client(self, api_key: str | None = "default", timeout: float = 120) -> httpx.Client:
        key = self.api_key if api_key == "default" else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)


def child_processes(parent: int) -> list[tuple[int, str]]:
    """(pid, command line) of `parent`'s live children, from /proc (zombies left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == parent and state != "Z":
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(stat.parent.name), cmd))
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
    return found


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """predicate()'s first truthy value, polled every `interval` s; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting for {what} after {timeout} s")


def upload_teacher(client: httpx.Client, path: Path, **form: str) -> dict:
    with open(path, "rb") as f:
        r = client.post("/v1/teachers", files={"file": (path.name, f)}, data=form)
    assert r.status_code == 201, r.text
    return r.json()


def upload_dataset(client: httpx.Client, path: Path, **form: str) -> dict:
    with open(path, "rb") as f:
        r = client.post("/v1/datasets", files={"file": (path.name, f)}, data=form)
    assert r.status_code == 201, r.text
    return r.json()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL) for the block, dropped afterwards."""
    import psycopg

    name = f"kdserve_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s: {job}")
