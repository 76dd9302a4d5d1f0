"""kdserve Python SDK: a typed client for kdserve's HTTP API, sync (`Client`) and async
(`AsyncClient`), built on httpx.

    from kdserve.client import Client

    kd = Client()                                   # KDSERVE_URL / KDSERVE_API_KEY / .kdserve/api_key
    teacher = kd.teachers.create("teacher.pt")
    data = kd.datasets.create("digits.csv", label_column="digit")
    job = kd.jobs.create(teacher_id=teacher.id, dataset_id=data.id, student="mlp", method="kd",
                         training={"epochs": 20})
    job = kd.jobs.wait(job.id, on_event=print)      # follows Server-Sent Events, polls as a fallback
    kd.models.download(job.model_id, "student.onnx")  # resumable, sha256-checked, atomic

    search = kd.searches.create(teacher_id=teacher.id, dataset_id=data.id,
                                targets={"latency_ms": 0.05, "min_accuracy": 0.97}, budget={"trials": 40})
    search = kd.searches.wait(search.id)            # the same event following as jobs.wait
    best = search.result.recommended                # the cheapest file that meets every target

    hook = kd.webhooks.create("https://example.com/kdserve", events=["job.succeeded", "job.failed"])
    hook.secret                                     # verify deliveries with it (Standard Webhooks)

How it is put together, for a newcomer:
- calls.py: every API call is first described as a `_Call` (method, path, body, how to parse the
  answer) by a `_*Calls` class shared by both clients; `Client._run` (sync.py) and
  `AsyncClient._run` (aio.py) only do the I/O. So the sync and async resources are thin twins and
  the request shapes live in one place.
- The two long operations (following a job, downloading a file) keep their decisions in shared
  state objects in calls.py (`_Follow`, `_Download`); the sync and async loops around them only
  move bytes. sse.py decodes the event stream.
- Answers are the pydantic models of kdserve.service.schemas (the server's own contract), plus a
  few client-side models (results.py) for lists, the catalogue, downloads and /v2 inference.
- errors.py: every error answer becomes a `KdserveError` subclass carrying the API's `code`,
  `message`, `param` and HTTP `status`.

The SDK never imports torch (nor numpy, unless `infer` is given numpy arrays' shapes to compute).
"""

from __future__ import annotations

from kdserve.client.aio import (AsyncArchitectures, AsyncClient, AsyncDatasets, AsyncJobs, AsyncMethods, AsyncModels,
                                AsyncSearches, AsyncTeachers, AsyncWebhooks)
from kdserve.client.calls import (DEFAULT_URL, RETRY_STATUSES, TERMINAL_STATUSES, job_body, resolve_api_key,
                                  resolve_base_url, search_body)
from kdserve.client.errors import (APIConnectionError, ChecksumMismatch, Conflict, InvalidRequest, KdserveError,
                                   NotFound, PayloadTooLarge, PermissionDenied, RateLimited, ServerError,
                                   ServiceUnavailable, Unauthorized, WaitTimeout, error_from_response)
from kdserve.client.results import ArchitectureInfo, DownloadResult, InferOutput, InferResponse, MethodInfo, Page
from kdserve.client.sse import ServerSentEvent, SSEDecoder
from kdserve.client.sync import Architectures, Client, Datasets, Jobs, Methods, Models, Searches, Teachers, Webhooks
# the server's models that the SDK takes and returns
from kdserve.service.schemas import (DatasetOut, EvaluationOut, EventOut, ExportSpec, JobCreate, JobOut, MethodSpec,
                                     ModelOut, PredictOut, SearchBudget, SearchCreate, SearchOut, SearchSpace,
                                     SearchTargets, StudentSpec, TeacherOut, TrainingSpec, TrialOut)
from kdserve.service.webhooks.schemas import WebhookDeliveryOut, WebhookOut

__all__ = [
    "Client", "AsyncClient", "KdserveError", "APIConnectionError", "InvalidRequest", "Unauthorized",
    "PermissionDenied", "NotFound", "Conflict", "PayloadTooLarge", "RateLimited", "ServiceUnavailable",
    "ServerError", "ChecksumMismatch", "WaitTimeout", "Page", "MethodInfo", "ArchitectureInfo", "DownloadResult",
    "InferResponse", "InferOutput", "TERMINAL_STATUSES", "resolve_base_url", "resolve_api_key",
    "SearchCreate", "SearchOut", "SearchTargets", "SearchSpace", "SearchBudget", "TrialOut",
    "WebhookOut", "WebhookDeliveryOut",
]
