"""The sync client, `Client`, and its resources. Each method takes its request from calls.py and
only does the I/O; aio.py is its async twin, line for line."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Generic, Iterator, TypeVar

import httpx
from pydantic import BaseModel

from kdserve.client.calls import (RETRY_STATUSES, TERMINAL_STATUSES, _ArchitectureCalls, _Base, _Call, _DatasetCalls,
                                  _Download, _Follow, _JobCalls, _MethodCalls, _ModelCalls, _ResourceCalls,
                                  _SearchCalls, _seg, _TeacherCalls, _v2_missing, _WebhookCalls, open_files)
from kdserve.client.errors import NotFound, ServiceUnavailable, error_from_response
from kdserve.client.results import ArchitectureInfo, DownloadResult, InferResponse, MethodInfo, Page
from kdserve.client.sse import SSEDecoder
from kdserve.service.schemas import (DatasetOut, EvaluationOut, EventOut, ExportSpec, JobCreate, JobOut, MethodSpec,
                                     ModelOut, PredictOut, SearchBudget, SearchCreate, SearchOut, SearchSpace,
                                     SearchTargets, StudentSpec, TeacherOut, TrainingSpec, TrialOut)
from kdserve.service.webhooks.schemas import WebhookDeliveryOut, WebhookOut

M = TypeVar("M", bound=BaseModel)


class Client(_Base):
    """Sync client. `Client(base_url=None, api_key=None)`; see the package docstring for defaults.
    Use as a context manager, or call close()."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 300.0,
                 max_retries: int = 2):
        super().__init__(base_url, api_key, max_retries)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers,
                                  timeout=httpx.Timeout(timeout, connect=10.0))
        self.teachers = Teachers(self)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.searches = Searches(self)
        self.models = Models(self)
        self.webhooks = Webhooks(self)
        self.methods = Methods(self)
        self.architectures = Architectures(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> dict:
        return self._run(self._health())

    def ready(self) -> dict:
        """GET /readyz: database, broker and blob store reachable (503 → ServiceUnavailable)."""
        return self._run(self._ready())

    def _run(self, call: _Call) -> Any:
        response = self._send(call)
        return call.parse(response) if call.parse else None

    def _send(self, call: _Call) -> httpx.Response:
        attempts = 1 + (self.max_retries if call.retry else 0)
        for attempt in range(attempts):
            try:
                if call.files:
                    with open_files(call) as files:
                        response = self._http.request(call.method, call.path, params=call.params, data=call.form,
                                                      files=files, headers=call.headers)
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


def _iterate(fetch: Callable[[str | None], Page]) -> Iterator:
    after = None
    while True:
        page = fetch(after)
        yield from page.data
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


class _Resources(_ResourceCalls, Generic[M]):
    """get, list, iter and delete: the same for teachers, datasets and models."""

    def __init__(self, client: Client):
        self._c = client

    def get(self, id: str) -> M:
        return self._c._run(self._get(id))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[M]:
        return self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> Iterator[M]:
        """Every one, newest first, page after page."""
        return _iterate(lambda after: self.list(limit=page_size, after=after))

    def delete(self, id: str) -> None:
        self._c._run(self._delete(id))


class Teachers(_Resources[TeacherOut], _TeacherCalls):
    def create(self, path: str | os.PathLike, *, name: str | None = None, format: str | None = None,
               input_shape: list[int] | None = None, task: str | None = None,
               data: str | os.PathLike | None = None) -> TeacherOut:
        """Upload a teacher (every field of POST /v1/teachers): `format` one of
        kdserve.service.vocab.TEACHER_FORMATS (torchscript, onnx, hf; default: detected), `task` one
        of vocab.TASKS (hf only), `data` an ONNX model's external data file. It is probed on the
        server before it is accepted."""
        return self._c._run(self._create(path, name=name, format=format, input_shape=input_shape, task=task,
                                         data=data))


class Datasets(_Resources[DatasetOut], _DatasetCalls):
    def create(self, path: str | os.PathLike, *, label_column: str | None = None, name: str | None = None,
               format: str | None = None, text_column: str | None = None,
               text_pair_column: str | None = None) -> DatasetOut:
        """Upload a dataset (every field of POST /v1/datasets): `format` one of
        kdserve.service.vocab.DATASET_FORMATS (npz, csv, jsonl; default: detected); `label_column`
        for CSV and JSONL; `text_column` and `text_pair_column` for JSONL."""
        return self._c._run(self._create(path, name=name, format=format, label_column=label_column,
                                         text_column=text_column, text_pair_column=text_pair_column))


class _Waiter:
    """`wait`: follow a job or a search (`_collection`) by its events until it ends."""

    _collection = "jobs"

    def wait(self, id: str, *, on_event: Callable[[EventOut], Any] | None = None, timeout: float | None = None,
             poll_interval: float = 1.0, use_sse: bool = True, stream_read_timeout: float = 60.0) -> Any:
        """Follow the job (or search) until it ends and return it (whatever its final status).
        Every event is passed to `on_event` once, in order. Events come as Server-Sent Events; a broken stream is
        resumed with Last-Event-ID, and after repeated failures (or a proxy that does not stream)
        the events and status are polled every `poll_interval` s."""
        follow = _Follow(_seg(id), on_event, timeout, poll_interval, stream_read_timeout, use_sse,
                         collection=self._collection)
        while follow.use_sse:
            follow.check_deadline()
            headers, read_timeout = follow.stream_request()
            try:
                with self._c._http.stream("GET", follow.events_path, headers=headers,
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


class Jobs(_JobCalls, _Waiter):
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


class Searches(_SearchCalls, _Waiter):
    """Searches: the best student for a target (POST /v1/searches); trials are jobs."""

    _collection = "searches"

    def __init__(self, client: Client):
        self._c = client

    def create(self, body: SearchCreate | dict | None = None, *, teacher_id: str | None = None,
               dataset_id: str | None = None, targets: dict | SearchTargets | None = None,
               space: dict | SearchSpace | None = None, budget: dict | SearchBudget | None = None,
               validation_dataset_id: str | None = None, validation_split: float | None = None,
               seed: int | None = None, metadata: dict[str, str] | None = None) -> SearchOut:
        """Start a search (every field of POST /v1/searches; left out: the service's defaults)."""
        fields = dict(teacher_id=teacher_id, dataset_id=dataset_id, targets=targets, space=space, budget=budget,
                      validation_dataset_id=validation_dataset_id, validation_split=validation_split, seed=seed,
                      metadata=metadata)
        return self._c._run(self._create(body, fields))

    def get(self, id: str) -> SearchOut:
        return self._c._run(self._get(id))

    def list(self, *, limit: int = 20, after: str | None = None) -> Page[SearchOut]:
        return self._c._run(self._list(limit, after))

    def trials(self, id: str) -> Page[TrialOut]:
        """Every trial so far: the optimizer's choice, its status, its files."""
        return self._c._run(self._trials(id))

    def cancel(self, id: str) -> SearchOut:
        return self._c._run(self._cancel(id))

    def events(self, id: str, *, after: int = 0, limit: int = 100) -> Page[EventOut]:
        return self._c._run(self._events(id, after, limit))


class Models(_Resources[ModelOut], _ModelCalls):
    def __init__(self, client: Client):
        super().__init__(client)
        self._v2_meta: dict[tuple[str, str | None], dict] = {}

    def get(self, id: str) -> ModelOut:
        """The model card: accuracy, agreement, size and latency of each artifact."""
        return super().get(id)

    def download(self, id: str, path: str | os.PathLike | None = None, *, precision: str = "fp32",
                 format: str = "onnx", on_progress: Callable[[int, int], Any] | None = None,
                 chunk_size: int = 1 << 16, max_retries: int = 3) -> DownloadResult:
        """Download an artifact to `path` (a file, or a folder for `<name>.<precision>.onnx`, where
        `<name>` is the basename of the model's name: a name such as `../x` never picks the folder).
        Resumes a `<path>.part` left by an interrupted call (also within this call, up to
        `max_retries` broken connections), checks the sha256 and renames atomically.
        `on_progress(bytes_done, bytes_total)` is called as it goes."""
        plan = _Download(self.get(id), precision, format, path)
        if (there := plan.existing()) is not None:
            return there
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

    def evaluate(self, id: str, dataset_id: str, *, precision: str = "fp32") -> EvaluationOut:
        """The model scored on a stored dataset (e.g. a test set you uploaded): accuracy on its
        labelled rows and the spread of its predictions."""
        return self._c._run(self._evaluate(id, dataset_id, precision))

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


class Methods(_MethodCalls):
    def __init__(self, client: Client):
        self._c = client

    def list(self) -> Page[MethodInfo]:
        return self._c._run(self._list())


class Architectures(_ArchitectureCalls):
    def __init__(self, client: Client):
        self._c = client

    def list(self) -> Page[ArchitectureInfo]:
        return self._c._run(self._list())


class Webhooks(_Resources[WebhookOut], _WebhookCalls):
    """Webhook endpoints: the service POSTs its events there, signed per Standard Webhooks (verify
    with the endpoint's `secret`, e.g. `standardwebhooks.Webhook(secret).verify(body, headers)`).
    `get` shows the secret; `list` does not."""

    def create(self, url: str, *, events: list[str] | None = None, description: str | None = None,
               secret: str | None = None) -> WebhookOut:
        """A new endpoint for `events` (default: every event type); its secret is made unless given."""
        return self._c._run(self._create(url, events, description, secret))

    def update(self, id: str, *, url: str | None = None, events: list[str] | None = None,
               description: str | None = None, enabled: bool | None = None) -> WebhookOut:
        """Change the fields given (None: left as it is)."""
        return self._c._run(self._update(id, dict(url=url, events=events, description=description,
                                                         enabled=enabled)))

    def deliveries(self, id: str, *, status: str | None = None, limit: int = 20,
                   after: str | None = None) -> Page[WebhookDeliveryOut]:
        """The endpoint's deliveries, newest first, each with its attempts (`status`: pending,
        succeeded or failed)."""
        return self._c._run(self._deliveries(id, status, limit, after))

    def replay(self, id: str, delivery_id: str) -> WebhookDeliveryOut:
        """Send a delivery's message again (a new delivery, the same webhook-id)."""
        return self._c._run(self._replay(id, delivery_id))

    def test(self, id: str) -> WebhookDeliveryOut:
        """Send a `webhook.test` event to the endpoint."""
        return self._c._run(self._test(id))
