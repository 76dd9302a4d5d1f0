"""What the sync and the async client share: where the service is, every request described once
as a `_Call` (method, path, body, how to parse the answer), and the decisions of the two long
operations (`_Follow` for `jobs.wait`, `_Download` for `models.download`). Nothing here does I/O
on the network: `Client._run` (sync.py) and `AsyncClient._run` (aio.py) send the calls."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import httpx
from pydantic import BaseModel

from kdserve.client.errors import (APIConnectionError, ChecksumMismatch, InvalidRequest, KdserveError, NotFound,
                                   WaitTimeout)
from kdserve.client.results import ArchitectureInfo, DownloadResult, InferResponse, MethodInfo, Page
from kdserve.client.sse import ServerSentEvent
from kdserve.service.filenames import safe_basename
from kdserve.service.schemas import (DatasetOut, EvaluationOut, EventOut, JobCreate, JobOut, ModelOut, PredictOut, SearchCreate,
                                     SearchOut, TeacherOut, TrialOut)
from kdserve.service.webhooks.schemas import WebhookDeliveryOut, WebhookOut

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = (502, 503, 504)  # the server or a proxy in front of it is restarting or overloaded


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


# ---- requests, described once for both clients --------------------------------------------------


@dataclass
class _Call:
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    form: dict[str, str] | None = None
    files: dict[str, Path] | None = None  # multipart file parts by field name (`file`, a teacher's `data`)
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


def _upload_path(path: str | os.PathLike, param: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"{p} is not a readable file", code="invalid_request", param=param)
    return p


def _form(**fields: Any) -> dict[str, str]:
    return {k: v for k, v in fields.items() if v is not None}


@contextmanager
def open_files(call: _Call) -> Iterator[dict[str, tuple[str, BinaryIO]]]:
    """The call's file parts, opened for the request (httpx's `files=`), closed after it."""
    with ExitStack() as stack:
        yield {part: (path.name, stack.enter_context(open(path, "rb"))) for part, path in (call.files or {}).items()}


class _ResourceCalls:
    """GET/list/DELETE of a resource with an id: teachers, datasets, models."""

    kind: str
    model: type[BaseModel]

    def _get(self, id: str) -> _Call:
        return _Call("GET", f"/v1/{self.kind}/{_seg(id)}", parse=_one(self.model), retry=True)

    def _list(self, limit: int, after: str | None) -> _Call:
        return _Call("GET", f"/v1/{self.kind}", params=_list_params(limit, after), parse=_page(self.model), retry=True)

    def _delete(self, id: str) -> _Call:  # not retried: a repeat after a lost answer would be a 404
        return _Call("DELETE", f"/v1/{self.kind}/{_seg(id)}")


class _TeacherCalls(_ResourceCalls):
    kind, model = "teachers", TeacherOut

    def _create(self, path, *, name=None, format=None, input_shape=None, task=None, data=None) -> _Call:
        shape = json.dumps(list(input_shape)) if input_shape is not None else None
        files = {"file": _upload_path(path), **({"data": _upload_path(data, "data")} if data is not None else {})}
        return _Call("POST", "/v1/teachers", files=files,
                     form=_form(name=name, format=format, input_shape=shape, task=task), parse=_one(TeacherOut))


class _DatasetCalls(_ResourceCalls):
    kind, model = "datasets", DatasetOut

    def _create(self, path, *, name=None, format=None, label_column=None, text_column=None,
                text_pair_column=None) -> _Call:
        return _Call("POST", "/v1/datasets", files={"file": _upload_path(path)},
                     form=_form(name=name, format=format, label_column=label_column, text_column=text_column,
                                text_pair_column=text_pair_column), parse=_one(DatasetOut))


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
        # job already created instead of queueing a second one.
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


class _SearchCalls:
    def _create(self, body, fields) -> _Call:
        # not retried: a repeat after a lost answer would start a second search
        return _Call("POST", "/v1/searches", json=search_body(body, **fields), parse=_one(SearchOut))

    def _get(self, id: str) -> _Call:
        return _Call("GET", f"/v1/searches/{_seg(id)}", parse=_one(SearchOut), retry=True)

    def _list(self, limit, after) -> _Call:
        return _Call("GET", "/v1/searches", params=_list_params(limit, after), parse=_page(SearchOut), retry=True)

    def _trials(self, id: str) -> _Call:
        return _Call("GET", f"/v1/searches/{_seg(id)}/trials", parse=_page(TrialOut), retry=True)

    def _cancel(self, id: str) -> _Call:
        return _Call("POST", f"/v1/searches/{_seg(id)}/cancel", parse=_one(SearchOut))

    def _events(self, id: str, after: int, limit: int) -> _Call:
        return _Call("GET", f"/v1/searches/{_seg(id)}/events", params={"after": after, "limit": limit},
                     parse=_page(EventOut), retry=True)


def search_body(body: SearchCreate | dict | None = None, **fields: Any) -> dict:
    """The JSON of POST /v1/searches: `body` with the keyword fields on top (None: left out)."""
    out = dict(_as_dict(body) or {})
    out.update({k: _as_dict(v) for k, v in fields.items() if v is not None})
    return out


class _WebhookCalls(_ResourceCalls):
    kind, model = "webhooks", WebhookOut

    def _create(self, url: str, events, description, secret) -> _Call:
        # not retried: a repeat after a lost answer would make a second endpoint
        body = {k: v for k, v in {"url": url, "events": events, "description": description,
                                  "secret": secret}.items() if v is not None}
        return _Call("POST", "/v1/webhooks", json=body, parse=_one(WebhookOut))

    def _update(self, id: str, fields: dict[str, Any]) -> _Call:
        body = {k: v for k, v in fields.items() if v is not None}
        return _Call("PATCH", f"/v1/webhooks/{_seg(id)}", json=body, parse=_one(WebhookOut), retry=True)

    def _deliveries(self, id: str, status, limit, after) -> _Call:
        return _Call("GET", f"/v1/webhooks/{_seg(id)}/deliveries", params=_list_params(limit, after, status=status),
                     parse=_page(WebhookDeliveryOut), retry=True)

    def _replay(self, id: str, delivery_id: str) -> _Call:  # not retried: each call sends the message once more
        return _Call("POST", f"/v1/webhooks/{_seg(id)}/deliveries/{_seg(delivery_id)}/replay",
                     parse=_one(WebhookDeliveryOut))

    def _test(self, id: str) -> _Call:
        return _Call("POST", f"/v1/webhooks/{_seg(id)}/test", parse=_one(WebhookDeliveryOut))


def _rows(inputs: Any) -> list:
    """A batch as JSON lists: numpy arrays (anything with .tolist()) or nested lists."""
    return inputs.tolist() if hasattr(inputs, "tolist") else list(inputs)


class _ModelCalls(_ResourceCalls):
    kind, model = "models", ModelOut

    def _evaluate(self, id: str, dataset_id: str, precision: str) -> _Call:
        return _Call("POST", f"/v1/models/{_seg(id)}/evaluate", json={"dataset_id": dataset_id, "precision": precision},
                     parse=_one(EvaluationOut), retry=True)

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


class _CatalogCalls:
    """GET of a catalogue the server publishes: methods, student architectures."""

    path: str
    model: type[BaseModel]

    def _list(self) -> _Call:
        return _Call("GET", self.path, parse=_page(self.model), retry=True)


class _MethodCalls(_CatalogCalls):
    path, model = "/v1/methods", MethodInfo


class _ArchitectureCalls(_CatalogCalls):
    path, model = "/v1/architectures", ArchitectureInfo


# ---- following a job ----------------------------------------------------------------------------


@dataclass
class _Follow:
    """The decisions of `jobs.wait`, shared by both clients: where the event stream resumes, when
    to give up on Server-Sent Events and poll instead, when the deadline has passed."""

    job_id: str  # the id of the job (or search) followed
    on_event: Callable[[EventOut], Any] | None
    timeout: float | None
    poll_interval: float
    stream_read_timeout: float
    use_sse: bool
    collection: str = "jobs"  # or "searches": /v1/<collection>/<id>/events
    max_reconnects: int = 5
    last_id: int = 0
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float | None:
        return None if self.timeout is None else self.timeout - (time.monotonic() - self.started)

    def check_deadline(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            kind = {"jobs": "job", "searches": "search"}[self.collection]
            raise WaitTimeout(f"{kind} {self.job_id} did not end within {self.timeout} s", code="timeout")

    @property
    def events_path(self) -> str:
        return f"/v1/{self.collection}/{self.job_id}/events"

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

    def existing(self) -> DownloadResult | None:
        """The result when the file is already there, whole and verified: nothing travels."""
        if self.dest.is_file() and self.dest.stat().st_size == self.size and _sha256(self.dest) == self.sha256:
            return DownloadResult(path=self.dest, sha256=self.sha256, size_bytes=self.size, resumed_from=self.size)
        return None

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


# ---- what both clients are ----------------------------------------------------------------------


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

    @staticmethod
    def _health() -> _Call:
        return _Call("GET", "/healthz", parse=lambda r: r.json(), retry=True)

    @staticmethod
    def _ready() -> _Call:
        return _Call("GET", "/readyz", parse=lambda r: r.json())
