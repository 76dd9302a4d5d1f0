"""A job that cannot stop between batches, under `kdserve up` (one worker): a cancel or the time
limit it ignores for KDSERVE_CANCEL_GRACE_S ends its worker process, the job is recorded as
cancelled (or failed with `timeout`), and `kdserve up` starts a fresh worker that takes the next
job. And the ordinary case: `training.max_duration_s` stops a job between batches, without a kill.

The stuck job is real, not mocked: a TorchScript teacher whose forward pass runs 1000 rounds of a
256×256 matmul for every 8 rows of its batch, on the whole batch (a cost that grows with rows²).
Loading it (2 synthetic rows: no rounds) takes milliseconds; the worker's teacher pass over the
dataset (chunks of 512 rows: 64,000 rounds on 512 rows, ~34 TFLOP a chunk) would take hours on
this machine and minutes on any CPU. That pass is one call with no cancel check inside: the job's
`stage` reads `caching_teacher` from its start to its end, so a cancel sent then can only be
honoured by the grace kill. The kill is what bounds the test; if it did not happen the test
would fail on its own deadlines (and the service fixture stops what is left).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from api_tests.harness import Service, events, job_body, models_of, upload_dataset, upload_teacher, wait_job, wait_until

GRACE_S = 2
SETTINGS = {"KDSERVE_CANCEL_GRACE_S": str(GRACE_S), "KDSERVE_HEARTBEAT_S": "1", "KDSERVE_STALE_AFTER_S": "4",
            "KDSERVE_REAPER_INTERVAL_S": "1"}

pytestmark = pytest.mark.timeout(300)


class SlowTeacher(nn.Module):
    """A digits-shaped teacher (64 features → 10 logits), free on a few rows, very slow on a batch."""

    def __init__(self, rounds_per_8_rows: int = 1000):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inp = nn.Linear(64, 256)
        self.mix = nn.Parameter(torch.randn(256, 256, generator=g) / 16)
        self.out = nn.Linear(256, 10)
        self.rounds_per_8_rows = rounds_per_8_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for _ in range(x.shape[0] // 8 * self.rounds_per_8_rows):
            h = torch.tanh(h @ self.mix)
        return self.out(h)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with Service(tmp_path_factory.mktemp("stuck"), extra_env=SETTINGS, workers=1) as s:
        yield s


@pytest.fixture(scope="module")
def ids(svc, files, tmp_path_factory):
    slow = tmp_path_factory.mktemp("slow") / "slow_teacher.pt"
    torch.jit.script(SlowTeacher()).save(str(slow))
    with svc.client() as c:
        return {"onnx": upload_teacher(c, files["onnx"])["id"], "slow": upload_teacher(c, slow, input_shape="[64]")["id"],
                "dataset": upload_dataset(c, files["npz"])["id"]}


def body(ids, teacher: str, epochs: int, **training) -> dict:
    spec = job_body({"teacher_id": ids[teacher], "dataset_id": ids["dataset"]}, epochs)
    spec["training"].update(device="cpu", **training)  # the slow teacher stays slow on a GPU machine too
    return spec


def the_worker(svc: Service) -> int:
    """The one live worker process (waits for it: after a kill, the replacement)."""
    return wait_until(lambda: (p := svc.worker_pids()) and len(p) == 1 and p[0], 60, "one worker")


def assert_nothing_published(c, job: dict) -> None:
    assert job["model_id"] is None and models_of(c, job["id"]) == []


def assert_replaced(svc: Service, old: int, why: str) -> int:
    """The old worker process is gone, `kdserve up` said why and started another; its pid."""
    wait_until(lambda: not Path(f"/proc/{old}").exists(), 30, f"worker {old} to exit")
    new = the_worker(svc)
    assert new != old
    # `kdserve up` logs the restart just after starting the process: the new pid can be seen first
    wait_until(lambda: f"restarted (pid {new})" in svc.log.read_text(), 10, f"the log line of worker {new}'s start")
    log = svc.log.read_text()
    assert f"(pid {old}) {why}" in log and f"restarted (pid {new})" in log, log[-3000:]
    return new


def assert_takes_next_job(svc: Service, c, ids, worker: int) -> None:
    job = wait_job(c, c.post("/v1/jobs", json=body(ids, "onnx", 2)).json()["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert svc.job_worker_pid(job["id"]) == worker


def wait_stage(c, job_id: str, stage: str) -> dict:
    def reached():
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        return job if job["stage"] == stage else None

    return wait_until(reached, 120, f"stage {stage}")


def test_cancel_of_a_stuck_job_ends_its_worker_and_a_fresh_one_takes_the_next_job(svc, ids):
    old = the_worker(svc)
    with svc.client() as c:
        job = c.post("/v1/jobs", json=body(ids, "slow", 5)).json()
        wait_stage(c, job["id"], "caching_teacher")
        assert svc.job_worker_pid(job["id"]) == old
        t0 = time.time()
        r = c.post(f"/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "running"  # running: it stops, it is not dropped
        job = wait_job(c, job["id"], timeout=GRACE_S + 30)
        took = time.time() - t0
        assert job["status"] == "cancelled" and job["error"] is None
        assert took < GRACE_S + 10, took  # the worker polls once a second, then waits out the grace
        assert_nothing_published(c, job)
        messages = [e["message"] for e in events(c, job["id"])]
        # what happened before the kill is kept, and the last event says how it ended
        for kept in ("running (attempt 1)", "validating", "caching teacher", "cancel requested; stopping at the next batch"):
            assert kept in messages, messages
        assert messages[-1] == f"cancelled; the worker was stuck for {GRACE_S} s and was terminated"
        new = assert_replaced(svc, old, "exited with code 70")
        assert_takes_next_job(svc, c, ids, new)
        assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # the fresh worker left it alone


def test_stuck_job_past_its_time_limit_fails_with_timeout(svc, ids):
    old = the_worker(svc)
    limit = 8  # loading the teacher and the data (validating) takes a second or two; its pass far longer
    with svc.client() as c:
        job = c.post("/v1/jobs", json=body(ids, "slow", 5, max_duration_s=limit)).json()
        wait_stage(c, job["id"], "caching_teacher")
        job = wait_job(c, job["id"], timeout=limit + GRACE_S + 40)
        assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
        assert job["error"]["message"] == (f"the job ran past training.max_duration_s = {limit} s; "
                                           f"the worker was stuck for {GRACE_S} s and was terminated")
        assert limit <= job["finished_at"] - job["started_at"] <= limit + GRACE_S + 10
        assert_nothing_published(c, job)
        assert "caching teacher" in [e["message"] for e in events(c, job["id"])]
        new = assert_replaced(svc, old, "exited with code 70")
        assert_takes_next_job(svc, c, ids, new)


def test_time_limit_stops_a_training_job_between_batches(svc, ids):
    worker = the_worker(svc)
    limit = 10
    with svc.client() as c:
        job = c.post("/v1/jobs", json=body(ids, "onnx", 10_000, batch_size=32, max_duration_s=limit)).json()
        job = wait_job(c, job["id"], timeout=limit + 60)
        assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
        assert job["error"]["message"] == f"the job ran past training.max_duration_s = {limit} s"
        assert limit <= job["finished_at"] - job["started_at"] <= limit + 8
        assert_nothing_published(c, job)
        ev = events(c, job["id"])
        metrics = [e["data"]["epoch"] for e in ev if e["type"] == "metrics"]
        assert metrics and metrics == list(range(1, len(metrics) + 1)) and job["epoch"] == metrics[-1]
        assert ev[-1]["level"] == "error" and ev[-1]["data"] == {"status": "failed"}
        # stopped between batches: the worker was not killed, and it takes the next job itself
        assert svc.worker_pids() == [worker]
        assert_takes_next_job(svc, c, ids, worker)
