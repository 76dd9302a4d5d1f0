"""The Celery app as both sides see it. The API only sends task names (it never imports worker
code); the worker registers the tasks on the same app configuration."""

from __future__ import annotations

import base64
import json

import redis
from celery import Celery

from kdserve.service.settings import Settings

RUN_JOB = "kdserve.run_job"
ADVANCE_SEARCH = "kdserve.advance_search"  # a search's next step: tell finished trials, ask for new ones
PROBE_TEACHER = "kdserve.probe_teacher"  # KDSERVE_PROBE=worker: an upload probed on a worker (torch there)
DELIVER_WEBHOOKS = "kdserve.deliver_webhooks"  # webhook deliveries the API wrote: a worker's senders attempt them


def make_celery(settings: Settings) -> Celery:
    app = Celery("kdserve", broker=settings.resolved_redis_url)
    app.conf.update(
        task_acks_late=True,                 # a job is acknowledged when it ends, not when it starts
        task_reject_on_worker_lost=True,     # a killed worker's job goes back to the queue
        worker_prefetch_multiplier=1,        # a busy worker holds no second job
        worker_concurrency=1,
        task_default_queue=settings.queue,
        task_ignore_result=True,             # the database holds every outcome (jobs);
        result_backend=settings.resolved_redis_url,  # only the teacher probe answers through Redis
        result_expires=3600,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def enqueue_job(app: Celery, job_id: str, queue: str) -> None:
    """Send the job id; fail fast (instead of retrying for minutes) when the broker is down."""
    app.send_task(RUN_JOB, args=[job_id], queue=queue, retry=False)


def enqueue_search(app: Celery, search_id: str, queue: str) -> None:
    """Ask a worker to take a search's next step now (workers' reapers also do, every round)."""
    app.send_task(ADVANCE_SEARCH, args=[search_id], queue=queue, retry=False)


def enqueue_deliveries(app: Celery, delivery_ids: list[str], queue: str) -> None:
    """Ask a worker to send these webhook deliveries now (the workers' sweep also does, every
    round, so a lost message only delays them)."""
    app.send_task(DELIVER_WEBHOOKS, args=[delivery_ids], queue=queue, retry=False)


def probe_queue(settings: Settings) -> str:
    """Probes have a queue of their own, so a worker kept for them (`kdserve worker --queues probe`,
    no GPU needed) answers uploads while every GPU worker is busy training."""
    return f"{settings.queue}.probe"


def redis_client(url: str) -> redis.Redis:
    """redis-py for a Celery broker URL (Celery's `redis+socket://` is redis-py's `unix://`)."""
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def waiting_job_ids(client: redis.Redis, queue: str) -> list[str]:
    """Job ids of the messages that wait in the queue, one per message (Celery's Redis transport
    keeps them in a list named after the queue). Messages already taken by a worker are not in it."""
    ids = []
    for raw in client.lrange(queue, 0, -1):
        try:
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            if message.get("headers", {}).get("task") == RUN_JOB and args:
                ids.append(str(args[0]))
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not one of ours
    return ids
