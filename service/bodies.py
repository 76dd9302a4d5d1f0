"""JSON request bodies (/v1/jobs, /v1/models/{id}/predict, /v2 infer): read with a cap, parsed
without holding the event loop. Multipart uploads have their own reader (service/uploads.py).

    raw = await bodies.read(request, settings.max_request_bytes)   # 413 on Content-Length or past the cap
    body = await app.state.parser.parse(InferRequest, raw)        # a validated model, else RequestValidationError

Callers check the API key before they call read(): a caller without a valid key never has its body
read (uvicorn reads at most about 64 KiB ahead of the application, then stops reading the socket).

Why a child process and not a thread: a JSON parse (the standard library's, or pydantic-core's)
holds Python's GIL from its first byte to its last, so in a worker thread it stops the event loop,
and every other thread, just as long (measured: parsing a 16 MiB infer body in a thread left the
loop silent for nearly the whole parse). So a body over PARSE_ON_LOOP_BYTES is parsed and
validated in a child process (KDSERVE_PARSE_PROCESSES of them). What comes back is pickled: a
list of floats would cost nearly as much to unpickle as to parse, so the models' `pack_numbers()`
turns their rectangular number lists into numpy arrays there first (a memcpy to unpickle), and the
handlers treat an array exactly as the list it came from (np.array(array) == np.array(list)).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from kdserve.service.errors import ApiError

PARSE_ON_LOOP_BYTES = 64 * 1024  # pydantic-core parses this in about half a millisecond
MAX_ERRORS = 10  # validation errors carried back (the answer names the first)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends
TASKS_PER_CHILD = 1000  # a child is replaced after this many parses (memory left fragmented by large ones)

M = TypeVar("M", bound=BaseModel)


REQUEST_LIMIT = "KDSERVE_MAX_REQUEST_BYTES; send fewer rows per request"


def too_large(size: int | str, cap: int, why: str) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body ({size} bytes) is over the {cap}-byte limit ({why})")


async def read(request: Request, cap: int, why: str = REQUEST_LIMIT) -> bytes:
    """The whole body, refused with 413 when its Content-Length says more than `cap` (nothing is
    read then) or as soon as the bytes streamed in pass it (chunked, or a lying length)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large(declared, cap, why)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_large(f"more than {cap}", cap, why)
        chunks.append(chunk)
    return b"".join(chunks)


def is_json(request: Request) -> bool:
    """A JSON Content-Type (application/json or a +json type); none at all counts as JSON."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def validate(model: type[M], raw: bytes) -> M | list[dict]:
    """The model from JSON bytes, or its validation errors as FastAPI's RequestValidationError
    carries them (loc from "body"): plain data, so they cross a process boundary."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        return [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]}
                for e in exc.errors(include_url=False)[:MAX_ERRORS]]


def number_array(data: Any) -> Any:
    """`data` as the numpy array np.array() makes of it when that is a rectangular array of
    numbers or booleans; anything else (strings, nulls, ragged nesting) unchanged."""
    if not isinstance(data, list):
        return data
    try:
        arr = np.array(data)
    except (ValueError, OverflowError):
        return data
    return arr if arr.dtype.kind in "biuf" else data


def _validate_packed(model: type[M], raw: bytes) -> M | list[dict]:
    """validate(), run in a child: numbers packed into arrays for the trip back."""
    value = validate(model, raw)
    if not isinstance(value, list) and hasattr(value, "pack_numbers"):
        value.pack_numbers()
    return value


def _die_with(parent: int) -> None:
    """A parse child's initializer: end this child when the API process that started it ends.

    A pool's children hold both ends of their task queue, so when the API process is killed
    (SIGKILL, out of memory) they never see the queue close and would wait on it forever, each
    holding its imports (about 80 MB): Linux is asked to kill this child with its parent
    (PR_SET_PDEATHSIG), and a thread checks for a new parent once a second where it cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() == parent:
            return  # the kernel ends this child when its parent thread ends: nothing to watch
    except (AttributeError, OSError, TypeError):  # not Linux
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _warm(models: tuple[type[BaseModel], ...]) -> int:
    """Nothing to do: receiving `models` (pickled by reference) imported their modules in the child."""
    return len(models)


class BodyParser:
    """Parses JSON bodies: small ones right here, larger ones in child processes."""

    def __init__(self, processes: int):
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def start(self, *models: type[BaseModel]) -> None:
        """Start the children and import what parsing `models` needs now (about a second), not on
        the first large body."""
        self._executor().submit(_warm, models)

    async def parse(self, model: type[M], raw: bytes) -> M:
        if len(raw) <= PARSE_ON_LOOP_BYTES:
            value = validate(model, raw)
        else:
            try:
                value = await asyncio.get_running_loop().run_in_executor(self._executor(), _validate_packed, model, raw)
            except BrokenProcessPool:  # a child died (killed, out of memory): a new pool for the next body
                self.close()
                raise ApiError(503, "unavailable", "the process parsing request bodies died; retry") from None
        if isinstance(value, list):
            raise RequestValidationError(value)
        return value

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             max_tasks_per_child=TASKS_PER_CHILD, initializer=_die_with,
                                             initargs=(os.getpid(),))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def check_rows(rows: int, cap: int, param: str | None = None) -> None:
    """413 when a request has more rows (samples, texts) than KDSERVE_MAX_REQUEST_ROWS."""
    if rows > cap:
        raise ApiError(413, "payload_too_large", f"the request has {rows} rows; the limit is {cap} per request "
                       "(KDSERVE_MAX_REQUEST_ROWS): split it", param)
