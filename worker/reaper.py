"""The reaper: no accepted job is lost, none stays queued forever, and a cancel is honoured even
when the job's worker is gone.

Every worker runs it in a thread. Each round it
- ends `cancelled` the running jobs whose cancel was asked and whose heartbeat stopped (their
  worker was killed, or its machine died): nobody is left to stop them between batches, and no
  redelivery would come before the broker's visibility timeout (days);
- makes sure the broker holds a message for every job that waits for a worker (queued, or running
  with a silent worker). A message only wakes a worker, which then takes the fairest waiting job
  (Database.claim_next), so what counts is how many messages there are, not which ids they carry:
  when Redis restarted empty or lost messages, or a worker died with the job it had taken, ids of
  waiting jobs are sent again until the counts match.
- hands the webhook deliveries that are due (new ones whose message was lost, retries whose
  backoff has passed, ones whose sender died) to this worker's sender threads, which claim each
  before sending (kdserve.service.webhooks.sender), so a round never waits for a receiver.
The database is the truth; the broker only carries ids. An atomic update of `dispatched_at`
decides which reaper re-sends a job when several run, and the job's lease (see Database.claim_job)
makes a duplicate delivery harmless: a worker woken for nothing finds no job and acknowledges.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import or_, select, update

from kdserve.service.queue import enqueue_job, redis_client, waiting_job_ids
from kdserve.service.settings import Settings
from kdserve.service.store.blobs import BlobStore
from kdserve.service.store.db import Database, Job, JobEvent, Search, now, waiting
from kdserve.service.webhooks.sender import Sender
from kdserve.worker import search

log = logging.getLogger("kdserve.reaper")


def end_orphaned_cancels(db: Database, blobs: BlobStore | None, stale: int) -> list[str]:
    """Running jobs asked to cancel whose worker stopped sending heartbeats before `stale`: ended
    `cancelled`, with the event that says so, in one transaction each (a worker that comes back
    finds its lease gone and stops without touching the job). Their teacher and dataset are then
    free to delete."""
    with db.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.status == "running", Job.cancel_requested.is_(True),
                                                  Job.heartbeat_at < stale)))
    ended = []
    for job_id in ids:
        with db.session() as s:
            if s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.heartbeat_at < stale)
                         .values(status="cancelled", finished_at=now(), estimated_finish=None)).rowcount != 1:
                continue
            s.add(JobEvent(job_id=job_id, type="stage", data={"status": "cancelled"},
                           message="cancelled; its worker had stopped, so the reaper ended it (nothing published)"))
        if blobs is not None:
            blobs.delete_prefix(f"checkpoints/{job_id}")
        log.warning("job %s: cancel asked and its worker is gone; ended cancelled", job_id)
        ended.append(job_id)
    return ended


def step_searches(db: Database, celery_app, settings: Settings) -> None:
    """Every queued or running search takes a step: one whose creation message or whose last
    step was lost (its worker killed) goes on within a round."""
    with db.session() as s:
        ids = list(s.scalars(select(Search.id).where(Search.status.in_(("queued", "running")))))
    for search_id in ids:
        try:
            search.advance(db, settings, search_id, lambda job_id: enqueue_job(celery_app, job_id, settings.queue))
        except Exception as exc:
            log.warning("search %s: step failed: %s: %s", search_id, type(exc).__name__, exc)


def reap_once(db: Database, celery_app, settings: Settings, blobs: BlobStore | None = None,
              webhooks: Sender | None = None) -> list[str]:
    """One round; returns the ids it re-sent."""
    t = now()
    stale = t - int(settings.stale_after_s)
    end_orphaned_cancels(db, blobs, stale)
    step_searches(db, celery_app, settings)
    if webhooks is not None:
        try:
            webhooks.sweep()
        except Exception as exc:  # the jobs' part of the round goes on
            log.warning("webhook sweep failed: %s: %s", type(exc).__name__, exc)
    with db.session() as s:
        # the oldest first: their wake-up has been missing longest
        candidates = list(s.scalars(select(Job.id).where(
            waiting(stale), or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale)).order_by(Job.seq)))
    if not candidates:
        return []
    messages = waiting_job_ids(redis_client(settings.resolved_redis_url), settings.queue)
    missing, named = db.count_waiting(stale) - len(messages), set(messages)
    resent = []
    for job_id in candidates:
        if len(resent) >= missing:
            break
        if job_id in named:
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


def start(db: Database, celery_app, settings: Settings, blobs: BlobStore | None = None,
          webhooks: Sender | None = None) -> threading.Thread:
    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(settings.reaper_interval_s):
            try:
                reap_once(db, celery_app, settings, blobs, webhooks)
            except Exception as exc:  # broker or database down: try again next round
                log.warning("reaper round failed: %s: %s", type(exc).__name__, exc)

    thread = threading.Thread(target=loop, name="kdserve-reaper", daemon=True)
    thread.start()
    return thread
