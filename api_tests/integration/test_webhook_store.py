"""The webhook outbox and the senders' claim on both databases (SQLite and a PostgreSQL database of
its own on the machine's server): senders racing for one due delivery make one attempt between
them, and a job's transaction that writes a delivery commits although the endpoint was deleted
meanwhile (no foreign key to fail it; PostgreSQL, where writers run side by side)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from kdserve.service.store.db import Database, Job, JobEvent, Webhook, WebhookDelivery
from kdserve.service.webhooks import signing
from kdserve.service.webhooks.sender import claim


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'kdserve.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    database = Database(url)
    database.migrate()
    with database.session() as s:
        s.add(Webhook(id="wh_1", tenant="acme", url="https://hooks.example/in", events=["job.running"],
                      secret=signing.new_secret(), enabled=True))
        s.add(Job(id="job_1", tenant="acme", status="queued", dataset_id="ds_1", spec={}))
    yield database
    database.engine.dispose()  # PostgreSQL cannot drop a database with connections open


def test_senders_racing_for_a_delivery_make_one_attempt(db):
    db.add_event("job_1", "running", type="stage", data={"status": "running"})
    with db.session() as s:
        [delivery_id] = s.scalars(select(WebhookDelivery.id))
    start, won = threading.Barrier(8), []

    def sender(k: int) -> None:
        start.wait()
        if claim(db, delivery_id, f"sender-{k}", time.time(), lease=60):
            won.append(k)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


def test_a_deleted_endpoint_never_fails_the_jobs_transaction(db):
    if db.engine.dialect.name == "sqlite":
        pytest.skip("SQLite runs one writer at a time: the delete would wait for the job's transaction")
    with db.session() as s:  # the job's transaction: its event and the delivery it writes...
        s.add(JobEvent(job_id="job_1", type="stage", message="running", data={"status": "running"}))
        s.flush()
        with db.session() as other:  # ...while the endpoint is deleted and that commits first
            other.query(Webhook).filter_by(id="wh_1").delete()
    with db.session() as s:
        assert s.query(JobEvent).filter_by(job_id="job_1").count() == 1
        assert [d.webhook_id for d in s.query(WebhookDelivery)] == ["wh_1"]  # an orphan the sender drops
