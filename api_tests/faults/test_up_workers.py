"""`kdserve up --workers 2` supervises its workers: SIGKILL the one training a job, and `kdserve up`
starts a replacement (and says so in its log); the job is re-queued by the reaper (its heartbeat
stopped), resumes from its checkpoint, and succeeds with exactly one model."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from api_tests.harness import Service, events, job_body, models_of, upload_dataset, upload_teacher, wait_job, wait_until

SETTINGS = {"KDSERVE_HEARTBEAT_S": "1", "KDSERVE_STALE_AFTER_S": "4", "KDSERVE_REAPER_INTERVAL_S": "1"}


@pytest.mark.timeout(420)
def test_up_replaces_a_killed_worker_and_its_job_still_succeeds(tmp_path, files):
    with Service(tmp_path / "up2", extra_env=SETTINGS, workers=2) as svc, svc.client() as c:
        workers = wait_until(lambda: (p := svc.worker_pids()) and len(p) == 2 and p, 60, "two workers")
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}
        job = c.post("/v1/jobs", json=job_body(ids, 60)).json()
        wait_until(lambda: c.get(f"/v1/jobs/{job['id']}").json()["epoch"] >= 3, 120, "epoch 3")
        victim = svc.job_worker_pid(job["id"])
        assert victim in workers
        # workers run niced (KDSERVE_WORKER_NICE, default 10) with the cores shared out among them
        assert {os.getpriority(os.PRIO_PROCESS, p) for p in workers} == {10}
        threads = max(1, (os.cpu_count() or 1) // 2)
        assert all(f"KDSERVE_WORKER_THREADS={threads}".encode() in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
                   for p in workers)
        os.kill(victim, signal.SIGKILL)

        wait_until(lambda: not Path(f"/proc/{victim}").exists(), 30, "the killed worker to be reaped")
        now = wait_until(lambda: (p := svc.worker_pids()) and len(p) == 2 and p, 60, "a replacement worker")
        (replacement,) = set(now) - set(workers)
        # `kdserve up` logs the restart just after starting the process: the new pid can be seen first
        wait_until(lambda: f"restarted (pid {replacement})" in svc.log.read_text(), 10, "the restart's log line")
        log = svc.log.read_text()
        assert f"(pid {victim}) killed by SIGKILL" in log and "restarting it in 1 s" in log, log[-3000:]
        assert f"restarted (pid {replacement})" in log

        job = wait_job(c, job["id"], timeout=300)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2 and job["epoch"] == 60
        assert svc.job_worker_pid(job["id"]) in now  # a live worker, the survivor or the replacement, finished it
        ev = events(c, job["id"])
        resumed = [e["data"]["resume_epoch"] for e in ev if e["data"] and "resume_epoch" in e["data"]]
        assert resumed and resumed[0] >= 3
        assert len(models_of(c, job["id"])) == 1


@pytest.mark.timeout(420)
def test_stopping_up_mid_job_gives_the_job_back(tmp_path, files):
    """Stopping `kdserve up` (its workers get a cold shutdown, which Celery carries out by raising
    inside the running task) leaves the job to resume, not failed; the next `up` finishes it from
    its checkpoint, and the interrupted delivery does not count as an attempt."""
    env = {**SETTINGS, "KDSERVE_QUEUE": f"kdtest-restart-{os.getpid()}"}
    with Service(tmp_path / "svc", extra_env=env) as svc, svc.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}
        job = c.post("/v1/jobs", json=job_body(ids, 60)).json()
        wait_until(lambda: c.get(f"/v1/jobs/{job['id']}").json()["epoch"] >= 3, 120, "epoch 3")
    with Service(tmp_path / "svc", extra_env=env) as svc, svc.client() as c:
        log = svc.log.read_text()
        assert "interrupted by the worker's shutdown" in log and f"job {job['id']} crashed" not in log
        job = wait_job(c, job["id"], timeout=300)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 1 and job["epoch"] == 60
        ev = events(c, job["id"])
        assert any(e["data"] and e["data"].get("released") for e in ev)
        resumed = [e["data"]["resume_epoch"] for e in ev if e["data"] and "resume_epoch" in e["data"]]
        assert resumed and resumed[0] >= 3
        assert len(models_of(c, job["id"])) == 1
