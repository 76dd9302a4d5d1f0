"""Prometheus metrics that the API process counts as things happen: upload bytes, inference
requests, their latency and batch sizes. `GET /metrics` (service/api/metrics.py) exposes them next
to the ones it reads at scrape time (jobs by status and duration, queue depth, workers).

Why a module of its own: the routers that see an upload or an inference call one function here
and need to know nothing about Prometheus; the metric objects live in one registry that the
/metrics route renders. The registry is our own (not prometheus_client's global one) so that
creating several apps in one process (tests) never registers a metric twice.

The serving code calls:

    from kdserve.service import metrics
    metrics.observe_inference(model_id, protocol="v2", batch_size=len(rows), seconds=elapsed)
    metrics.observe_inference(model_id, protocol="v1", batch_size=0, seconds=elapsed, outcome="error")
    metrics.observe_batch(model_id, rows=merged_rows)   # one onnxruntime run of a dynamic batch

and the upload routes call `metrics.observe_upload("teacher" | "dataset", size_bytes)`.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # CPU seconds, resident memory, open fds of the API process

UPLOAD_BYTES = Counter(
    "kdserve_upload_bytes", "Bytes of complete teacher and dataset uploads received (counted before the file is "
    "probed or parsed, so refused files count too).",
    ["kind"], registry=REGISTRY,
)
UPLOADS = Counter("kdserve_uploads", "Uploads received, by kind.", ["kind"], registry=REGISTRY)

INFERENCE_REQUESTS = Counter(
    "kdserve_inference_requests",
    "Inference requests by model, protocol (v1 = /v1/models/{id}/predict, v2 = Open Inference Protocol) "
    "and outcome (ok | error).",
    ["model", "protocol", "outcome"], registry=REGISTRY,
)
INFERENCE_LATENCY = Histogram(
    "kdserve_inference_latency_seconds", "Wall time of one inference request, from decoded body to encoded answer.",
    ["model", "protocol"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INFERENCE_REQUEST_ROWS = Histogram(
    "kdserve_inference_request_batch_size", "Samples (rows) in one inference request.",
    ["model", "protocol"], registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
INFERENCE_RUN_ROWS = Histogram(
    "kdserve_inference_run_batch_size",
    "Samples in one onnxruntime run; with dynamic batching, several requests merged into one run.",
    ["model"], registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)


def observe_upload(kind: str, size_bytes: int) -> None:
    """An upload of `size_bytes` was received completely (before it is probed or parsed)."""
    UPLOADS.labels(kind).inc()
    UPLOAD_BYTES.labels(kind).inc(size_bytes)


def observe_inference(model: str, *, protocol: str, batch_size: int, seconds: float, outcome: str = "ok") -> None:
    """One inference request to `model` (a model id) ended: count it, and for an answered one
    record its latency and how many samples it carried. A refused request (`outcome="error"`) is
    only counted: its latency and size would skew the histograms."""
    INFERENCE_REQUESTS.labels(model, protocol, outcome).inc()
    if outcome == "ok":
        INFERENCE_LATENCY.labels(model, protocol).observe(seconds)
        INFERENCE_REQUEST_ROWS.labels(model, protocol).observe(batch_size)


PROTOCOLS, OUTCOMES = ("v1", "v2"), ("ok", "error")


def forget_model(model: str) -> None:
    """A deleted model: remove its series, so /metrics stops listing what no longer exists."""
    for protocol in PROTOCOLS:
        for outcome in OUTCOMES:
            _remove(INFERENCE_REQUESTS, model, protocol, outcome)
        _remove(INFERENCE_LATENCY, model, protocol)
        _remove(INFERENCE_REQUEST_ROWS, model, protocol)
    _remove(INFERENCE_RUN_ROWS, model)


def _remove(metric, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # prometheus_client before 0.22 raises for a series never seen
        metric.remove(*labels)


def observe_batch(model: str, rows: int) -> None:
    """One onnxruntime run of `rows` samples for `model` (what dynamic batching achieved)."""
    INFERENCE_RUN_ROWS.labels(model).observe(rows)
