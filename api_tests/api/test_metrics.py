"""GET /metrics: Prometheus text with jobs by status, job durations by method, queue depth,
workers, upload bytes, and the inference families the serving code feeds."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_tests.harness import KD_JOB, MACHINE_REDIS, Service, upload_dataset, upload_teacher, wait_job
from kdserve.service import metrics


TOKEN = "metrics-test-token"
# A reading lives KDSERVE_PROBE_CACHE_S (5 s by default); these tests compare a scrape before and
# after something happened, so each scrape here reads afresh.
FRESH = {"KDSERVE_METRICS_TOKEN": TOKEN, "KDSERVE_PROBE_CACHE_S": "0"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A service of its own: the counts below must not depend on what other tests left running.
    With a metrics token: the series are labelled by model id (api_tests/api/test_ops_security.py
    has the tokenless, hashed form)."""
    with Service(tmp_path_factory.mktemp("metrics-svc"), redis_url=MACHINE_REDIS, extra_env=FRESH) as svc:
        yield svc


def scrape(service) -> dict:
    # no API key: Prometheus sends none, only the metrics token
    r = httpx.get(service.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    matches = [s.value for s in families[family].samples
               if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (family, sample, labels, families[family].samples)
    return matches[0]


@pytest.fixture(scope="module")
def after_a_job(service, files):
    before = scrape(service)
    with service.client() as c:
        teacher = upload_teacher(c, files["onnx"])
        dataset = upload_dataset(c, files["npz"])
        job = c.post("/v1/jobs", json={**KD_JOB, "training": {"epochs": 3}, "teacher_id": teacher["id"],
                                       "dataset_id": dataset["id"]}).json()
        job = wait_job(c, job["id"])
    assert job["status"] == "succeeded", job
    return before, scrape(service), teacher, dataset, job


def test_jobs_by_status_and_duration_by_method(after_a_job):
    before, now, _, _, job = after_a_job
    assert now["kdserve_jobs"].type == "gauge"
    assert {s.labels["status"] for s in now["kdserve_jobs"].samples} == {"queued", "running", "succeeded", "failed",
                                                                         "cancelled"}
    assert value(now, "kdserve_jobs", status="succeeded") >= value(before, "kdserve_jobs", status="succeeded") + 1
    assert value(now, "kdserve_jobs", status="running") == 0

    duration = now["kdserve_job_duration_seconds"]
    assert duration.type == "histogram"
    count = value(now, "kdserve_job_duration_seconds", "kdserve_job_duration_seconds_count", method="kd",
                  status="succeeded")
    assert count >= 1
    inf = value(now, "kdserve_job_duration_seconds", "kdserve_job_duration_seconds_bucket", method="kd",
                status="succeeded", le="+Inf")
    assert inf == count
    assert value(now, "kdserve_job_duration_seconds", "kdserve_job_duration_seconds_bucket", method="kd",
                 status="succeeded", le="86400.0") == count  # a digits job takes seconds, not a day
    total = value(now, "kdserve_job_duration_seconds", "kdserve_job_duration_seconds_sum", method="kd",
                  status="succeeded")
    assert 0 <= total <= count * 600
    assert job["finished_at"] - job["started_at"] <= total
    assert value(now, "kdserve_database_up") == 1


def test_queue_depth_and_workers(service, after_a_job):
    _, now, _, _, _ = after_a_job
    assert value(now, "kdserve_broker_up") == 1
    queue = service.env["KDSERVE_QUEUE"]
    assert value(now, "kdserve_queue_depth", queue=queue) == 0  # the job ran: nothing waits
    # the one worker `kdserve up` started is idle now and answered the broadcast
    assert value(now, "kdserve_workers", state="idle") == 1
    assert value(now, "kdserve_workers", state="busy") == 0


def wait_running(c, job_id: str, timeout: float = 60) -> dict:
    """Until the job has finished an epoch: its worker is inside the training loop."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["epoch"] >= 1:
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def test_busy_worker_and_queued_job_are_counted(service, files):
    with service.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}
        long = {**KD_JOB, **ids, "training": {**KD_JOB["training"], "epochs": 5000}}
        running = c.post("/v1/jobs", json=long).json()
        waiting = c.post("/v1/jobs", json=long).json()
        try:
            wait_running(c, running["id"])
            now = scrape(service)
            assert value(now, "kdserve_jobs", status="running") == 1
            assert value(now, "kdserve_jobs", status="queued") >= 1
            assert value(now, "kdserve_queue_depth", queue=service.env["KDSERVE_QUEUE"]) >= 1
            assert value(now, "kdserve_workers", state="busy") == 1  # training: it cannot answer, its job counts
            assert value(now, "kdserve_workers", state="idle") == 0
        finally:
            c.post(f"/v1/jobs/{waiting['id']}/cancel")
            c.post(f"/v1/jobs/{running['id']}/cancel")
            assert wait_job(c, running["id"], timeout=60)["status"] == "cancelled"


def test_upload_bytes(after_a_job):
    before, now, teacher, dataset, _ = after_a_job

    def bytes_of(families, kind):
        samples = [s.value for s in families["kdserve_upload_bytes"].samples
                   if s.name == "kdserve_upload_bytes_total" and s.labels["kind"] == kind]
        return samples[0] if samples else 0.0

    assert now["kdserve_upload_bytes"].type == "counter"
    assert bytes_of(now, "teacher") - bytes_of(before, "teacher") >= teacher["size_bytes"]
    assert bytes_of(now, "dataset") - bytes_of(before, "dataset") >= dataset["size_bytes"]


def test_inference_families_are_exposed(after_a_job):
    _, now, _, _, _ = after_a_job
    assert now["kdserve_inference_requests"].type == "counter"
    for name in ("kdserve_inference_latency_seconds", "kdserve_inference_request_batch_size",
                 "kdserve_inference_run_batch_size"):
        assert now[name].type == "histogram"


def test_inference_requests_latency_and_batch_sizes(service, after_a_job, digits):
    """/v1 predict and /v2 infer on the job's student, then the per-model series."""
    _, _, _, _, job = after_a_job
    model = job["model_id"]
    x = digits.x_test[:5]
    with service.client() as c:
        assert c.post(f"/v1/models/{model}/predict", json={"inputs": x.tolist()}).status_code == 200
        v2 = {"inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
        assert c.post(f"/v2/models/{model}/infer", json=v2).status_code == 200
        assert c.post(f"/v1/models/{model}/predict", json={"inputs": [[1.0, 2.0]]}).status_code == 422
    now = scrape(service)
    for protocol in ("v1", "v2"):
        assert value(now, "kdserve_inference_requests", "kdserve_inference_requests_total", model=model,
                     protocol=protocol, outcome="ok") == 1
        assert value(now, "kdserve_inference_latency_seconds", "kdserve_inference_latency_seconds_count", model=model,
                     protocol=protocol) == 1
        assert 0 < value(now, "kdserve_inference_latency_seconds", "kdserve_inference_latency_seconds_sum",
                         model=model, protocol=protocol) < 30
        assert value(now, "kdserve_inference_request_batch_size", "kdserve_inference_request_batch_size_bucket",
                     model=model, protocol=protocol, le="4.0") == 0
        assert value(now, "kdserve_inference_request_batch_size", "kdserve_inference_request_batch_size_bucket",
                     model=model, protocol=protocol, le="8.0") == 1  # 5 rows
    assert value(now, "kdserve_inference_requests", "kdserve_inference_requests_total", model=model, protocol="v1",
                 outcome="error") == 1
    runs = value(now, "kdserve_inference_run_batch_size", "kdserve_inference_run_batch_size_count", model=model)
    rows = value(now, "kdserve_inference_run_batch_size", "kdserve_inference_run_batch_size_sum", model=model)
    assert 1 <= runs <= 2 and rows == 10  # two requests of 5 rows, run alone or merged by dynamic batching


def test_inference_helpers_record_what_serving_reports():
    """The functions the serving code calls, on the registry /metrics renders."""
    def sample(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = sample("kdserve_inference_requests_total", model="mdl_helper", protocol="v2", outcome="ok")
    metrics.observe_inference("mdl_helper", protocol="v2", batch_size=8, seconds=0.004)
    metrics.observe_inference("mdl_helper", protocol="v2", batch_size=3, seconds=0.5, outcome="error")
    metrics.observe_batch("mdl_helper", rows=24)
    assert sample("kdserve_inference_requests_total", model="mdl_helper", protocol="v2", outcome="ok") == before_ok + 1
    assert sample("kdserve_inference_requests_total", model="mdl_helper", protocol="v2", outcome="error") >= 1
    assert sample("kdserve_inference_latency_seconds_count", model="mdl_helper", protocol="v2") == before_ok + 1
    assert sample("kdserve_inference_latency_seconds_bucket", model="mdl_helper", protocol="v2", le="0.005") >= 1
    assert sample("kdserve_inference_request_batch_size_bucket", model="mdl_helper", protocol="v2", le="8.0") >= 1
    assert sample("kdserve_inference_run_batch_size_bucket", model="mdl_helper", le="32.0") >= 1


def test_on_postgres_and_the_embedded_redis(tmp_path, postgres_url, files):  # noqa: F811
    """The other backends: the method is read from the JSON spec in SQL (another dialect), and the
    broker is the embedded redis-server on a unix socket (a `redis+socket://` URL)."""
    with Service(tmp_path / "svc", redis_url=None, database_url=postgres_url, extra_env=FRESH) as svc:
        with svc.client() as c:
            ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"],
                   "dataset_id": upload_dataset(c, files["npz"])["id"]}
            for method in ("kd", "ce"):
                body = {**KD_JOB, **ids, "method": {"name": method}, "training": {"epochs": 1}}
                assert wait_job(c, c.post("/v1/jobs", json=body).json()["id"])["status"] == "succeeded"
        now = scrape(svc)
    for method in ("kd", "ce"):
        assert value(now, "kdserve_job_duration_seconds", "kdserve_job_duration_seconds_count", method=method,
                     status="succeeded") == 1
    assert value(now, "kdserve_jobs", status="succeeded") == 2
    assert value(now, "kdserve_broker_up") == 1 and value(now, "kdserve_database_up") == 1
    assert value(now, "kdserve_queue_depth", queue=svc.env["KDSERVE_QUEUE"]) == 0
    assert value(now, "kdserve_workers", state="idle") == 1
