"""Uploaded datasets are parsed in a child process with a memory limit, never in the API process.

Why a child: the readers are bounded by design (service/ingest.py), but a bound that only holds
if every reader is right is not enough for input written by an attacker. A child process whose
address space is capped (RLIMIT_AS, KDSERVE_DATASET_PARSE_MEMORY_BYTES beyond what Python and
NumPy take at start) fails with MemoryError, answered as a 413, where the same input in the API
process would grow it until the kernel's OOM killer ends it, and `kdserve up` with it. A wall
clock limit (KDSERVE_DATASET_PARSE_TIMEOUT_S) kills a parse that runs too long. The event loop
only awaits the child; a client that goes away takes the child with it.

The protocol is one JSON object each way: the request on the child's stdin, and on its stdout
either {"format", "summary"} (the canonical npz written to `dst`) or {"error": {status, code,
message, param}}; both carry the child's time and peak RSS, which the API logs.

    python -m kdserve.service.ingest_child < request.json
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kdserve.service import ingest
from kdserve.service.ingest_errors import DatasetError

if TYPE_CHECKING:
    from kdserve.service.settings import Settings

log = logging.getLogger("kdserve.api")
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # no BLAS thread pools to map
CHILD_COMMAND = (sys.executable, "-I", "-m", "kdserve.service.ingest_child")  # -I: no working directory on sys.path


async def parse_upload(src: Path, dst: Path, settings: "Settings", *, fmt: str | None, filename: str | None,
                       columns: dict[str, str]) -> tuple[str, dict]:
    """(format, summary) of the upload at `src`, its canonical npz written to `dst`; DatasetError
    for anything wrong with it. `columns`: label_column, text_column, text_pair_column."""
    request = child_request(src, dst, settings, fmt=fmt, filename=filename, columns=columns)
    proc = await asyncio.create_subprocess_exec(*CHILD_COMMAND, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=child_env())
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()),
                                          settings.dataset_parse_timeout_s)
    except asyncio.TimeoutError:
        await _kill(proc)
        raise DatasetError("payload_too_large", f"parsing the dataset took longer than "
                           f"{settings.dataset_parse_timeout_s:g} s (KDSERVE_DATASET_PARSE_TIMEOUT_S)", status=413)
    except asyncio.CancelledError:  # the request was abandoned: no child outlives it
        await asyncio.shield(_kill(proc))
        raise
    return _outcome(proc.returncode, out, err)


def child_request(src: Path, dst: Path, settings: "Settings", *, fmt: str | None, filename: str | None,
                  columns: dict[str, str]) -> dict:
    """What the child reads on its stdin (bench/datasets.py runs the child with it too)."""
    return {"src": str(src), "dst": str(dst), "format": fmt, "filename": filename, **columns,
            "max_bytes": settings.max_dataset_bytes, "max_classes": settings.max_classes,
            "memory_bytes": settings.dataset_parse_memory_bytes}


def child_env() -> dict[str, str]:
    return {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


def _outcome(returncode: int, out: bytes, err: bytes) -> tuple[str, dict]:
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    answer = answer if isinstance(answer, dict) else {}
    if "error" in answer:
        log.info("dataset refused in %.2f s, peak %s MiB: %s", answer["seconds"], answer["peak_rss_mib"],
                 answer["error"]["message"])
        raise DatasetError(**answer["error"])
    if returncode == 0 and "summary" in answer:
        log.info("dataset parsed (%s, %d rows) in %.2f s, peak %s MiB", answer["format"],
                 answer["summary"]["num_rows"], answer["seconds"], answer["peak_rss_mib"])
        return answer["format"], answer["summary"]
    # No answer: killed (a signal from the kernel, a crash in a C reader) or a bug of ours, logged.
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    log.error("the dataset parser stopped without an answer (%s): %s", how, err.decode(errors="replace")[-4000:])
    raise DatasetError("invalid_request", f"the dataset could not be parsed (the parser stopped: {how}); "
                       "the error has been logged")


# ---- the child ------------------------------------------------------------------------------


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    started = time.perf_counter()
    _limit_memory(request["memory_bytes"])
    answer = _answer(request)
    if "error" in answer:
        Path(request["dst"]).unlink(missing_ok=True)
    answer.update(seconds=round(time.perf_counter() - started, 3), peak_rss_mib=_status_kib("VmHWM") // 1024)
    sys.stdout.write(json.dumps(answer))


def _answer(request: dict) -> dict:
    try:
        return _parse(request)
    except DatasetError as exc:
        return {"error": exc.as_dict()}
    except MemoryError:
        pass  # answered below, once the frames that held the big arrays are gone
    return {"error": DatasetError("payload_too_large", f"parsing this dataset needs more than the "
                                  f"{request['memory_bytes']} bytes of memory it may use "
                                  "(KDSERVE_DATASET_PARSE_MEMORY_BYTES)", status=413).as_dict()}


def _parse(request: dict) -> dict:
    src, dst = Path(request["src"]), Path(request["dst"])
    fmt = request["format"]
    if fmt is None:
        with open(src, "rb") as f:
            fmt = ingest.detect_format(request["filename"], f.read(4096))
    limits = ingest.Limits(max_bytes=request["max_bytes"], max_classes=request["max_classes"])
    parsed = ingest.parse(src, fmt, request["label_column"], request["text_column"], request["text_pair_column"],
                          limits=limits)
    parsed.save(dst)
    if dst.stat().st_size > limits.max_bytes:  # text (JSONL) is only measured once it is packed
        raise DatasetError("payload_too_large", f"the parsed dataset takes {dst.stat().st_size} bytes, over the "
                           f"{limits.max_bytes}-byte limit (KDSERVE_MAX_DATASET_BYTES)", status=413)
    return {"format": fmt, "summary": parsed.summary()}


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmSize: address space, VmHWM: peak RSS); 0 off Linux.
    Not getrusage's ru_maxrss: Linux carries that over from the parent across fork and exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0


def _limit_memory(budget: int) -> None:
    """Cap the address space at what the interpreter maps now (Python, NumPy) plus `budget`."""
    mapped = _status_kib("VmSize") * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = mapped + budget if hard == resource.RLIM_INFINITY else min(mapped + budget, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


if __name__ == "__main__":
    main()
