"""Fault injection against real processes: a worker SIGKILLed mid-training, Redis lost mid-job and
during submission, the API restarted mid-job, 20 jobs on 2 workers. Every accepted job ends
`succeeded`, none twice, exactly one model each."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import select

from api_tests.e2e.test_spine import upload_dataset, upload_teacher
from api_tests.faults.stack import Stack, wait_for
from api_tests.harness import wait_job
from kdserve.service.store.db import Database, Job


def job_body(ids, epochs):
    return {**ids, "student": {"architecture": "mlp", "params": {"hidden_sizes": [32]}},
            "method": {"name": "kd"}, "training": {"epochs": epochs, "learning_rate": 0.005}}


@pytest.fixture()
def stack(tmp_path):
    with Stack(tmp_path / "stack") as s:
        yield s


@pytest.fixture()
def ids(stack, files):
    with stack.client() as c:
        return {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}


def events(c, job_id):
    return c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def models_of(c, job_id):
    return [m for m in c.get("/v1/models", params={"limit": 100}).json()["data"] if m["job_id"] == job_id]


def test_worker_sigkill_resumes_from_checkpoint(stack, ids):
    worker = stack.start_worker()
    with stack.client() as c:
        job = c.post("/v1/jobs", json=job_body(ids, 150)).json()
        wait_for(lambda: c.get(f"/v1/jobs/{job['id']}").json()["epoch"] >= 5, 120, "epoch 5")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed_at = c.get(f"/v1/jobs/{job['id']}").json()
        assert killed_at["status"] == "running"
        stack.start_worker()
        job = wait_job(c, job["id"], timeout=300)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2 and job["epoch"] == 150
        ev = events(c, job["id"])
        resumed = [e["data"]["resume_epoch"] for e in ev if e["data"] and "resume_epoch" in e["data"]]
        assert resumed and resumed[0] >= 5
        assert any(e["data"] and e["data"].get("requeued") for e in ev)
        # every epoch after the resume point ran once more at most: no epoch is missing
        epochs = sorted({e["data"]["epoch"] for e in ev if e["type"] == "metrics"})
        assert epochs == list(range(1, 151))
        assert len(models_of(c, job["id"])) == 1


def test_redis_lost_mid_job_and_during_submission(stack, ids):
    stack.start_worker()
    with stack.client() as c:
        running = c.post("/v1/jobs", json=job_body(ids, 60)).json()
        queued = [c.post("/v1/jobs", json=job_body(ids, 3)).json() for _ in range(2)]
        wait_for(lambda: c.get(f"/v1/jobs/{running['id']}").json()["epoch"] >= 2, 120, "training")
        stack.stop_redis()
        r = c.post("/v1/jobs", json=job_body(ids, 3))
        assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
        assert c.get("/readyz").status_code == 503
        assert c.get(f"/v1/jobs/{running['id']}").status_code == 200  # the database still answers
        time.sleep(3)
        stack.start_redis()  # a new, empty Redis: the queued messages are gone
        accepted = [running, *queued]
        finished = [wait_job(c, j["id"], timeout=300) for j in accepted]
        assert [j["status"] for j in finished] == ["succeeded"] * 3, [j["error"] for j in finished]
        for j in finished:
            assert len(models_of(c, j["id"])) == 1
        assert c.get("/v1/jobs", params={"limit": 100}).json()["data"].__len__() == 3  # the refused one is not there
        assert c.get("/readyz").status_code == 200


def test_api_restart_mid_job(stack, ids):
    stack.start_worker()
    with stack.client() as c:
        job = c.post("/v1/jobs", json=job_body(ids, 80)).json()
        wait_for(lambda: c.get(f"/v1/jobs/{job['id']}").json()["epoch"] >= 3, 120, "training")
    stack.stop_api()
    time.sleep(2)
    stack.start_api()
    with stack.client() as c:
        job = wait_job(c, job["id"], timeout=300)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        epochs = [e["data"]["epoch"] for e in events(c, job["id"]) if e["type"] == "metrics"]
        assert epochs == list(range(1, 81))


def test_twenty_jobs_two_workers(stack, ids):
    stack.start_worker()
    stack.start_worker()
    with stack.client() as c:
        jobs = [c.post("/v1/jobs", json=job_body(ids, 2)).json() for _ in range(20)]
        done = [wait_job(c, j["id"], timeout=600) for j in jobs]
        assert all(j["status"] == "succeeded" for j in done), [j["error"] for j in done]
        assert all(j["attempts"] == 1 for j in done)
        models = c.get("/v1/models", params={"limit": 100}).json()["data"]
        assert sorted(m["job_id"] for m in models) == sorted(j["id"] for j in jobs)
    # both worker processes took part (the job row records which delivery ran it: host:pid:message)
    db = Database(f"sqlite:///{stack.root / 'kdserve.db'}")
    with db.session() as s:
        pids = {w.split(":")[1] for w in s.scalars(select(Job.worker))}
    assert pids == {str(w.pid) for w in stack.workers}
