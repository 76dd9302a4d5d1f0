"""Fault injection against real processes: a worker SIGKILLed mid-training, Redis lost mid-job and
during submission, the API restarted mid-job, 20 jobs on 2 workers. Every accepted job ends
`succeeded`, none twice, exactly one model each."""

from __future__ import annotations

import signal

import pytest
from sqlalchemy import select

from api_tests.harness import events, job_body, models_of, upload_dataset, upload_teacher, wait_job, wait_until
from kdserve.service.store.db import Database, Job
from testkit.stack import Stack


@pytest.fixture()
def stack(tmp_path):
    with Stack(tmp_path / "stack") as s:
        yield s


@pytest.fixture()
def ids(stack, files):
    with stack.client() as c:
        return {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}


def epoch_in_database(stack: Stack, job_id: str) -> int:
    """The job's epoch as its row says, read without the API."""
    db = Database(f"sqlite:///{stack.root / 'kdserve.db'}")
    try:
        with db.session() as s:
            return s.scalars(select(Job.epoch).where(Job.id == job_id)).one()
    finally:
        db.engine.dispose()


def test_worker_sigkill_resumes_from_checkpoint(stack, ids):
    worker = stack.start_worker()
    with stack.client() as c:
        job = c.post("/v1/jobs", json=job_body(ids, 150)).json()
        wait_until(lambda: c.get(f"/v1/jobs/{job['id']}").json()["epoch"] >= 5, 120, "epoch 5")
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
        wait_until(lambda: c.get(f"/v1/jobs/{running['id']}").json()["epoch"] >= 2, 120, "training")
        stack.stop_redis()
        r = c.post("/v1/jobs", json=job_body(ids, 3))
        assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
        assert c.get("/readyz").status_code == 503
        r = c.get(f"/v1/jobs/{running['id']}")
        assert r.status_code == 200  # the database still answers
        lost_at = r.json()["epoch"]
        # the outage lasts while the worker trains on: two more epochs
        wait_until(lambda: c.get(f"/v1/jobs/{running['id']}").json()["epoch"] >= lost_at + 2, 120,
                   "training going on with Redis down")
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
        wait_until(lambda: c.get(f"/v1/jobs/{job['id']}").json()["epoch"] >= 3, 120, "training")
    stack.stop_api()
    # the API stays down while the worker trains on (the row's epoch moves): two more epochs
    stopped_at = epoch_in_database(stack, job["id"])
    wait_until(lambda: epoch_in_database(stack, job["id"]) >= stopped_at + 2, 120,
               "training going on with the API down")
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
