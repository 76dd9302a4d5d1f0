"""`kdserve up` keeps its processes running: the child processes it started (embedded Redis, the
Celery workers, the API), watched from its main loop.

A worker that exits for any reason (killed by the OOM killer or SIGKILL, crashed, or ended on
purpose: a job that ignores its cancel or time limit past KDSERVE_CANCEL_GRACE_S makes its worker
exit with code 70) is started again after a backoff: 1 s, then 2, 4, … up to 60 s while it keeps
dying young; a worker that lived HEALTHY_AFTER_S starts over at 1 s. Its job is not lost either
way: the reaper of a live worker re-queues a job whose heartbeat stopped. Redis and the API are
not restarted: when one of them exits, `kdserve up` stops everything and exits with status 1.

A child started with a log file writes its output (stdout and stderr) there, appended, restarts
included; without one it writes to `kdserve up`'s own terminal.
"""

from __future__ import annotations

import signal
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# The children's working directory: the folder that holds kdserve's own packages (site-packages
# in the images, the checkout in development). uvicorn and Celery put the working directory on
# sys.path while they import the app; there it adds nothing that is not importable already, where
# the data dir (or any other writable folder) would let a planted file shadow a module.
CODE_ROOT = str(Path(__file__).resolve().parents[1])

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
STUCK_JOB_EXIT = 70  # worker/pipeline/lease.py: a job did not stop within the grace period

# shutdown order: no new requests first, then the workers (cold shutdown: an unacknowledged job
# goes back to the queue), the broker last
STOP_ORDER = ("api", "worker", "redis")


def restart_delay(failures: int) -> float:
    """Seconds before the restart after `failures` consecutive early deaths (1 → 1 s, 2 → 2 s, …)."""
    return min(RESTART_MAX_S, RESTART_MIN_S * 2 ** max(failures - 1, 0))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == STUCK_JOB_EXIT:
        return f"exited with code {code} (it ended itself: a job did not stop within its grace period)"
    return f"exited with code {code}"


@dataclass
class Child:
    name: str
    kind: str  # "api" | "worker" | "redis"
    command: list[str] | None  # None: started elsewhere, never restarted
    env: dict[str, str] | None
    proc: subprocess.Popen | None
    restart: bool = False
    started_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    restart_at: float | None = None  # set while waiting out the backoff
    log: Path | None = None  # where its output goes; None: the terminal

    def spawn(self) -> None:
        self.proc = launch(self.command, self.log, env=self.env, cwd=CODE_ROOT)
        self.started_at, self.restart_at = time.monotonic(), None


def launch(command: list[str], log: Path | None, **popen: Any) -> subprocess.Popen:
    """Start a child in a session of its own (Ctrl-C on the terminal reaches `kdserve up` alone,
    which stops the children in STOP_ORDER), its stdout and stderr appended to `log` (None: the terminal)."""
    with open(log, "ab") if log else nullcontext() as out:
        return subprocess.Popen(command, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT if out else None, **popen)


def rotate_log(path: Path) -> Path:
    """Start a fresh log file for this run: the previous run's is kept beside it as <name>.1."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))
    return path


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' when there is none): what a failure is shown with."""
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 64 * 1024))  # the end is enough: a log may be large
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])


class Supervisor:
    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.children: list[Child] = []

    def adopt(self, name: str, kind: str, proc: subprocess.Popen, log: Path | None = None) -> None:
        """Watch a process started elsewhere (it is not restarted)."""
        self.children.append(Child(name, kind, None, None, proc, log=log))

    def start(self, name: str, kind: str, command: list[str], env: dict[str, str], restart: bool = False,
              log: Path | None = None) -> Child:
        child = Child(name, kind, command, env, None, restart=restart, log=log)
        child.spawn()
        self.children.append(child)
        return child

    def check(self) -> Child | None:
        """One look at every child: schedule or perform due restarts. Returns a child that exited
        and is not restarted (the caller stops everything), else None."""
        t = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if t >= child.restart_at:
                    child.spawn()
                    self.say(f"{child.kind} {child.name} restarted (pid {child.proc.pid})")
                continue
            code = child.proc.poll()
            if code is None:
                continue
            if not child.restart:
                return child
            lived = t - child.started_at
            child.failures = 1 if lived >= HEALTHY_AFTER_S else child.failures + 1
            delay = restart_delay(child.failures)
            child.restart_at = t + delay
            self.say(f"[yellow]{child.kind} {child.name} (pid {child.proc.pid}) {describe_exit(code)} after "
                     f"{lived:.0f} s; restarting it in {delay:.0f} s[/]"
                     + (f" (its output: {child.log})" if child.log else ""))
        return None

    def shutdown(self, grace: float = 15.0) -> None:
        """Each kind in STOP_ORDER: signal all of its processes, then wait for them (SIGKILL past `grace`)."""
        for kind in STOP_ORDER:
            group = [c.proc for c in self.children if c.kind == kind and c.restart_at is None and c.proc is not None]
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGQUIT if kind == "worker" else signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in group:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
