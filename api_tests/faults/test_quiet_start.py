"""A quiet start: `kdserve up` on a terminal (--quiet, its default there) prints a short banner
once the API answers (the API's, the dashboard's and the docs' URLs, the API key or its file,
where the logs are) and keeps its processes' output in <data dir>/logs/. A start that fails still
shows why: the end of the failed process's log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from kdserve.cli.operator import local_url
from testkit.service import REPO, free_port, wait_until

BANNER_END = "Ctrl-C stops it."


def start_up(data_dir: Path, port: int, output: Path) -> subprocess.Popen:
    """`kdserve up --quiet` as Service starts it (-I, its own queue, embedded Redis and SQLite), its
    terminal output in `output`."""
    env = dict(os.environ, KDSERVE_DATA_DIR=str(data_dir), KDSERVE_QUEUE=f"kdtest-{uuid.uuid4().hex[:8]}",
               KDSERVE_AUTH="enabled")
    for key in ("KDSERVE_REDIS_URL", "KDSERVE_DATABASE_URL"):
        env.pop(key, None)
    with open(output, "wb") as out:
        return subprocess.Popen([sys.executable, "-I", "-m", "kdserve.cli", "up", "--quiet", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for_banner(proc: subprocess.Popen, output: Path, timeout: float = 120) -> list[str]:
    """The lines `kdserve up` printed up to the banner's last."""
    deadline = time.monotonic() + timeout
    while BANNER_END not in output.read_text():
        assert proc.poll() is None, f"kdserve up exited with {proc.returncode}:\n{output.read_text()}"
        assert time.monotonic() < deadline, f"no banner after {timeout} s:\n{output.read_text()}"
        time.sleep(0.2)
    lines = output.read_text().splitlines()
    return lines[:lines.index(BANNER_END) + 1]


def stop(proc: subprocess.Popen, output: Path) -> list[str]:
    """Ctrl-C, as on the terminal: `kdserve up` stops everything and exits 0."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, output.read_text()
    return output.read_text().splitlines()


@pytest.mark.timeout(300)
def test_a_quiet_start_prints_a_short_banner_and_logs_to_files(tmp_path):
    data, port = tmp_path / "data", free_port()
    url, logs, key_file = f"http://127.0.0.1:{port}", (data / "logs").resolve(), (data / "api_key").resolve()
    proc = start_up(data, port, tmp_path / "first.txt")
    try:
        banner = wait_for_banner(proc, tmp_path / "first.txt")
        text = "\n".join(banner)
        assert len(banner) <= 20, text
        assert f"API        {url}\n" in text and f"dashboard  {url}/\n" in text and f"API docs   {url}/docs\n" in text
        key = key_file.read_text().strip()
        assert key in text and f"saved to {key_file}" in text  # the first start: the new key itself
        assert f"logs       {logs}/ (api.log, redis.log, worker.log" in text
        assert "Uvicorn" not in text and "celery" not in text.lower() and "Redis is starting" not in text
        # the banner's addresses answer
        assert "text/html" in httpx.get(url + "/").headers["content-type"]
        assert httpx.get(url + "/docs").status_code == 200
        # ...and the processes' output is in their log files
        wait_until(lambda: "ready." in (logs / "worker.log").read_text(), 120, "the worker's ready line in worker.log")
        assert "Application startup complete" in (logs / "api.log").read_text()
        assert "Redis is starting" in (logs / "redis.log").read_text()
    finally:
        lines = stop(proc, tmp_path / "first.txt")
    assert lines[-1] == "kdserve stopped" and len(lines) <= len(banner) + 2, "\n".join(lines)
    assert "Cold shutdown" in (logs / "worker.log").read_text()  # the children's goodbyes went to the logs too

    # a second start: the key stays where it is (the banner says where), the first start's logs are kept as .1
    proc = start_up(data, port, tmp_path / "second.txt")
    try:
        text = "\n".join(wait_for_banner(proc, tmp_path / "second.txt"))
        assert f"API key    in {key_file}\n" in text and key not in text
        assert "Cold shutdown" in (logs / "worker.log.1").read_text()
    finally:
        stop(proc, tmp_path / "second.txt")


@pytest.mark.timeout(180)
def test_a_failed_start_shows_the_end_of_the_log(tmp_path):
    """The API cannot bind its port (a socket holds it without listening: the check for a running
    service lets it through): `kdserve up` exits 1 with the end of api.log, uvicorn's error in it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        proc = start_up(tmp_path / "data", port, tmp_path / "out.txt")
        assert proc.wait(timeout=120) == 1
    text = (tmp_path / "out.txt").read_text()
    assert "api exited with code 3; stopping the rest" in text, text  # uvicorn: 3, it could not start
    assert f"the end of {(tmp_path / 'data' / 'logs' / 'api.log').resolve()}:" in text
    assert "address already in use" in text and BANNER_END not in text


@pytest.mark.timeout(60)
def test_a_port_that_already_answers_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_up(tmp_path / "data", port, tmp_path / "out.txt")
        assert proc.wait(timeout=60) == 1
    assert f"http://127.0.0.1:{port} already answers" in (tmp_path / "out.txt").read_text()
    assert not (tmp_path / "data").exists()  # nothing was made


def test_a_wildcard_address_is_shown_as_loopback():
    assert local_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert local_url("::", 8000) == "http://[::1]:8000"
    assert local_url("10.1.2.3", 80) == "http://10.1.2.3:80"
