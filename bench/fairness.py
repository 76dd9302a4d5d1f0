"""Fairness between tenants: does one tenant's backlog delay another tenant's first job?

    python -m bench.fairness [--jobs 20]      → prints the figures (the lead collects them)
    python -m bench.fairness --claim-cost     → what the fair choice costs a worker per job

One worker (`kdserve up --workers 1`), two tenants with their own keys, teacher and data. Tenant
A queues `--jobs` short jobs (1 epoch of a small MLP on digits), then tenant B queues one. The
order in which jobs started is read from their `running (attempt 1)` events (event ids are one
sequence for the whole database, so they order starts exactly). B's position is the number of A's
jobs that started before B's: with a FIFO queue it is every one of them, with a fair queue at
most one or two (the one running when B arrived, and one the worker had already taken).

--claim-cost times Database.claim_next itself on SQLite and on a fresh PostgreSQL database holding
a history of 10,000 finished jobs of 50 tenants and 100 queued jobs of 3 tenants.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import machine
from kdserve.service.store.db import Database, Job, now
from testkit import digits as dg
from testkit.service import Service, postgres_database, upload_dataset, upload_teacher, wait_job

JOB = {"student": {"architecture": "mlp", "params": {"hidden_sizes": [16]}}, "method": {"name": "kd"},
       "training": {"epochs": 1, "batch_size": 256, "device": "cpu"}}


def started_at_event(client, job_id: str) -> int:
    """The id of the job's first `running` event: its place in the order of starts."""
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return next(e["id"] for e in events if e["type"] == "stage" and (e["data"] or {}).get("status") == "running")


def measure(root: Path, n_jobs: int) -> dict:
    digits = dg.load()
    teacher = dg.save_onnx(dg.train_teacher(digits), root / "teacher.onnx")
    data = dg.save_npz(digits.x_train, digits.y_train, root / "digits.npz")
    with Service(root / "svc", workers=1) as svc:
        clients = {t: svc.client(svc.create_key(t)) for t in ("tenant-a", "tenant-b")}
        ids = {t: {"teacher_id": upload_teacher(c, teacher)["id"], "dataset_id": upload_dataset(c, data)["id"]}
               for t, c in clients.items()}
        a, b = clients["tenant-a"], clients["tenant-b"]
        t0 = time.time()
        a_jobs = [a.post("/v1/jobs", json={**ids["tenant-a"], **JOB}).json()["id"] for _ in range(n_jobs)]
        b_job = b.post("/v1/jobs", json={**ids["tenant-b"], **JOB}).json()["id"]
        b_done = wait_job(b, b_job, timeout=60 * n_jobs)
        b_wait = b_done["started_at"] - b_done["created_at"]
        for j in a_jobs:
            wait_job(a, j, timeout=60 * n_jobs)
        total = time.time() - t0
        b_start = started_at_event(b, b_job)
        position = sum(started_at_event(a, j) < b_start for j in a_jobs)
        for c in clients.values():
            c.close()
    return {"a_jobs": n_jobs, "b_position": position, "b_wait_s": b_wait, "total_s": round(total, 1)}


def claim_cost(url: str, claims: int = 21) -> tuple[float, float]:
    """Median and slowest claim_next (ms) with a history in the database."""
    db = Database(url)
    db.migrate()
    with db.session() as s:
        for i in range(10_000):
            s.add(Job(id=f"job_h{i}", tenant=f"t{i % 50}", status="succeeded", dataset_id="d", spec={},
                      claimed_at=time.time() - 10_000 + i))
        for i in range(100):
            s.add(Job(id=f"job_q{i}", tenant=f"t{i % 3}", status="queued", dataset_id="d", spec={}))
    took = []
    for k in range(claims):
        t0 = time.perf_counter()
        job = db.claim_next(f"bench:{k}", now() - 30)
        took.append((time.perf_counter() - t0) * 1000)
        db.update_job(job.id, status="succeeded")
    db.engine.dispose()
    took.sort()
    return took[len(took) // 2], took[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description="Tenant B's first job behind tenant A's backlog, one worker.")
    ap.add_argument("--jobs", type=int, default=20, help="jobs tenant A queues before B's one")
    ap.add_argument("--claim-cost", action="store_true", help="time Database.claim_next instead")
    args = ap.parse_args()
    if args.claim_cost:
        with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg:
            for name, url in (("SQLite", f"sqlite:///{tmp}/claim.db"), ("PostgreSQL", pg)):
                median, worst = claim_cost(url)
                print(f"{name}: claim_next median {median:.1f} ms, slowest {worst:.1f} ms "
                      "(10,000 finished jobs of 50 tenants, 100 queued)")
        return
    with tempfile.TemporaryDirectory(prefix="kdserve-fairness-") as tmp:
        result = measure(Path(tmp), args.jobs)
    print(machine())
    print(f"tenant A queued {result['a_jobs']} jobs, then tenant B one: B's job started after "
          f"{result['b_position']} of A's jobs, {result['b_wait_s']} s after it was queued "
          f"(all {result['a_jobs'] + 1} jobs done in {result['total_s']} s)")


if __name__ == "__main__":
    main()
