"""The one place a user's model runs: a jailed child process, and the pipe protocol to talk to it.

A teacher is a program (TorchScript compiles arbitrary ATen calls, `aten::from_file` among them),
so it never runs in the API or in the worker. Every load, forward pass and refinement happens in
`python -I -B -m kdserve.worker.teacher_host`, started inside a bubblewrap sandbox (`bwrap`):

- namespaces: its own user (uid 65534, no capabilities, no further user namespaces), PID, IPC,
  UTS, cgroup and network namespace (no interface but a loopback of its own: no network);
- files: an empty root with read-only views of the system's libraries, the Python installation
  and kdserve's own code, the model file (or its folder) read-only at /in/model, an empty private
  folder at /out for what it hands back, a small tmpfs at /tmp as working directory; the data dir,
  the database, the api_key file and every other file of the host are simply not there;
- environment: cleared, then a handful of fixed variables (no KDSERVE_*, no database URL, no S3 keys);
- limits, set by the child itself before it reads anything (teacher_host.enter_jail): memory
  (RLIMIT_DATA), CPU seconds, file size, no core dumps; the parent enforces the wall time;
- a seccomp filter (seccomp_filter below, installed the same way) refuses to start processes
  (execve, fork, clone without CLONE_THREAD), sockets other than AF_UNIX, ptrace, mount, bpf,
  perf, keyrings, kernel modules and user namespaces.

Results come back over stdout as framed messages (a JSON header and .npy arrays, read with
allow_pickle=False and size caps), never through shared state. `KDSERVE_JAIL=off` runs the same
child without bubblewrap (an operator's documented opt-out: limits and seccomp still apply, the
file system and network do not get hidden).

Standard library and numpy only: the API (which has no torch) launches probes through it too.
"""

from __future__ import annotations

import collections
import ctypes
import importlib.util
import io
import json
import os
import platform
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

JAIL_MODEL = "/in/model"   # where the model file (or its prepared folder) appears inside the jail
JAIL_OUT = "/out"          # the jail's only writable host folder: what the runner hands back
MODES = ("bwrap", "off")
MAX_HEADER_BYTES = 16 * 1024**2


class JailError(Exception):
    """The child could not be started, broke the protocol, crashed or ran out of time.
    `code` is the API error code the caller reports."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Budget:
    """What one jailed child may use. Wall time is per request (the parent kills it past that)."""

    memory_bytes: int = 8 * 1024**3
    cpu_seconds: int = 24 * 3600
    file_bytes: int = 4 * 1024**3      # the largest file it may write (a refined teacher, a state dict)
    tmp_bytes: int = 256 * 1024**2     # its /tmp (RAM-backed)
    threads: int = 1
    max_reply_bytes: int = 8 * 1024**3  # the most array bytes one reply may carry

    def limits(self) -> dict[str, int]:
        return {"memory_bytes": self.memory_bytes, "cpu_seconds": self.cpu_seconds, "file_bytes": self.file_bytes}


@dataclass(frozen=True)
class JailConfig:
    """How teachers are jailed here (built from the KDSERVE_* settings by the service and worker)."""

    mode: str = "bwrap"
    budget: Budget = Budget()
    python: str | None = None             # the interpreter the runner starts with (default: this one)
    scratch: Path | None = None           # where the private folders go (default: the system's temp)
    load_timeout_s: float = 120.0         # loading the model and running its first batch
    call_timeout_s: float = 600.0         # one later request (a batch of forward passes)


# ---- is the sandbox there? ----------------------------------------------------------------------


@lru_cache(maxsize=None)
def sandbox_problem(mode: str = "bwrap") -> str | None:
    """None when jailed children can run in this mode here, else what is missing, in words a
    person can act on. Cached: the answer does not change while the process runs."""
    if mode == "off":
        return None
    if mode != "bwrap":
        return f"unknown KDSERVE_JAIL mode {mode!r} (use bwrap or off)"
    if not sys.platform.startswith("linux"):
        return "the teacher sandbox needs Linux (bubblewrap and seccomp)"
    if seccomp_program() is None:
        return f"the teacher sandbox's seccomp filter has no syscall table for {platform.machine()}"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return ("the teacher sandbox needs bubblewrap, which is not installed: install it (Debian/Ubuntu: "
                "apt-get install bubblewrap), or set KDSERVE_JAIL=off to run teachers without it (not recommended)")
    try:
        out = subprocess.run([bwrap, *namespace_args(), "--ro-bind", "/", "/", "--", "/bin/true"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap does not start: {exc}"
    if out.returncode != 0:
        detail = (out.stderr.strip().splitlines() or ["no message"])[-1]
        return (f"bubblewrap cannot create the sandbox here ({detail}): it needs unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0; in a container, a "
                "seccomp profile that allows unshare and clone of namespaces), or set KDSERVE_JAIL=off")
    return None


def namespace_args() -> list[str]:
    return ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
            "--hostname", "kdserve-jail", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


# ---- the bubblewrap command ---------------------------------------------------------------------


# kdserve's folders: an editable install maps each of these to its own folder outside site-packages
PACKAGES = ("kdserve", "kdserve.models", "kdserve.worker", "kdserve.service")
_PATHS_SCRIPT = ("import importlib.util, json, sys; print(json.dumps({'paths': [sys.prefix, sys.base_prefix, "
                 "sys.exec_prefix, *sys.path], 'packages': [loc for p in %r "
                 "if (spec := importlib.util.find_spec(p)) for loc in spec.submodule_search_locations or []]}))" % (PACKAGES,))


@lru_cache(maxsize=None)
def _code_roots(python: str | None = None) -> tuple[Path, ...]:
    """Read-only paths the child's Python needs: the interpreter's installation, its environment's
    site-packages, and the folders of kdserve's own packages (an editable install points outside
    site-packages). Nothing else of the host: the repository itself is not bound, so a data dir
    inside it (the default `.kdserve`) stays out of sight. Another interpreter (KDSERVE_PYTHON) is
    asked for its own paths once."""
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]
        packages = [loc for p in PACKAGES if (spec := importlib.util.find_spec(p))
                    for loc in spec.submodule_search_locations or []]
        executable = sys.executable
    else:
        out = subprocess.run([python, "-I", "-c", _PATHS_SCRIPT], capture_output=True, text=True, timeout=120, check=True)
        found = json.loads(out.stdout.strip().splitlines()[-1])
        paths, packages, executable = found["paths"], found["packages"], python
    roots = {Path(p) for p in [*paths, *packages] if p and os.path.isdir(p)}
    roots |= {Path(os.path.dirname(os.path.abspath(executable))), Path(os.path.dirname(os.path.realpath(executable)))}
    resolved = sorted({Path(os.path.realpath(r)) for r in roots} | roots, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for root in resolved:  # a folder inside one already bound needs no bind of its own
        if not any(root == k or k in root.parents for k in kept):
            kept.append(root)
    return tuple(kept)


SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf")


def _system_args() -> list[str]:
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in SYSTEM_FILES:
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    if os.path.isdir("/etc/ld.so.conf.d"):
        args += ["--ro-bind", "/etc/ld.so.conf.d", "/etc/ld.so.conf.d"]
    # CPU topology only (torch and OpenMP size their thread pools from it); nothing else of /sys
    if os.path.isdir("/sys/devices/system/cpu"):
        args += ["--ro-bind", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    return args


def _gpu_args(device: str) -> list[str]:
    """A CUDA teacher needs the NVIDIA device nodes (the driver's libraries are under /usr)."""
    if not device.startswith("cuda"):
        return []
    nodes = sorted(p for p in Path("/dev").glob("nvidia*"))
    args: list[str] = []
    for node in nodes:
        args += ["--dev-bind", str(node), str(node)]
    if os.path.isdir("/proc/driver/nvidia"):
        args += ["--ro-bind", "/proc/driver/nvidia", "/proc/driver/nvidia"]
    return args


def child_env(budget: Budget, device: str) -> dict[str, str]:
    """The child's whole environment: nothing of the parent's (no secrets) but what is listed."""
    threads = str(max(1, budget.threads))
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/tmp/hf", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "") if device.startswith("cuda") else "",
           "KDSERVE_JAIL_LIMITS": json.dumps(budget.limits())}
    return env


RUNNER = ("-I", "-B", "-m", "kdserve.worker.teacher_host")  # isolated: no PYTHON* variables, no cwd or user site on sys.path


def command(model: Path, out_dir: Path, work_dir: Path, *, mode: str, budget: Budget, device: str = "cpu",
            python: str | None = None, runner_args: Sequence[str] = RUNNER) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(argv, env, paths): how to start the runner for this model, and the paths it sees
    (`model`, `out`) to name in its requests. `work_dir` is an empty private folder (off mode's
    working directory). `runner_args` follow the interpreter (the tests run probes of the jail
    itself this way)."""
    runner = [python or sys.executable, *runner_args]
    env = child_env(budget, device)
    if mode == "off":
        env["HOME"] = env["TMPDIR"] = str(work_dir)
        env["HF_HOME"] = str(work_dir / "hf")
        return runner, env, {"model": str(model), "out": str(out_dir), "cwd": str(work_dir)}
    bwrap = shutil.which("bwrap") or "bwrap"
    # bwrap itself gets the same bare environment: its own /proc/N/environ is readable from inside.
    argv = [bwrap, *namespace_args(), "--as-pid-1", "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += _system_args()
    # /tmp first: a code folder under the host's /tmp (a virtualenv there, say) is bound on top of it
    argv += ["--size", str(budget.tmp_bytes), "--tmpfs", "/tmp"]
    for root in _code_roots(python):
        argv += ["--ro-bind", str(root), str(root)]
    argv += ["--ro-bind", str(model), JAIL_MODEL, "--bind", str(out_dir), JAIL_OUT,
             "--proc", "/proc", "--dev", "/dev", *_gpu_args(device), "--chdir", "/tmp", "--", *runner]
    return argv, env, {"model": JAIL_MODEL, "out": JAIL_OUT, "cwd": "/"}


# ---- framed messages over pipes -----------------------------------------------------------------
# A message: 4-byte length + JSON header (which says "arrays": N), then N times 8-byte length + .npy bytes.


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> bytes:
    head = json.dumps(dict(header, arrays=len(arrays))).encode()
    parts = [struct.pack("<I", len(head)), head]
    for arr in arrays:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        parts += [struct.pack("<Q", buf.tell()), buf.getvalue()]
    return b"".join(parts)


def decode_array(data: bytes) -> np.ndarray:
    """A .npy payload from the other side: plain numeric dtypes only, never pickled objects."""
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"unexpected array dtype {arr.dtype}")
    return arr


class Channel:
    """Blocking reads with a deadline on the child's stdout, writes to its stdin."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    def send(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
        self.writer.write(encode(header, arrays))
        self.writer.flush()

    def _wait_readable(self, deadline: float | None) -> None:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.reader.fileno()], [], [], left)[0]:
                raise TimeoutError

    def _read_exact(self, n: int, deadline: float | None) -> bytes:
        fd = self.reader.fileno()
        chunks, got = [], 0
        while got < n:
            self._wait_readable(deadline)
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def receive(self, deadline: float | None, max_array_bytes: int, *,
                message_deadline: float | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The next message. `deadline` bounds the wait for it to begin (TimeoutError before a byte
        of it is read); once it has begun it is read whole, within `message_deadline` if one is
        given — a wait cut short halfway through a message would leave the next read in its middle."""
        self._wait_readable(deadline)
        deadline = message_deadline
        (size,) = struct.unpack("<I", self._read_exact(4, deadline))
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"a {size}-byte message header")
        header = json.loads(self._read_exact(size, deadline))
        if not isinstance(header, dict):
            raise ValueError("the message header is not an object")
        arrays, total = [], 0
        for _ in range(int(header.get("arrays", 0))):
            (n,) = struct.unpack("<Q", self._read_exact(8, deadline))
            total += n
            if total > max_array_bytes:
                raise ValueError(f"the reply carries more than {max_array_bytes} bytes of arrays")
            arrays.append(decode_array(self._read_exact(n, deadline)))
        return header, arrays


# ---- the child process --------------------------------------------------------------------------


@dataclass
class Reply:
    header: dict[str, Any]
    arrays: list[np.ndarray] = field(default_factory=list)


class JailedProcess:
    """One runner child in the jail, kept for as long as its owner needs the model (a probe: one
    request; a job: every forward pass of its teacher). Use as a context manager; close() kills it
    and removes its folders.

        with JailedProcess(path, mode="bwrap", budget=Budget()) as child:
            info = child.request({"op": "load", ...}, timeout=120)
    """

    def __init__(self, model: Path, *, mode: str, budget: Budget, device: str = "cpu", python: str | None = None,
                 scratch: Path | None = None, runner_args: Sequence[str] = RUNNER):
        problem = sandbox_problem(mode)
        if problem:
            raise JailError("sandbox_unavailable", problem)
        self.budget = budget
        self._dir = Path(tempfile.mkdtemp(prefix="kdserve-jail-", dir=scratch))
        self._dir.chmod(0o700)
        self.out_dir, work = self._dir / "out", self._dir / "work"
        self.out_dir.mkdir()
        work.mkdir()
        argv, env, self.paths = command(Path(model).resolve(), self.out_dir, work, mode=mode, budget=budget,
                                        device=device, python=python, runner_args=runner_args)
        self._stderr_tail: collections.deque[bytes] = collections.deque(maxlen=64)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=env, cwd=self.paths["cwd"] if mode == "off" else "/",
                                         start_new_session=True)
        except OSError as exc:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise JailError("sandbox_unavailable", f"the teacher sandbox did not start: {exc}")
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self.channel = Channel(self.proc.stdout, self.proc.stdin)

    def _read_stderr(self) -> None:
        """Keep the last lines of what the child writes to stderr (a crash's reason) and nothing
        more: a child that writes gigabytes there costs a thread's time, no memory or disk."""
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr_tail.append(line[:2000])

    def stderr_tail(self, lines: int = 5) -> str:
        text = b"".join(list(self._stderr_tail)[-lines:]).decode("utf-8", "replace").strip()
        return text[-1500:]

    def request(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = (), *, timeout: float | None,
                on_event=None, should_stop=None) -> Reply:
        """Send one request and wait for its final reply. Interim `{"event": …}` messages go to
        on_event; should_stop() (asked about once a second) ends the wait by killing the child."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.channel.send(header, arrays)
            while True:
                slice_end = time.monotonic() + 1.0 if should_stop else deadline
                if deadline is not None and slice_end is not None:
                    slice_end = min(slice_end, deadline)
                try:
                    head, got = self.channel.receive(slice_end, self.budget.max_reply_bytes,
                                                     message_deadline=deadline)
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                    if should_stop and should_stop():
                        self.close()
                        raise JailError("cancelled", "stopped while the teacher was running")
                    continue
                if "event" in head and on_event is not None:
                    on_event(head)
                    continue
                return Reply(head, got)
        except TimeoutError:
            self.close()
            raise JailError("timeout", f"the teacher did not answer within {timeout:.0f} s")
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.proc.wait(timeout=10)
            raise JailError("teacher_crashed", self._crash_reason())
        except (ValueError, struct.error) as exc:
            self.close()
            raise JailError("teacher_crashed", f"the teacher's process broke the protocol: {exc}")

    def _crash_reason(self) -> str:
        code = self.proc.returncode
        # bubblewrap reports its child's death by signal N as exit status 128 + N; a child running
        # without it (KDSERVE_JAIL=off) shows up as -N. The runner is PID 1 of its namespace, so
        # SIGXCPU does not end it: the hard CPU limit's SIGKILL, 5 s later, does.
        number = -code if code is not None and code < 0 else code - 128 if code is not None and code > 128 else None
        if number is not None:
            sig = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
            why = {"SIGKILL": " (killed: over its CPU time budget?)", "SIGXCPU": " (over its CPU time budget)",
                   "SIGSYS": " (a forbidden system call)", "SIGSEGV": " (a crash)"}.get(sig, "")
            text = f"the teacher's process died with {sig}{why}"
        else:
            text = f"the teacher's process exited with status {code}"
        tail = self.stderr_tail(2)
        return f"{text}: {tail}" if tail else text

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "JailedProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- seccomp: what the child installs on itself before it reads the model ----------------------

# Syscall numbers of the calls refused, per architecture (from the kernel's unistd tables).
_SYSCALLS = {
    "x86_64": {"arch": 0xC000003E, "execve": 59, "execveat": 322, "fork": 57, "vfork": 58, "clone": 56, "clone3": 435,
               "socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165,
               "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "bpf": 321,
               "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249, "userfaultfd": 323,
               "kexec_load": 246, "init_module": 175, "finit_module": 313, "delete_module": 176,
               "io_uring_setup": 425, "open_by_handle_at": 304, "personality": 135},
    "aarch64": {"arch": 0xC00000B7, "execve": 221, "execveat": 281, "clone": 220, "clone3": 435, "socket": 198,
                "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
                "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241,
                "keyctl": 219, "add_key": 217, "request_key": 218, "userfaultfd": 282, "kexec_load": 104,
                "init_module": 105, "finit_module": 273, "delete_module": 106, "io_uring_setup": 425,
                "open_by_handle_at": 265, "personality": 92},
}
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS = 1, 38
_CLONE_THREAD, _AF_UNIX = 0x00010000, 1


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The classic-BPF program (struct sock_filter[]) of the filter, or None for an architecture
    without a table. Wrong architecture: kill. clone: allowed only for threads (CLONE_THREAD).
    socket: AF_UNIX only. clone3: ENOSYS (glibc then falls back to clone, which is checked).
    x32 syscalls on x86_64: refused. Every other listed call: EPERM. The rest: allowed."""
    table = _SYSCALLS.get(machine or platform.machine())
    if table is None:
        return None
    denied = [nr for name, nr in table.items() if name not in ("arch", "clone", "clone3", "socket")]
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    prog: list[tuple[int, int, int, int]] = []
    # Jump targets are filled in once the program's length is known; labels are instruction indices.
    fixups: list[tuple[int, str, str]] = []

    def op(code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        if isinstance(jt, str) or isinstance(jf, str):
            fixups.append((len(prog), str(jt) if isinstance(jt, str) else "", str(jf) if isinstance(jf, str) else ""))
        prog.append((code, jt if isinstance(jt, int) else 0, jf if isinstance(jf, int) else 0, k))

    op(LD, 4)                                  # seccomp_data.arch
    op(JEQ, table["arch"], 1, 0)
    op(RET, _KILL)
    op(LD, 0)                                  # seccomp_data.nr
    if table is _SYSCALLS["x86_64"]:
        op(JGE, 0x40000000, "deny", 0)         # the x32 ABI
    op(JEQ, table["clone"], "clone", 0)
    op(JEQ, table["clone3"], "nosys", 0)
    op(JEQ, table["socket"], "socket", 0)
    for nr in denied:
        op(JEQ, nr, "deny", 0)
    op(RET, _ALLOW)
    labels = {"clone": len(prog)}
    op(LD, 16)                                 # args[0], low 32 bits: clone's flags
    op(JSET, _CLONE_THREAD, "allow", "deny")
    labels["socket"] = len(prog)
    op(LD, 16)                                 # args[0]: socket's family
    op(JEQ, _AF_UNIX, "allow", "deny")
    labels["allow"] = len(prog)
    op(RET, _ALLOW)
    labels["deny"] = len(prog)
    op(RET, _ERRNO | _EPERM)
    labels["nosys"] = len(prog)
    op(RET, _ERRNO | _ENOSYS)
    for index, jt, jf in fixups:
        code, t, f, k = prog[index]
        if jt:
            t = labels[jt] - index - 1
        if jf:
            f = labels[jf] - index - 1
        assert 0 <= t < 256 and 0 <= f < 256
        prog[index] = (code, t, f, k)
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


def install_seccomp() -> None:
    """Install the filter on the calling process (and its threads to come). Irreversible."""
    program = seccomp_program()
    if program is None:
        raise OSError(f"no seccomp table for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = SockFprog(len(program) // 8, program)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
