"""The operations surface, which answers without an API key: /metrics gives no tenant's model ids
to the world (hashed labels; the raw ids only with KDSERVE_METRICS_TOKEN) and forgets a deleted
model's series; a scrape or probe flood costs the backends one reading per KDSERVE_PROBE_CACHE_S
(no broker broadcast, no blob write per request); /readyz names components, never an
exception's text. The bootstrap key file ends up 0600 and the data dir 0700 whatever existed
before, and /docs and the dashboard load nothing from another origin (strict CSP)."""

from __future__ import annotations

import os
import stat
import threading
import time

import httpx
import pytest
import redis
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from api_tests.harness import (CHROMIUM, CHROMIUM_ARGS, KD_JOB, Service, assert_error, upload_dataset,
                               upload_teacher, wait_job)
from kdserve.service.api.metrics import hashed_label

TOKEN = "ops-test-token-" + "x" * 20


def run_job(c: httpx.Client, files) -> dict:
    ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}
    job = wait_job(c, c.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 1}}).json()["id"])
    assert job["status"] == "succeeded", job
    return job


def infer_once(c: httpx.Client, model_id: str, digits) -> None:
    x = digits.x_test[:3]
    body = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert c.post(f"/v2/models/{model_id}/infer", json=body).status_code == 200


def model_labels(text: str) -> set[str]:
    return {s.labels["model"] for f in text_string_to_metric_families(text) for s in f.samples if "model" in s.labels}


def test_metrics_without_a_token_hides_model_ids(service, client, files, digits):
    job = run_job(client, files)
    infer_once(client, job["model_id"], digits)
    r = httpx.get(service.base_url + "/metrics", timeout=30)
    assert r.status_code == 200
    assert job["model_id"] not in r.text and "mdl_" not in r.text
    assert hashed_label(job["model_id"]) in model_labels(r.text)


@pytest.fixture(scope="module")
def tokened(tmp_path_factory):
    """A service with a metrics token, the embedded Redis (its command counts are this service's
    alone) and a reading that lives 60 s."""
    env = {"KDSERVE_METRICS_TOKEN": TOKEN, "KDSERVE_PROBE_CACHE_S": "60"}
    with Service(tmp_path_factory.mktemp("ops-svc"), extra_env=env) as svc:
        yield svc


class Broadcasts:
    """The Celery broadcasts (PUBLISH to the remote-control pidbox channel) the service's Redis
    runs while the block runs, seen with MONITOR. Worker heartbeats (celeryev, every 2 s) are
    not broadcasts and are not counted. A marker published at the end proves the monitor was
    listening the whole time."""

    MARKER = "kdtest.monitor-marker"

    def __init__(self, svc: Service):
        self.redis = redis.Redis(unix_socket_path=str(svc.data_dir / "redis.sock"))
        self.seen: list[str] = []
        self.ready, self.done = threading.Event(), threading.Event()

    def _listen(self) -> None:
        with self.redis.monitor() as m:
            self.ready.set()
            for cmd in m.listen():
                words = cmd["command"].split(" ")
                if words[0].upper() == "PUBLISH":
                    if self.MARKER in words[1]:
                        self.done.set()
                        return
                    if "pidbox" in words[1]:
                        self.seen.append(words[1])

    def __enter__(self) -> "Broadcasts":
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.redis.publish(self.MARKER, "end")
        assert self.done.wait(10), "the monitor never saw the end marker"
        self.redis.close()


def test_metrics_token(tokened):
    url = tokened.base_url + "/metrics"
    assert_error(httpx.get(url), 401, "unauthorized")
    assert_error(httpx.get(url, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    with tokened.client() as c:  # an API key is not the metrics token
        assert_error(c.get("/metrics"), 401, "unauthorized")
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_scrape_and_probe_floods_are_answered_from_one_reading(tokened):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    httpx.get(tokened.base_url + "/metrics", headers=auth).raise_for_status()  # the reading the others share
    httpx.get(tokened.base_url + "/readyz").raise_for_status()
    scratch = tokened.data_dir / "blobs" / ".tmp"
    before_scratch = scratch.stat().st_mtime_ns
    with Broadcasts(tokened) as broadcasts, httpx.Client(base_url=tokened.base_url, timeout=30) as c:
        seconds = {next(f for f in text_string_to_metric_families(c.get("/metrics", headers=auth).text)
                        if f.name == "kdserve_scrape_seconds").samples[0].value for _ in range(30)}
        assert all(c.get("/readyz").json()["status"] == "ready" for _ in range(30))
    assert len(seconds) == 1  # thirty scrapes, one reading of the database and broker
    assert broadcasts.seen == []  # no worker broadcast per scrape
    assert scratch.stat().st_mtime_ns == before_scratch  # no file written and removed per probe


def test_a_deleted_models_series_are_removed(tokened, files, digits):
    with tokened.client() as c:
        job = run_job(c, files)
        infer_once(c, job["model_id"], digits)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert job["model_id"] in model_labels(httpx.get(tokened.base_url + "/metrics", headers=auth).text)
        assert c.delete(f"/v1/models/{job['model_id']}").status_code == 204
        assert job["model_id"] not in model_labels(httpx.get(tokened.base_url + "/metrics", headers=auth).text)


def test_readyz_names_components_without_exception_text(service):
    """The blob store's scratch folder disappears (a lost mount): not ready, and no path or
    exception text in the answer; back, ready again."""
    scratch = service.data_dir / "blobs" / ".tmp"
    kept = scratch.with_name(".tmp-away")
    scratch.rename(kept)
    try:
        deadline = time.time() + 30  # a ready answer is reused for KDSERVE_PROBE_CACHE_S (5 s)
        while (r := httpx.get(service.base_url + "/readyz")).status_code == 200:
            assert time.time() < deadline
            time.sleep(0.2)
        assert r.status_code == 503
        assert r.json() == {"status": "not_ready", "checks": {"database": "ok", "blob_store": "error", "broker": "ok"}}
    finally:
        kept.rename(scratch)
    assert httpx.get(service.base_url + "/readyz").json()["status"] == "ready"  # a not-ready answer is not reused


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_and_data_dir_modes(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    key_file = data / "api_key"
    key_file.write_text("kd_left-by-an-old-install\n")
    os.chmod(key_file, 0o644)
    with Service(data) as svc:  # the file's key is not valid: a new one is written, 0600
        first = svc.api_key
        assert first.startswith("kd_") and mode(key_file) == 0o600 and mode(data) == 0o700
        with svc.client() as c:
            assert c.get("/v1/jobs").status_code == 200
    os.chmod(key_file, 0o644)  # a copy or a backup restore loosened it; the key is still valid
    os.chmod(data, 0o755)
    with Service(data) as svc:
        assert svc.api_key == first and mode(key_file) == 0o600 and mode(data) == 0o700


def test_docs_and_dashboard_load_nothing_from_elsewhere(service):
    for path in ("/docs", "/"):
        csp = httpx.get(service.base_url + path).headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            requested, problems = [], []
            page.on("request", lambda req: requested.append(req.url))
            # what the CSP blocked (the dashboard's own 401 before a key is typed in is expected)
            page.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(service.base_url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)  # Swagger UI rendered the API
            assert page.locator(".opblock-summary-path", has_text="/v1/jobs").count() >= 1
            page.goto(service.base_url + "/")
            page.wait_for_selector("#key-prompt", state="visible", timeout=30_000)
        finally:
            browser.close()
    assert requested and all(url.startswith(service.base_url + "/") or url.startswith("data:") for url in requested), \
        requested
    assert problems == []
