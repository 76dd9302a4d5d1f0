"""The reaper: no accepted job is lost and none stays queued forever.

Every worker runs it in a thread. Each round it finds
- running jobs whose heartbeat stopped (their worker was killed, or its machine died), and
- queued jobs whose message is no longer in the broker (Redis restarted empty, or lost it),
and sends their ids to the queue again. The database is the truth; the broker only carries ids.
An atomic update of `dispatched_at` decides which reaper re-sends a job when several run, and the
job's lease (see Database.claim_job) makes a duplicate delivery harmless.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import or_, select, update

from service.queue import enqueue_job, redis_client, waiting_job_ids
from service.settings import Settings
from service.store.db import Database, Job, JobEvent, now

log = logging.getLogger("kdserve.reaper")


def reap_once(db: Database, celery_app, settings: Settings) -> list[str]:
    """One round; returns the ids it re-sent."""
    t = now()
    stale = t - int(settings.stale_after_s)
    with db.session() as s:
        candidates = list(s.scalars(select(Job.id).where(
            or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale),
            or_(Job.status == "queued", (Job.status == "running") & (Job.heartbeat_at < stale)),
            Job.cancel_requested.is_(False),
        )))
    if not candidates:
        return []
    waiting = waiting_job_ids(redis_client(settings.resolved_redis_url), settings.queue)
    resent = []
    for job_id in candidates:
        if job_id in waiting:
            continue
        with db.session() as s:
            won = s.execute(update(Job).where(
                Job.id == job_id, or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale),
            ).values(dispatched_at=t)).rowcount == 1
            if not won:
                continue
            status = s.scalar(select(Job.status).where(Job.id == job_id))
            why = "its worker stopped sending heartbeats" if status == "running" else "the broker no longer held it"
            s.add(JobEvent(job_id=job_id, level="warning", message=f"re-queued: {why}", data={"requeued": True}))
        enqueue_job(celery_app, job_id, settings.queue)
        log.warning("job %s re-queued: %s", job_id, why)
        resent.append(job_id)
    return resent


def start(db: Database, celery_app, settings: Settings) -> threading.Thread:
    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(settings.reaper_interval_s):
            try:
                reap_once(db, celery_app, settings)
            except Exception as exc:  # broker or database down: try again next round
                log.warning("reaper round failed: %s: %s", type(exc).__name__, exc)

    thread = threading.Thread(target=loop, name="kdserve-reaper", daemon=True)
    thread.start()
    return thread
