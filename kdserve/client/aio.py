"""The async client, `AsyncClient`, and its resources: the twin of sync.py, awaited
(`async with AsyncClient() as kd: await kd.jobs.wait(...)`)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Callable, Generic, TypeVar

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
        self.searches = AsyncSearches(self)
        self.models = AsyncModels(self)
        self.webhooks = AsyncWebhooks(self)
        self.methods = AsyncMethods(self)
        self.architectures = AsyncArchitectures(self)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> dict:
        return await self._run(self._health())

    async def ready(self) -> dict:
        return await self._run(self._ready())

    async def _run(self, call: _Call) -> Any:
        response = await self._send(call)
        return call.parse(response) if call.parse else None

    async def _send(self, call: _Call) -> httpx.Response:
        attempts = 1 + (self.max_retries if call.retry else 0)
        for attempt in range(attempts):
            try:
                if call.files:
                    with open_files(call) as files:
                        response = await self._http.request(call.method, call.path, params=call.params, data=call.form,
                                                            files=files, headers=call.headers)
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


class _AsyncResources(_ResourceCalls, Generic[M]):
    """See `sync._Resources`."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def get(self, id: str) -> M:
        return await self._c._run(self._get(id))

    async def list(self, *, limit: int = 20, after: str | None = None) -> Page[M]:
        return await self._c._run(self._list(limit, after))

    def iter(self, *, page_size: int = 100) -> AsyncIterator[M]:
        return _aiterate(lambda after: self.list(limit=page_size, after=after))

    async def delete(self, id: str) -> None:
        await self._c._run(self._delete(id))


class AsyncTeachers(_AsyncResources[TeacherOut], _TeacherCalls):
    async def create(self, path: str | os.PathLike, *, name: str | None = None, format: str | None = None,
                     input_shape: list[int] | None = None, task: str | None = None,
                     data: str | os.PathLike | None = None) -> TeacherOut:
        return await self._c._run(self._create(path, name=name, format=format, input_shape=input_shape, task=task,
                                               data=data))


class AsyncDatasets(_AsyncResources[DatasetOut], _DatasetCalls):
    async def create(self, path: str | os.PathLike, *, label_column: str | None = None, name: str | None = None,
                     format: str | None = None, text_column: str | None = None,
                     text_pair_column: str | None = None) -> DatasetOut:
        return await self._c._run(self._create(path, name=name, format=format, label_column=label_column,
                                               text_column=text_column, text_pair_column=text_pair_column))


class _AsyncWaiter:
    """`wait`: follow a job or a search (`_collection`) by its events until it ends."""

    _collection = "jobs"

    async def wait(self, id: str, *, on_event: Callable[[EventOut], Any] | None = None, timeout: float | None = None,
                   poll_interval: float = 1.0, use_sse: bool = True, stream_read_timeout: float = 60.0) -> Any:
        """See `Jobs.wait`; `on_event` may also be a coroutine function."""
        follow = _Follow(_seg(id), on_event, timeout, poll_interval, stream_read_timeout, use_sse,
                         collection=self._collection)
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
                async with self._c._http.stream("GET", follow.events_path, headers=headers,
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


class AsyncJobs(_JobCalls, _AsyncWaiter):
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


class AsyncSearches(_SearchCalls, _AsyncWaiter):
    _collection = "searches"

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(self, body: SearchCreate | dict | None = None, *, teacher_id: str | None = None,
                     dataset_id: str | None = None, targets: dict | SearchTargets | None = None,
                     space: dict | SearchSpace | None = None, budget: dict | SearchBudget | None = None,
                     validation_dataset_id: str | None = None, validation_split: float | None = None,
                     seed: int | None = None, metadata: dict[str, str] | None = None) -> SearchOut:
        fields = dict(teacher_id=teacher_id, dataset_id=dataset_id, targets=targets, space=space, budget=budget,
                      validation_dataset_id=validation_dataset_id, validation_split=validation_split, seed=seed,
                      metadata=metadata)
        return await self._c._run(self._create(body, fields))

    async def get(self, id: str) -> SearchOut:
        return await self._c._run(self._get(id))

    async def list(self, *, limit: int = 20, after: str | None = None) -> Page[SearchOut]:
        return await self._c._run(self._list(limit, after))

    async def trials(self, id: str) -> Page[TrialOut]:
        return await self._c._run(self._trials(id))

    async def cancel(self, id: str) -> SearchOut:
        return await self._c._run(self._cancel(id))

    async def events(self, id: str, *, after: int = 0, limit: int = 100) -> Page[EventOut]:
        return await self._c._run(self._events(id, after, limit))


class AsyncModels(_AsyncResources[ModelOut], _ModelCalls):
    def __init__(self, client: AsyncClient):
        super().__init__(client)
        self._v2_meta: dict[tuple[str, str | None], dict] = {}

    async def download(self, id: str, path: str | os.PathLike | None = None, *, precision: str = "fp32",
                       format: str = "onnx", on_progress: Callable[[int, int], Any] | None = None,
                       chunk_size: int = 1 << 16, max_retries: int = 3) -> DownloadResult:
        """See `Models.download`."""
        plan = _Download(await self.get(id), precision, format, path)
        if (there := plan.existing()) is not None:
            return there
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

    async def evaluate(self, id: str, dataset_id: str, *, precision: str = "fp32") -> EvaluationOut:
        return await self._c._run(self._evaluate(id, dataset_id, precision))

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


class AsyncMethods(_MethodCalls):
    def __init__(self, client: AsyncClient):
        self._c = client

    async def list(self) -> Page[MethodInfo]:
        return await self._c._run(self._list())


class AsyncArchitectures(_ArchitectureCalls):
    def __init__(self, client: AsyncClient):
        self._c = client

    async def list(self) -> Page[ArchitectureInfo]:
        return await self._c._run(self._list())


class AsyncWebhooks(_AsyncResources[WebhookOut], _WebhookCalls):
    """Webhook endpoints: the service POSTs its events there, signed per Standard Webhooks (verify
    with the endpoint's `secret`, e.g. `standardwebhooks.Webhook(secret).verify(body, headers)`).
    `get` shows the secret; `list` does not."""

    async def create(self, url: str, *, events: list[str] | None = None, description: str | None = None,
               secret: str | None = None) -> WebhookOut:
        """A new endpoint for `events` (default: every event type); its secret is made unless given."""
        return await self._c._run(self._create(url, events, description, secret))

    async def update(self, id: str, *, url: str | None = None, events: list[str] | None = None,
               description: str | None = None, enabled: bool | None = None) -> WebhookOut:
        """Change the fields given (None: left as it is)."""
        return await self._c._run(self._update(id, dict(url=url, events=events, description=description,
                                                         enabled=enabled)))

    async def deliveries(self, id: str, *, status: str | None = None, limit: int = 20,
                   after: str | None = None) -> Page[WebhookDeliveryOut]:
        """The endpoint's deliveries, newest first, each with its attempts (`status`: pending,
        succeeded or failed)."""
        return await self._c._run(self._deliveries(id, status, limit, after))

    async def replay(self, id: str, delivery_id: str) -> WebhookDeliveryOut:
        """Send a delivery's message again (a new delivery, the same webhook-id)."""
        return await self._c._run(self._replay(id, delivery_id))

    async def test(self, id: str) -> WebhookDeliveryOut:
        """Send a `webhook.test` event to the endpoint."""
        return await self._c._run(self._test(id))
