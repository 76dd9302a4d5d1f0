"""service/supervisor.py on throwaway processes: restart with doubling backoff, the log lines,
a process that is not restarted, and the shutdown order's signals."""

from __future__ import annotations

import signal
import sys
import time

from kdserve.service.supervisor import Supervisor, describe_exit, restart_delay


def test_backoff_doubles_up_to_a_minute():
    assert [restart_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_exit_descriptions():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(70).startswith("exited with code 70 (it ended itself")
    assert describe_exit(1) == "exited with code 1"


# a worker stand-in that says which signal stopped it (and leaves no core file)
QUIT_IS_7 = "import signal, sys, time; signal.signal(signal.SIGQUIT, lambda *_: sys.exit(7)); time.sleep(60)"


def run_until(sup: Supervisor, lines: list[str], count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        assert time.monotonic() < deadline, lines
        assert sup.check() is None
        time.sleep(0.05)


def test_a_dying_worker_is_restarted_with_backoff_and_the_rest_stop_in_order():
    lines: list[str] = []
    sup = Supervisor(lines.append)
    crashing = sup.start("w1", "worker", [sys.executable, "-c", "import sys; sys.exit(3)"], {}, restart=True)
    steady = sup.start("w2", "worker", [sys.executable, "-c", QUIT_IS_7], {}, restart=True)
    first = crashing.proc.pid
    run_until(sup, lines, 3)  # died, restarted, died again
    assert f"worker w1 (pid {first}) exited with code 3 after 0 s; restarting it in 1 s" in lines[0]
    assert lines[1].startswith("worker w1 restarted (pid ") and crashing.proc.pid != first
    assert "restarting it in 2 s" in lines[2]
    assert steady.proc.poll() is None and not any("w2" in line for line in lines)

    api = sup.start("api", "api", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    t0 = time.monotonic()
    sup.shutdown(grace=10)
    assert time.monotonic() - t0 < 5
    assert api.proc.returncode == -signal.SIGTERM and steady.proc.returncode == 7  # workers get SIGQUIT


def test_a_process_that_is_not_restarted_is_reported():
    sup = Supervisor(lambda line: None)
    sup.start("api", "api", [sys.executable, "-c", "pass"], {})
    deadline = time.monotonic() + 20
    while (dead := sup.check()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert dead.name == "api" and dead.proc.returncode == 0
