"""The teacher jail itself (service/sandbox/jail.py), with real bubblewrap: whatever code runs in it — here a
script that tries every escape a hostile teacher would — reads no file but its own, writes none,
reaches no network, sees no secret, starts no process, and is held to its memory, CPU and wall
time budgets. The script enters the jail exactly as worker/teacher_host.py does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdserve.service.sandbox.jail import Budget, JailedProcess, JailError, sandbox_problem, seccomp_program

pytestmark = pytest.mark.skipif(sandbox_problem("bwrap") is not None, reason=f"no sandbox here: {sandbox_problem('bwrap')}")

PRELUDE = """
import json, os, sys
proto = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
from kdserve.worker.teacher_host import enter_jail
enter_jail()
from kdserve.service.sandbox.jail import Channel
channel = Channel(os.fdopen(os.dup(0), "rb", buffering=0), proto)
request, _ = channel.receive(None, 1 << 20)
"""

ESCAPES = """
import socket, subprocess, threading, glob
results = {}
def attempt(name, fn):
    try:
        results[name] = ["done", repr(fn())[:300]]
    except BaseException as exc:
        results[name] = ["refused", f"{type(exc).__name__}: {exc}"[:300]]
attempt("read_api_key", lambda: open(request["secret_file"]).read())
attempt("list_data_dir", lambda: os.listdir(request["data_dir"]))
attempt("read_etc_passwd", lambda: open("/etc/passwd").read())
attempt("write_model", lambda: open("/in/model", "ab").write(b"x"))
attempt("plant_code", lambda: open(os.path.dirname(os.__file__) + "/argparse.py", "w").write("x"))
attempt("plant_in_data_dir", lambda: open(os.path.join(request["data_dir"], "argparse.py"), "w").write("x"))
attempt("socket_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("connect_redis", lambda: socket.create_connection(("127.0.0.1", 6379), timeout=2))
attempt("fork", lambda: os.fork())
attempt("subprocess", lambda: subprocess.run(["/bin/true"]))
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("processes", lambda: sorted(glob.glob("/proc/[0-9]*")))
attempt("environ_of_pid_1", lambda: open("/proc/1/environ", "rb").read())
attempt("thread", lambda: threading.Thread(target=lambda: None).start())
results["env"] = dict(os.environ)
results["root"] = sorted(os.listdir("/"))
channel.send(results)
"""


def jailed_script(model: Path, body: str, budget: Budget, scratch: Path) -> JailedProcess:
    code = PRELUDE + textwrap.dedent(body)
    return JailedProcess(model, mode="bwrap", budget=budget, scratch=scratch, runner_args=["-I", "-B", "-c", code])


@pytest.fixture()
def host(tmp_path, monkeypatch):
    """A data dir with an api_key and a database URL with a password in the environment: what a
    teacher would want to read."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "api_key").write_text("kd_the_bootstrap_key_nobody_may_read\n")
    monkeypatch.setenv("KDSERVE_DATABASE_URL", "postgresql://kdserve:hunter2@db/kdserve")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret")
    model = tmp_path / "teacher.pt"
    model.write_bytes(b"the teacher's own bytes")
    return {"data": data, "model": model, "scratch": tmp_path}


def test_a_jailed_child_can_do_nothing_outside_itself(host):
    with jailed_script(host["model"], ESCAPES, Budget(memory_bytes=2 * 1024**3, cpu_seconds=60), host["scratch"]) as child:
        r = child.request({"secret_file": str(host["data"] / "api_key"), "data_dir": str(host["data"])}, timeout=60).header
    refused = {k for k, v in r.items() if isinstance(v, list) and v[0] == "refused"}
    assert {"read_api_key", "list_data_dir", "read_etc_passwd", "write_model", "plant_code", "plant_in_data_dir",
            "socket_inet", "connect_redis", "fork", "subprocess", "exec"} <= refused, r
    assert "No such file" in r["read_api_key"][1] and "Read-only" in r["write_model"][1]
    assert "Operation not permitted" in r["fork"][1] and "Operation not permitted" in r["socket_inet"][1]
    assert r["thread"][0] == "done"                             # threads (torch's intra-op pool) still work
    assert r["processes"] == ["done", "['/proc/1']"]           # alone in its PID namespace
    blob = json.dumps(r)
    for secret in ("hunter2", "s3-secret", "kd_the_bootstrap_key", "KDSERVE_"):
        assert secret not in blob.replace("KDSERVE_JAIL_LIMITS", ""), secret
    assert not any(k.startswith(("KDSERVE_DATABASE", "AWS_")) for k in r["env"])
    assert set(r["root"]) <= {"bin", "dev", "etc", "in", "lib", "lib32", "lib64", "out", "proc", "sbin", "sys", "tmp",
                              "usr", str(Path(sys.prefix).parts[1]), str(Path(sys.base_prefix).parts[1]),
                              str(Path(__file__).resolve().parts[1])}
    assert not (host["data"] / "argparse.py").exists()


def test_memory_budget(host):
    body = """
    try:
        block = bytearray(1024**3)
        channel.send({"allocated": len(block)})
    except MemoryError:
        channel.send({"allocated": 0})
    """
    with jailed_script(host["model"], body, Budget(memory_bytes=512 * 1024**2), host["scratch"]) as child:
        assert child.request({}, timeout=60).header == {"allocated": 0, "arrays": 0}


def test_cpu_budget_kills_a_busy_child(host):
    body = """
    while True:
        pass
    """
    with jailed_script(host["model"], body, Budget(cpu_seconds=2), host["scratch"]) as child:
        with pytest.raises(JailError) as err:
            child.request({}, timeout=60)
    assert err.value.code == "teacher_crashed" and ("SIGXCPU" in err.value.message or "SIGKILL" in err.value.message)


def test_wall_time_kills_a_sleeping_child(host):
    # the sleep is the stimulus, not a wait: a child that would outlast its wall-time budget
    body = """
    import time
    time.sleep(600)
    """
    with jailed_script(host["model"], body, Budget(), host["scratch"]) as child:
        started = time.monotonic()
        with pytest.raises(JailError) as err:
            child.request({}, timeout=3)
        assert err.value.code == "timeout" and time.monotonic() - started < 30
        assert child.proc.poll() is not None  # killed, not left behind


def test_a_reply_over_its_budget_is_refused(host):
    body = """
    import numpy as np
    channel.send({"ok": True}, [np.zeros(2 * 1024**2, np.float32)])
    """
    budget = Budget(max_reply_bytes=1024**2)
    with jailed_script(host["model"], body, budget, host["scratch"]) as child:
        with pytest.raises(JailError, match="protocol"):
            child.request({}, timeout=60)


def test_the_private_folders_are_removed(host):
    with jailed_script(host["model"], "channel.send({})", Budget(), host["scratch"]) as child:
        folder = child.out_dir.parent
        child.request({}, timeout=60)
    assert not folder.exists()


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_seccomp_filter_assembles_for_each_architecture(machine):
    program = seccomp_program(machine)
    assert program is not None and len(program) % 8 == 0 and len(program) // 8 < 100


def test_a_missing_bubblewrap_is_named():
    """What the API and `kdserve up` say when bwrap is not installed."""
    out = subprocess.run([sys.executable, "-c", "from kdserve.service.sandbox.jail import sandbox_problem; print(sandbox_problem('bwrap'))"],
                         env=dict(os.environ, PATH="/nonexistent"), capture_output=True, text=True, check=True)
    assert "bubblewrap" in out.stdout and "KDSERVE_JAIL=off" in out.stdout
