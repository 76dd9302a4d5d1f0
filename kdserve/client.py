"""kdserve Python SDK: a typed client for the HTTP API in API.md, sync (`Client`) and async
(`AsyncClient`), built on httpx.

    from kdserve.client import Client

    kd = Client()                                   # KDSERVE_URL / KDSERVE_API_KEY / .kdserve/api_key
    teacher = kd.teachers.create("teacher.pt")
    data = kd.datasets.create("digits.csv", label_column="digit")
    job = kd.jobs.create(teacher_id=teacher.id, dataset_id=data.id, student="mlp", method="kd",
                         training={"epochs": 20})
    job = kd.jobs.wait(job.id, on_event=print)      # follows Server-Sent Events, polls as a fallback
    kd.models.download(job.model_id, "student.onnx")  # resumable, sha256-checked, atomic

How it is put together, for a newcomer:
- Every API call is first described as a `_Call` (method, path, body, how to parse the answer) by
  a `_*Calls` class shared by both clients; `Client._run` and `AsyncClient._run` only do the I/O.
  So the sync and async resources are thin twins and the request shapes live in one place.
- The two long operations (following a job, downloading a file) keep their decisions in shared
  state objects (`_Follow`, `_Download`); the sync and async loops around them only move bytes.
- Answers are the pydantic models of service/schemas.py (the server's own contract), plus a few
  client-side models for lists, the catalogue, downloads and /v2 inference.
- Every error answer becomes a `KdserveError` subclass carrying the API's `code`, `message`,
  `param` and HTTP `status`.

The SDK never imports torch (nor numpy, unless `infer` is given numpy arrays' shapes to compute).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Generic, Iterator, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

from kdserve.service.filenames import safe_basename
from kdserve.service.schemas import (DatasetOut, EventOut, ExportSpec, JobCreate, JobOut, MethodSpec, ModelOut, PredictOut,
                             StudentSpec, TeacherOut, TrainingSpec)

__all__ = [
    "Client", "AsyncClient", "KdserveError", "APIConnectionError", "InvalidRequest", "Unauthorized",
    "PermissionDenied", "NotFound", "Conflict", "PayloadTooLarge", "RateLimited", "ServiceUnavailable",
    "ServerError", "ChecksumMismatch", "WaitTimeout", "Page", "MethodInfo", "ArchitectureInfo", "DownloadResult",
    "InferResponse", "InferOutput", "TERMINAL_STATUSES", "resolve_base_url", "resolve_api_key",
]

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = (502, 503, 504)  # the server or a proxy in front of it is restarting or overloaded
T = TypeVar("T")


# ---- where the service is and who we are ------------------------------------------------------
# The SDK runs on the user's machine, not in the service, so it reads its own two environment
# variables instead of service/settings.py (whose validation of server-side knobs must not break
# a client).


def resolve_base_url(base_url: str | None = None) -> str:
    """The argument, else env KDSERVE_URL, else http://127.0.0.1:8000 (what `kdserve up` serves)."""
    return (base_url or os.environ.get("KDSERVE_URL") or DEFAULT_URL).rstrip("/")


def resolve_api_key(api_key: str | None = None) -> str | None:
    """The argument, else env KDSERVE_API_KEY, else the key `kdserve up` wrote to
    `<KDSERVE_DATA_DIR or ./.kdserve>/api_key`; None when there is none (a server with auth
    disabled needs none)."""
    if api_key:
        return api_key
    if os.environ.get("KDSERVE_API_KEY"):
        return os.environ["KDSERVE_API_KEY"]
    key_file = Path(os.environ.get("KDSERVE_DATA_DIR") or ".kdserve") / "api_key"
    try:
        return key_file.read_text().strip() or None
    except OSError:
        return None


# ---- errors -------------------------------------------------------------------------------------


class KdserveError(Exception):
    """An error answer of the API (or no answer at all): `code` is the API's machine code
    (`not_found`, `invalid_request`, …), `param` the request field at fault, `status` the HTTP
    status (None when the service could not be reached)."""

    def __init__(self, message: str, *, code: str = "error", param: str | None = None, status: int | None = None,
                 response: httpx.Response | None = None):
        super().__init__(message)
        self.message, self.code, self.param, self.status, self.response = message, code, param, status, response

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        status = f"{self.status} " if self.status else ""
        return f"{status}{self.code}: {self.message}{where}"

    def to_dict(self) -> dict:
        """The API's error shape, plus the status: what `kdserve … --json` prints."""
        return {"error": {"code": self.code, "message": self.message, "param": self.param}, "status": self.status}


class APIConnectionError(KdserveError):
    """The service did not answer (down, wrong URL, network)."""


class InvalidRequest(KdserveError):
    """400/422: the request is wrong; `param` names the field."""


class Unauthorized(KdserveError):
    """401: missing, invalid or revoked API key."""


class PermissionDenied(KdserveError):
    """403."""


class NotFound(KdserveError):
    """404: no such resource (or it belongs to another tenant)."""


class Conflict(KdserveError):
    """409: e.g. the resource is in use, the job already ended, an Idempotency-Key reused."""


class PayloadTooLarge(KdserveError):
    """413: the upload is over the server's limit."""


class RateLimited(KdserveError):
    """429."""


class ServiceUnavailable(KdserveError):
    """503 (and 502/504): a dependency such as the job queue is down; retry later."""


class ServerError(KdserveError):
    """Any other 5xx: a bug in the service."""


class ChecksumMismatch(KdserveError):
    """A downloaded file's sha256 is not the one the model card and ETag announce."""


class WaitTimeout(KdserveError, TimeoutError):
    """`jobs.wait(timeout=…)` ran out before the job ended."""


_ERRORS_BY_STATUS: dict[int, type[KdserveError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: PermissionDenied, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited, 502: ServiceUnavailable, 503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def error_from_response(response: httpx.Response) -> KdserveError:
    """/v1 errors are `{"error": {"code", "message", "param"}}`; /v2 (Open Inference Protocol)
    errors are `{"error": "<message>"}`; anything else (a proxy's HTML page) keeps its text."""
    status = response.status_code
    cls = _ERRORS_BY_STATUS.get(status) or (ServerError if status >= 500 else KdserveError)
    code, message, param = f"http_{status}", response.text[:500] or response.reason_phrase, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code, message, param = err.get("code") or code, err.get("message") or message, err.get("param")
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        code = {400: "invalid_request", 401: "unauthorized", 404: "not_found"}.get(status, code)
    return cls(message, code=code, param=param, status=status, response=response)


# ---- client-side models (the server's own are imported from kdserve.service.schemas) -----------------


class Page(BaseModel, Generic[T]):
    """One page of a list: newest first; pass the last item's id as `after` for the next."""

    object: str = "list"
    data: list[T]
    has_more: bool


class MethodInfo(BaseModel):
    """A distillation method from GET /v1/methods; `params` is its JSON schema with defaults."""

    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    needs_teacher: bool = True
    needs_labels: bool = False
    requires: list[str] = []
    params: dict[str, Any] = {}
    reference: str | None = None


class ArchitectureInfo(BaseModel):
    """A student architecture from GET /v1/architectures."""

    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    params: dict[str, Any] = {}


class DownloadResult(BaseModel):
    path: Path
    sha256: str
    size_bytes: int
    resumed_from: int = 0  # bytes already on disk (a .part file) that did not travel again


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]

    def numpy(self):
        """The tensor as a numpy array of its shape."""
        import numpy as np

        return np.asarray(self.data).reshape(self.shape)


class InferResponse(BaseModel):
    """An Open Inference Protocol v2 answer."""

    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]

    def output(self, name: str | None = None) -> InferOutput:
        """The output called `name`, or the first one."""
        if name is None:
            return self.outputs[0]
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(f"no output {name!r}; the outputs are {[o.name for o in self.outputs]}")


@dataclass
class ServerSentEvent:
    id: str | None
    event: str
    data: str


class SSEDecoder:
    """text/event-stream, line by line (WHATWG rules that matter here: `id`, `event`, multi-line
    `data`, `:` comments such as the server's keep-alives, a blank line ends an event)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        if line == "":
            if not self._data:
                self._event = None
                return None
            event = ServerSentEvent(self.last_id, self._event or "message", "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


# ---- requests, described once for both clients --------------------------------------------------


@dataclass
class _Call:
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    form: dict[str, str] | None = None
    upload: Path | None = None            # sent as the multipart field `file`
    headers: dict[str, str] | None = None
    parse: Callable[[httpx.Response], Any] | None = None
    retry: bool = False                   # safe to send again after a connection error or 502/503/504


def _page(model: type[BaseModel]) -> Callable[[httpx.Response], Page]:
    return lambda r: Page[model].model_validate_json(r.content)  # type: ignore[valid-type]


def _one(model: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda r: model.model_validate_json(r.content)


def _seg(value: str) -> str:
    """An id as one path segment: `../x` or an empty id must not reach another route."""
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise InvalidRequest(f"not a valid id: {value!r}", code="invalid_request")
    return value


def _list_params(limit: int, after: str | None, **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in {"limit": limit, "after": after, **extra}.items() if v is not None}


def _upload_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"{p} is not a readable file", code="invalid_request", param="file")
    return p


def _form(**fields: Any) -> dict[str, str]:
    return {k: v for k, v in fields.items() if v is not None}


class _UploadCalls:
    """GET/list/DELETE of the two uploaded resources (teachers, datasets)."""

    kind: str
    model: type[BaseModel]

    def _get(self, id: str) -> _Call:
        return _Call("GET", f"/v1/{self.kind}/{_seg(id)}", parse=_one(self.model), retry=True)

    def _list(self, limit: int, after: str | None) -> _Call:
        return _Call("GET", f"/v1/{self.kind}", params=_list_params(limit, after), parse=_page(self.model), retry=True)

    def _delete(self, id: str) -> _Call:  # not retried: a repeat after a lost answer would be a 404
        return _Call("DELETE", f"/v1/{self.kind}/{_seg(id)}")


class _TeacherCalls(_UploadCalls):
    kind, model = "teachers", TeacherOut

    def _create(self, path, name, format, input_shape) -> _Call:
        shape = json.dumps(list(input_shape)) if input_shape is not None else None
        return _Call("POST", "/v1/teachers", upload=_upload_path(path),
                     form=_form(name=name, format=format, input_shape=shape), parse=_one(TeacherOut))


class _DatasetCalls(_UploadCalls):
    kind, model = "datasets", DatasetOut

    def _create(self, path, name, format, label_column) -> _Call:
        return _Call("POST", "/v1/datasets", upload=_upload_path(path),
                     form=_form(name=name, format=format, label_column=label_column), parse=_one(DatasetOut))


def _as_dict(value: Any, key: str | None = None) -> Any:
    """A pydantic spec (only the fields set), a plain dict, or a bare name for `key`."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, str) and key:
        return {key: value}
    return value


def job_body(body: JobCreate | dict | None = None, **fields: Any) -> dict:
    """The JSON of POST /v1/jobs: `body` (a JobCreate or a dict, e.g. a job.json file) with the
    keyword fields on top. `student="mlp"` and `method="kd"` are short for `{"architecture": "mlp"}`
    and `{"name": "kd"}`. The server validates it (one source of truth for defaults and errors)."""
    out = dict(_as_dict(body) or {})
    for name, value in fields.items():
        if value is None:
            continue
        out[name] = _as_dict(value, {"student": "architecture", "method": "name"}.get(name))
    return out


class _JobCalls:
    def _create(self, body, idempotency_key, fields) -> _Call:
        # A key of our own when the caller gave none: a retry after a lost answer then returns the
        # job already created instead of queueing a second one (PEERS.md §7.8).
        key = idempotency_key or f"kdserve-py-{uuid.uuid4()}"
        return _Call("POST", "/v1/jobs", json=job_body(body, **fields), headers={"Idempotency-Key": key},
                     parse=_one(JobOut), retry=True)

    def _get(self, id: str) -> _Call:
        return _Call("GET", f"/v1/jobs/{_seg(id)}", parse=_one(JobOut), retry=True)

    def _list(self, status, limit, after) -> _Call:
        return _Call("GET", "/v1/jobs", params=_list_params(limit, after, status=status), parse=_page(JobOut), retry=True)

    def _cancel(self, id: str) -> _Call:
        return _Call("POST", f"/v1/jobs/{_seg(id)}/cancel", parse=_one(JobOut))  # a repeat could be a 409

    def _events(self, id: str, after: int, limit: int) -> _Call:
        return _Call("GET", f"/v1/jobs/{_seg(id)}/events", params={"after": after, "limit": limit},
                     parse=_page(EventOut), retry=True)


def _rows(inputs: Any) -> list:
    """A batch as JSON lists: numpy arrays (anything with .tolist()) or nested lists."""
    return inputs.tolist() if hasattr(inputs, "tolist") else list(inputs)


class _ModelCalls:
    def _get(self, id: str) -> _Call:
        return _Call("GET", f"/v1/models/{_seg(id)}", parse=_one(ModelOut), retry=True)

    def _list(self, limit, after) -> _Call:
        return _Call("GET", "/v1/models", params=_list_params(limit, after), parse=_page(ModelOut), retry=True)

    def _delete(self, id: str) -> _Call:
        return _Call("DELETE", f"/v1/models/{_seg(id)}")

    def _predict(self, id: str, inputs: Any, precision: str) -> _Call:
        return _Call("POST", f"/v1/models/{_seg(id)}/predict", params={"precision": precision},
                     json={"inputs": _rows(inputs)}, parse=_one(PredictOut), retry=True)

    @staticmethod
    def _v2_path(model: str, version: str | None) -> str:
        return f"/v2/models/{_seg(model)}" + (f"/versions/{_seg(version)}" if version else "")

    def _v2_metadata(self, model: str, version: str | None) -> _Call:
        return _Call("GET", self._v2_path(model, version), parse=lambda r: r.json(), retry=True)

    def _v2_infer(self, model, version, inputs, metadata, request_id, outputs) -> _Call:
        body: dict[str, Any] = {"inputs": _v2_inputs(inputs, metadata)}
        if request_id is not None:
            body["id"] = request_id
        if outputs:
            body["outputs"] = [{"name": n} for n in outputs]
        return _Call("POST", self._v2_path(model, version) + "/infer", json=body, parse=_one(InferResponse), retry=True)


def _v2_inputs(inputs: Any, metadata: dict) -> list[dict]:
    """Tensors for an infer request: one array (for the model's single input) or {name: array};
    shapes and datatypes come from the arrays and the model's metadata."""
    import numpy as np

    declared = {t["name"]: t for t in metadata.get("inputs", [])}
    if not isinstance(inputs, dict):
        if len(declared) != 1:
            raise InvalidRequest(f"the model has inputs {sorted(declared)}: pass a dict of them", code="invalid_request",
                                 param="inputs")
        inputs = {next(iter(declared)): inputs}
    tensors = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        datatype = declared.get(name, {}).get("datatype") or {"f": "FP32", "i": "INT64", "u": "INT64",
                                                                "b": "BOOL"}.get(arr.dtype.kind, "FP32")
        tensors.append({"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr.ravel().tolist()})
    return tensors


def _v2_missing(exc: NotFound) -> NotFound:
    """A 404 for the route itself (not for the model): the server predates /v2 serving."""
    if exc.message == "Not Found":
        return NotFound("this server does not serve the Open Inference Protocol (/v2); use models.predict",
                        code="not_found", status=404, response=exc.response)
    return exc


# ---- following a job ----------------------------------------------------------------------------


@dataclass
class _Follow:
    """The decisions of `jobs.wait`, shared by both clients: where the event stream resumes, when
    to give up on Server-Sent Events and poll instead, when the deadline has passed."""

    job_id: str
    on_event: Callable[[EventOut], Any] | None
    timeout: float | None
    poll_interval: float
    stream_read_timeout: float
    use_sse: bool
    max_reconnects: int = 5
    last_id: int = 0
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float | None:
        return None if self.timeout is None else self.timeout - (time.monotonic() - self.started)

    def check_deadline(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise WaitTimeout(f"job {self.job_id} did not end within {self.timeout} s", code="timeout")

    def stream_request(self) -> tuple[dict[str, str], httpx.Timeout]:
        headers = {"Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = str(self.last_id)  # the server resumes after this event
        left = self.remaining()
        read = self.stream_read_timeout if left is None else max(0.1, min(self.stream_read_timeout, left))
        return headers, httpx.Timeout(10.0, read=read)

    def deliver(self, event: EventOut) -> None:
        if event.id <= self.last_id:  # already seen (a resumed stream never repeats, but be sure)
            return
        self.last_id = event.id
        if self.on_event is not None:
            self.on_event(event)

    def on_sse(self, sse: ServerSentEvent) -> None:
        self.failures = 0
        self.deliver(EventOut.model_validate_json(sse.data))

    def stream_failed(self) -> bool:
        """Count a broken stream; True (and SSE off) when it is time to fall back to polling."""
        self.failures += 1
        if self.failures > self.max_reconnects:
            self.use_sse = False
        return not self.use_sse

    def backoff(self) -> float:
        return min(0.25 * 2 ** self.failures, 5.0)


# ---- downloading a model ------------------------------------------------------------------------


class _Download:
    """The decisions of `models.download`, shared by both clients.

    The file grows in `<path>.part`; a later call resumes it with `Range: bytes=<size>-` and
    `If-Range: <ETag>` (so a changed file is sent whole, never spliced). The result is hashed and
    compared with the model card's sha256 (which the ETag also carries) before an atomic rename.
    A resumed file that does not match is downloaded once more from the start."""

    def __init__(self, card: ModelOut, precision: str, format: str, path: str | os.PathLike | None):
        artifact = next((a for a in card.artifacts if a.precision == precision and a.format == format), None)
        if artifact is None:
            have = [f"{a.format}/{a.precision}" for a in card.artifacts]
            raise NotFound(f"model {card.id} has no {format}/{precision} artifact; it has {have}", code="not_found",
                           param="precision", status=404)
        self.sha256, self.size = artifact.sha256, artifact.size_bytes
        self.etag = f'"{artifact.sha256}"'
        # the card's name is whoever started the job's choice: only its sanitised basename is used
        default_name = f"{safe_basename(card.name) or card.id}.{precision}.{format}"
        dest = Path(path) if path is not None else Path(default_name)
        self.dest = dest / default_name if dest.is_dir() else dest
        self.part = self.dest.with_name(self.dest.name + ".part")
        self.params = {"format": format, "precision": precision}
        self.resumed_from = 0
        self.fresh_restart_done = False

    def already_there(self) -> bool:
        return self.dest.is_file() and self.dest.stat().st_size == self.size and _sha256(self.dest) == self.sha256

    def offset(self) -> int:
        """Bytes already in the .part file (0 when it is absent or cannot be ours)."""
        have = self.part.stat().st_size if self.part.is_file() else 0
        if have > self.size:
            self.part.unlink()
            return 0
        if have == self.size:  # complete but never renamed (interrupted before the check)
            self.resumed_from = have
        return have

    def request_headers(self, offset: int) -> dict[str, str]:
        return {"Range": f"bytes={offset}-", "If-Range": self.etag} if offset else {}

    def open_for(self, response: httpx.Response, offset: int):
        """The .part file opened to append (206 from `offset`) or rewritten (200: whole file)."""
        etag = response.headers.get("etag")
        if etag and etag != self.etag:
            raise ChecksumMismatch(f"the server's ETag {etag} is not the model card's sha256 {self.sha256}; the "
                                   "model changed while downloading, retry", code="checksum_mismatch")
        if response.status_code == 206:
            start = response.headers.get("content-range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                raise KdserveError(f"asked for bytes from {offset}, the server sent {response.headers.get('content-range')}",
                                   code="bad_range")
            self.resumed_from = max(self.resumed_from, offset)
            return open(self.part, "ab")
        self.part.parent.mkdir(parents=True, exist_ok=True)
        return open(self.part, "wb")

    def finish(self) -> DownloadResult | None:
        """Verify and publish; None when a resumed file did not verify and must start over."""
        digest = _sha256(self.part)
        if digest != self.sha256:
            self.part.unlink()
            if self.resumed_from and not self.fresh_restart_done:
                self.fresh_restart_done, self.resumed_from = True, 0
                return None
            raise ChecksumMismatch(f"downloaded file has sha256 {digest}, the model card says {self.sha256}",
                                   code="checksum_mismatch")
        os.replace(self.part, self.dest)
        return DownloadResult(path=self.dest, sha256=digest, size_bytes=self.dest.stat().st_size,
                              resumed_from=self.resumed_from)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- the sync client ----------------------------------------------------------------------------


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, max_retries: int):
        self.base_url = resolve_base_url(base_url)
        self.api_key = resolve_api_key(api_key)
        self.max_retries = max_retries
        self.headers = {"User-Agent": "kdserve-python"}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"

    def _unreachable(self, exc: Exception) -> APIConnectionError:
        return APIConnectionError(f"could not reach kdserve at {self.base_url}: {type(exc).__name__}: {exc}. Is "
                                  "`kdserve up` running, and is KDSERVE_URL / --url right?", code="connection_error")


class Client(_Base):
    """Sync client. `Client(base_url=None, api_key=None)`; see the module docstring for defaults.
    Use as a context manager, or call close()."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 300.0,
                 max_retries: int = 2):
        super().__init__(base_url, api_key, max_retries)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers,
                                  timeout=httpx.Timeout(timeout, connect=10.0))
        self.teachers = Teachers(self)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.methods = Methods(self)
        self.architectures = Architectures(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> dict:
        return self._run(_Call("GET", "/healthz", parse=lambda r: r.json(), retry=True))

    def ready(self) -> dict:
        """GET /readyz: database, broker and blob store reachable (503 → ServiceUnavailable)."""
        return self._run(_Call("GET", "/readyz", parse=lambda r: r.json()))

    def _run(self, call: _Call) -> Any:
        response = self._send(call)
        return call.parse(response) if call.parse else None

    def _send(self, call: _Call) -> httpx.Response:
        attempts = 1 + (self.max_retries if call.retry else 0)
        for attempt in range(attempts):
            try:
                if call.upload is not None:
                    with open(call.upload, "rb") as f:
                        response = self._http.request(call.method, call.path, params=call.params, data=call.form,
                                                      files={"file": (call.upload.name, f)}, headers=call.headers)
                else:
                    response = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                  headers=call.headers)
            except httpx.TransportError as exc:
                if attempt + 1 < attempts:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise self._unreachable(exc) from exc
            if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                time.sleep(0.5 * 2 ** attempt)
                continue
            if response.is_error:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")


class Teachers(_TeacherCalls):
    def __init__(self, client: Client):
        self._c = client

    def create(self, path: str | os.PathLike, *, name: str | None = None, format: str | None = None,
               input_shape: list[int] | None = None) -> TeacherOut:
        """Upload a TorchScript or ONNX teacher; it is probed on the server before it is accepted."""
        return self._c._run(self._create(path, name, format, input_shape))

    def get(self, id: str) -> TeacherOut:
        return self._c._run(self._get(id))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[TeacherOut]:
        return self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> Iterator[TeacherOut]:
        """Every teacher, newest first, page after page."""
        return _iterate(lambda after: self.list(limit=page_size, after=after))

    def delete(self, id: str) -> None:
        self._c._run(self._delete(id))


class Datasets(_DatasetCalls):
    def __init__(self, client: Client):
        self._c = client

    def create(self, path: str | os.PathLike, *, label_column: str | None = None, name: str | None = None,
               format: str | None = None) -> DatasetOut:
        """Upload npz (x, optional y) or CSV (header row; `label_column`, default `label`)."""
        return self._c._run(self._create(path, name, format, label_column))

    def get(self, id: str) -> DatasetOut:
        return self._c._run(self._get(id))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[DatasetOut]:
        return self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> Iterator[DatasetOut]:
        return _iterate(lambda after: self.list(limit=page_size, after=after))

    def delete(self, id: str) -> None:
        self._c._run(self._delete(id))


def _iterate(fetch: Callable[[str | None], Page]) -> Iterator:
    after = None
    while True:
        page = fetch(after)
        yield from page.data
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


class Jobs(_JobCalls):
    def __init__(self, client: Client):
        self._c = client

    def create(self, body: JobCreate | dict | None = None, *, dataset_id: str | None = None,
               student: str | dict | StudentSpec | None = None, method: str | dict | MethodSpec | None = None,
               teacher_id: str | None = None, training: dict | TrainingSpec | None = None,
               export: dict | ExportSpec | None = None, validation_dataset_id: str | None = None,
               validation_split: float | None = None, teacher_features: str | None = None,
               teacher_refinement: dict | None = None, metadata: dict[str, str] | None = None,
               idempotency_key: str | None = None) -> JobOut:
        """Queue a distillation job (every field of POST /v1/jobs). Sending the same
        `idempotency_key` and body again returns the same job."""
        fields = dict(dataset_id=dataset_id, student=student, method=method, teacher_id=teacher_id,
                      training=training, export=export, validation_dataset_id=validation_dataset_id,
                      validation_split=validation_split, teacher_features=teacher_features,
                      teacher_refinement=teacher_refinement, metadata=metadata)
        return self._c._run(self._create(body, idempotency_key, fields))

    def get(self, id: str) -> JobOut:
        return self._c._run(self._get(id))

    def list(self, *, status: str | None = None, limit: int = 20, after: str | None = None) -> Page[JobOut]:
        return self._c._run(self._list(status, limit, after))

    def iter(self, *, status: str | None = None, page_size: int = 100) -> Iterator[JobOut]:
        return _iterate(lambda after: self.list(status=status, limit=page_size, after=after))

    def cancel(self, id: str) -> JobOut:
        return self._c._run(self._cancel(id))

    def events(self, id: str, *, after: int = 0, limit: int = 100) -> Page[EventOut]:
        """Events after event id `after`, oldest first."""
        return self._c._run(self._events(id, after, limit))

    def wait(self, id: str, *, on_event: Callable[[EventOut], Any] | None = None, timeout: float | None = None,
             poll_interval: float = 1.0, use_sse: bool = True, stream_read_timeout: float = 60.0) -> JobOut:
        """Follow the job until it ends and return it (whatever its final status). Every event is
        passed to `on_event` once, in order. Events come as Server-Sent Events; a broken stream is
        resumed with Last-Event-ID, and after repeated failures (or a proxy that does not stream)
        the events and status are polled every `poll_interval` s."""
        follow = _Follow(_seg(id), on_event, timeout, poll_interval, stream_read_timeout, use_sse)
        while follow.use_sse:
            follow.check_deadline()
            headers, read_timeout = follow.stream_request()
            try:
                with self._c._http.stream("GET", f"/v1/jobs/{follow.job_id}/events", headers=headers,
                                          timeout=read_timeout) as response:
                    if response.is_error:
                        response.read()
                        raise error_from_response(response)
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        follow.use_sse = False  # something in between does not stream: poll
                        break
                    decoder = SSEDecoder()
                    for line in response.iter_lines():
                        if sse := decoder.feed(line):
                            follow.on_sse(sse)
                        follow.check_deadline()  # a busy stream never pauses: check on every line
                job = self.get(follow.job_id)
                if job.status in TERMINAL_STATUSES:
                    self._catch_up(follow)
                    return job
                # The server ends the stream only when the job ends: anything else was a cut.
            except (httpx.TransportError, ServiceUnavailable):
                pass
            if follow.stream_failed():
                break
            time.sleep(follow.backoff())
        while True:
            follow.check_deadline()
            job = self.get(follow.job_id)  # status first: the events written before it are fetched next
            self._catch_up(follow)
            if job.status in TERMINAL_STATUSES:
                return job
            time.sleep(follow.poll_interval)

    def _catch_up(self, follow: _Follow) -> None:
        """Deliver every event after the last one seen (as JSON pages)."""
        while True:
            page = self.events(follow.job_id, after=follow.last_id, limit=1000)
            for event in page.data:
                follow.deliver(event)
            if not page.has_more:
                return


class Models(_ModelCalls):
    def __init__(self, client: Client):
        self._c = client
        self._v2_meta: dict[tuple[str, str | None], dict] = {}

    def get(self, id: str) -> ModelOut:
        """The model card: accuracy, agreement, size and latency of each artifact."""
        return self._c._run(self._get(id))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[ModelOut]:
        return self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> Iterator[ModelOut]:
        return _iterate(lambda after: self.list(limit=page_size, after=after))

    def delete(self, id: str) -> None:
        self._c._run(self._delete(id))

    def download(self, id: str, path: str | os.PathLike | None = None, *, precision: str = "fp32",
                 format: str = "onnx", on_progress: Callable[[int, int], Any] | None = None,
                 chunk_size: int = 1 << 16, max_retries: int = 3) -> DownloadResult:
        """Download an artifact to `path` (a file, or a folder for `<name>.<precision>.onnx`, where
        `<name>` is the basename of the model's name: a name such as `../x` never picks the folder).
        Resumes a `<path>.part` left by an interrupted call (also within this call, up to
        `max_retries` broken connections), checks the sha256 and renames atomically.
        `on_progress(bytes_done, bytes_total)` is called as it goes."""
        plan = _Download(self.get(id), precision, format, path)
        if plan.already_there():
            return DownloadResult(path=plan.dest, sha256=plan.sha256, size_bytes=plan.size, resumed_from=plan.size)
        failures = 0
        while True:
            offset = plan.offset()
            try:
                if offset < plan.size:
                    with self._c._http.stream("GET", f"/v1/models/{_seg(id)}/download", params=plan.params,
                                              headers=plan.request_headers(offset)) as response:
                        if response.is_error:
                            response.read()
                            raise error_from_response(response)
                        with plan.open_for(response, offset) as f:
                            done = offset if response.status_code == 206 else 0
                            for chunk in response.iter_bytes(chunk_size):
                                f.write(chunk)
                                done += len(chunk)
                                if on_progress:
                                    on_progress(done, plan.size)
            except httpx.TransportError as exc:
                failures += 1
                if failures > max_retries:
                    raise self._c._unreachable(exc) from exc
                time.sleep(0.5 * 2 ** failures)
                continue
            result = plan.finish()
            if result is not None:
                return result

    def predict(self, id: str, inputs: Any, *, precision: str = "fp32") -> PredictOut:
        """Logits and predicted classes for a batch (a list of samples or an array)."""
        return self._c._run(self._predict(id, inputs, precision))

    def metadata(self, model: str, *, version: str | None = None) -> dict:
        """Open Inference Protocol model metadata (inputs, outputs, versions)."""
        key = (model, version)
        if key not in self._v2_meta:
            try:
                self._v2_meta[key] = self._c._run(self._v2_metadata(model, version))
            except NotFound as exc:
                raise _v2_missing(exc) from None
        return self._v2_meta[key]

    def infer(self, model: str, inputs: Any, *, version: str | None = None, request_id: str | None = None,
              outputs: list[str] | None = None) -> InferResponse:
        """POST /v2/models/{model}/infer (model id or name; version = precision). `inputs` is one
        array for the model's single input or {input name: array}."""
        meta = self.metadata(model, version=version)
        try:
            return self._c._run(self._v2_infer(model, version, inputs, meta, request_id, outputs))
        except NotFound as exc:
            raise _v2_missing(exc) from None


class Methods:
    def __init__(self, client: Client):
        self._c = client

    def list(self) -> Page[MethodInfo]:
        return self._c._run(_Call("GET", "/v1/methods", parse=_page(MethodInfo), retry=True))


class Architectures:
    def __init__(self, client: Client):
        self._c = client

    def list(self) -> Page[ArchitectureInfo]:
        return self._c._run(_Call("GET", "/v1/architectures", parse=_page(ArchitectureInfo), retry=True))


# ---- the async client: the same resources, awaited ----------------------------------------------


class AsyncClient(_Base):
    """Async twin of `Client` (`async with AsyncClient() as kd: await kd.jobs.wait(...)`)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 300.0,
                 max_retries: int = 2):
        super().__init__(base_url, api_key, max_retries)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers,
                                       timeout=httpx.Timeout(timeout, connect=10.0))
        self.teachers = AsyncTeachers(self)
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)
        self.models = AsyncModels(self)
        self.methods = AsyncMethods(self)
        self.architectures = AsyncArchitectures(self)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> dict:
        return await self._run(_Call("GET", "/healthz", parse=lambda r: r.json(), retry=True))

    async def ready(self) -> dict:
        return await self._run(_Call("GET", "/readyz", parse=lambda r: r.json()))

    async def _run(self, call: _Call) -> Any:
        response = await self._send(call)
        return call.parse(response) if call.parse else None

    async def _send(self, call: _Call) -> httpx.Response:
        attempts = 1 + (self.max_retries if call.retry else 0)
        for attempt in range(attempts):
            try:
                if call.upload is not None:
                    with open(call.upload, "rb") as f:
                        response = await self._http.request(call.method, call.path, params=call.params, data=call.form,
                                                            files={"file": (call.upload.name, f)}, headers=call.headers)
                else:
                    response = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                        headers=call.headers)
            except httpx.TransportError as exc:
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.5 * 2 ** attempt)
                    continue
                raise self._unreachable(exc) from exc
            if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                await asyncio.sleep(0.5 * 2 ** attempt)
                continue
            if response.is_error:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")


async def _aiterate(fetch) -> AsyncIterator:
    after = None
    while True:
        page = await fetch(after)
        for item in page.data:
            yield item
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


class AsyncTeachers(_TeacherCalls):
    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(self, path: str | os.PathLike, *, name: str | None = None, format: str | None = None,
                     input_shape: list[int] | None = None) -> TeacherOut:
        return await self._c._run(self._create(path, name, format, input_shape))

    async def get(self, id: str) -> TeacherOut:
        return await self._c._run(self._get(id))

    async def list(self, *, limit: int = 20, after: str | None = None) -> Page[TeacherOut]:
        return await self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> AsyncIterator[TeacherOut]:
        return _aiterate(lambda after: self.list(limit=page_size, after=after))

    async def delete(self, id: str) -> None:
        await self._c._run(self._delete(id))


class AsyncDatasets(_DatasetCalls):
    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(self, path: str | os.PathLike, *, label_column: str | None = None, name: str | None = None,
                     format: str | None = None) -> DatasetOut:
        return await self._c._run(self._create(path, name, format, label_column))

    async def get(self, id: str) -> DatasetOut:
        return await self._c._run(self._get(id))

    async def list(self, *, limit: int = 20, after: str | None = None) -> Page[DatasetOut]:
        return await self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> AsyncIterator[DatasetOut]:
        return _aiterate(lambda after: self.list(limit=page_size, after=after))

    async def delete(self, id: str) -> None:
        await self._c._run(self._delete(id))


class AsyncJobs(_JobCalls):
    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(self, body: JobCreate | dict | None = None, *, dataset_id: str | None = None,
                     student: str | dict | StudentSpec | None = None, method: str | dict | MethodSpec | None = None,
                     teacher_id: str | None = None, training: dict | TrainingSpec | None = None,
                     export: dict | ExportSpec | None = None, validation_dataset_id: str | None = None,
                     validation_split: float | None = None, teacher_features: str | None = None,
                     teacher_refinement: dict | None = None, metadata: dict[str, str] | None = None,
                     idempotency_key: str | None = None) -> JobOut:
        fields = dict(dataset_id=dataset_id, student=student, method=method, teacher_id=teacher_id,
                      training=training, export=export, validation_dataset_id=validation_dataset_id,
                      validation_split=validation_split, teacher_features=teacher_features,
                      teacher_refinement=teacher_refinement, metadata=metadata)
        return await self._c._run(self._create(body, idempotency_key, fields))

    async def get(self, id: str) -> JobOut:
        return await self._c._run(self._get(id))

    async def list(self, *, status: str | None = None, limit: int = 20, after: str | None = None) -> Page[JobOut]:
        return await self._c._run(self._list(status, limit, after))

    def iter(self, *, status: str | None = None, page_size: int = 100) -> AsyncIterator[JobOut]:
        return _aiterate(lambda after: self.list(status=status, limit=page_size, after=after))

    async def cancel(self, id: str) -> JobOut:
        return await self._c._run(self._cancel(id))

    async def events(self, id: str, *, after: int = 0, limit: int = 100) -> Page[EventOut]:
        return await self._c._run(self._events(id, after, limit))

    async def wait(self, id: str, *, on_event: Callable[[EventOut], Any] | None = None, timeout: float | None = None,
                   poll_interval: float = 1.0, use_sse: bool = True, stream_read_timeout: float = 60.0) -> JobOut:
        """See `Jobs.wait`; `on_event` may also be a coroutine function."""
        follow = _Follow(_seg(id), on_event, timeout, poll_interval, stream_read_timeout, use_sse)
        pending: list[Any] = []
        if on_event is not None and asyncio.iscoroutinefunction(on_event):
            follow.on_event = pending.append  # collected here, awaited in order below

        async def flush() -> None:
            while pending:
                await on_event(pending.pop(0))  # type: ignore[misc]

        while follow.use_sse:
            follow.check_deadline()
            headers, read_timeout = follow.stream_request()
            try:
                async with self._c._http.stream("GET", f"/v1/jobs/{follow.job_id}/events", headers=headers,
                                                timeout=read_timeout) as response:
                    if response.is_error:
                        await response.aread()
                        raise error_from_response(response)
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        follow.use_sse = False
                        break
                    decoder = SSEDecoder()
                    async for line in response.aiter_lines():
                        if sse := decoder.feed(line):
                            follow.on_sse(sse)
                            await flush()
                        follow.check_deadline()
                job = await self.get(follow.job_id)
                if job.status in TERMINAL_STATUSES:
                    await self._catch_up(follow, flush)
                    return job
            except (httpx.TransportError, ServiceUnavailable):
                pass
            if follow.stream_failed():
                break
            await asyncio.sleep(follow.backoff())
        while True:
            follow.check_deadline()
            job = await self.get(follow.job_id)
            await self._catch_up(follow, flush)
            if job.status in TERMINAL_STATUSES:
                return job
            await asyncio.sleep(follow.poll_interval)

    async def _catch_up(self, follow: _Follow, flush) -> None:
        while True:
            page = await self.events(follow.job_id, after=follow.last_id, limit=1000)
            for event in page.data:
                follow.deliver(event)
                await flush()
            if not page.has_more:
                return


class AsyncModels(_ModelCalls):
    def __init__(self, client: AsyncClient):
        self._c = client
        self._v2_meta: dict[tuple[str, str | None], dict] = {}

    async def get(self, id: str) -> ModelOut:
        return await self._c._run(self._get(id))

    async def list(self, *, limit: int = 20, after: str | None = None) -> Page[ModelOut]:
        return await self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> AsyncIterator[ModelOut]:
        return _aiterate(lambda after: self.list(limit=page_size, after=after))

    async def delete(self, id: str) -> None:
        await self._c._run(self._delete(id))

    async def download(self, id: str, path: str | os.PathLike | None = None, *, precision: str = "fp32",
                       format: str = "onnx", on_progress: Callable[[int, int], Any] | None = None,
                       chunk_size: int = 1 << 16, max_retries: int = 3) -> DownloadResult:
        """See `Models.download`."""
        plan = _Download(await self.get(id), precision, format, path)
        if plan.already_there():
            return DownloadResult(path=plan.dest, sha256=plan.sha256, size_bytes=plan.size, resumed_from=plan.size)
        failures = 0
        while True:
            offset = plan.offset()
            try:
                if offset < plan.size:
                    async with self._c._http.stream("GET", f"/v1/models/{_seg(id)}/download", params=plan.params,
                                                    headers=plan.request_headers(offset)) as response:
                        if response.is_error:
                            await response.aread()
                            raise error_from_response(response)
                        with plan.open_for(response, offset) as f:
                            done = offset if response.status_code == 206 else 0
                            async for chunk in response.aiter_bytes(chunk_size):
                                f.write(chunk)
                                done += len(chunk)
                                if on_progress:
                                    on_progress(done, plan.size)
            except httpx.TransportError as exc:
                failures += 1
                if failures > max_retries:
                    raise self._c._unreachable(exc) from exc
                await asyncio.sleep(0.5 * 2 ** failures)
                continue
            result = plan.finish()
            if result is not None:
                return result

    async def predict(self, id: str, inputs: Any, *, precision: str = "fp32") -> PredictOut:
        return await self._c._run(self._predict(id, inputs, precision))

    async def metadata(self, model: str, *, version: str | None = None) -> dict:
        key = (model, version)
        if key not in self._v2_meta:
            try:
                self._v2_meta[key] = await self._c._run(self._v2_metadata(model, version))
            except NotFound as exc:
                raise _v2_missing(exc) from None
        return self._v2_meta[key]

    async def infer(self, model: str, inputs: Any, *, version: str | None = None, request_id: str | None = None,
                    outputs: list[str] | None = None) -> InferResponse:
        meta = await self.metadata(model, version=version)
        try:
            return await self._c._run(self._v2_infer(model, version, inputs, meta, request_id, outputs))
        except NotFound as exc:
            raise _v2_missing(exc) from None


class AsyncMethods:
    def __init__(self, client: AsyncClient):
        self._c = client

    async def list(self) -> Page[MethodInfo]:
        return await self._c._run(_Call("GET", "/v1/methods", parse=_page(MethodInfo), retry=True))


class AsyncArchitectures:
    def __init__(self, client: AsyncClient):
        self._c = client

    async def list(self) -> Page[ArchitectureInfo]:
        return await self._c._run(_Call("GET", "/v1/architectures", parse=_page(ArchitectureInfo), retry=True))
