"""GET /metrics: Prometheus text format.

Two kinds of numbers:
- counted in this process as things happen (service/metrics.py): upload bytes, inference
  requests, latency and batch sizes;
- read at scrape time from where the truth lives, so they are right whichever process (or
  machine) changed them: jobs by status and the duration of finished jobs (the database), the
  queue depth (Redis LLEN of the Celery queue) and the workers (idle ones answer a broadcast, busy
  ones keep their job's heartbeat fresh).

Every scrape-time source is bounded in time (Redis socket timeouts of 2 s, a 0.5 s broadcast) and
a source that is down is reported as `kdserve_<source>_up 0` instead of failing the scrape.

Who may read it: with KDSERVE_METRICS_TOKEN set, only a scraper that sends `Authorization:
Bearer <token>` (Prometheus's `authorization` setting), and inference series are labelled by model
id. Without it, anyone who reaches the port (Prometheus scrapes without an API key), so the
numbers are aggregates with no tenant's names or ids in them: the `model` label is a hash of the
id (`m_` + 16 hex digits of its sha256; `hashed_label(id)` gives it for an id you know).

What a scrape costs: the database, broker and workers' broadcast are read at most once per
KDSERVE_PROBE_CACHE_S (5 s) whatever the scrape rate; scrapes within it share one reading.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func, select

from kdserve.service import metrics as counted
from kdserve.service.api.deps import Context, get_ctx
from kdserve.service.errors import ApiError
from kdserve.service.queue import redis_client
from kdserve.service.store.db import TERMINAL, Job, now

router = APIRouter(tags=["operations"])
log = logging.getLogger("kdserve.api")

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
# Job wall time from start to end: a digits job takes seconds, a real one hours.
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
# kombu's Redis transport keeps one list per priority step: `queue`, `queue\x06\x163`, … (see
# kombu.transport.redis.Channel._q_for_pri); the depth is their sum.
PRIORITY_SEPARATOR, PRIORITY_STEPS = "\x06\x16", (0, 3, 6, 9)
PING_TIMEOUT_S = 0.5


@dataclass(eq=False)  # a collector is registered in a set: hashed by identity
class Snapshot:
    """What one scrape read, as Prometheus families."""

    families: list[Metric] = field(default_factory=list)

    def collect(self):  # the prometheus_client collector protocol
        return self.families


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), value)
    return g


def _jobs(ctx: Context) -> tuple[list[Metric], int]:
    """The job families, and how many running jobs have a live worker (a heartbeat within
    stale_after_s: the same test the reaper uses to decide that a worker died)."""
    with ctx.db.session() as s:
        counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        alive = s.scalar(select(func.count()).where(
            Job.status == "running", Job.heartbeat_at >= now() - int(ctx.settings.stale_after_s)))
        # The method is inside the JSON spec: select it in a subquery and group by that column, so
        # that PostgreSQL sees one expression (a JSON path repeated in GROUP BY would not match).
        finished = select(
            Job.spec["method"]["name"].as_string().label("method"), Job.status.label("status"),
            (Job.finished_at - Job.started_at).label("seconds"),
        ).where(Job.status.in_(TERMINAL), Job.started_at.is_not(None), Job.finished_at.is_not(None)).subquery()
        rows = s.execute(select(
            finished.c.method, finished.c.status, func.count(), func.sum(finished.c.seconds),
            *[func.sum(case((finished.c.seconds <= b, 1), else_=0)) for b in DURATION_BUCKETS],
        ).group_by(finished.c.method, finished.c.status)).all()

    jobs = GaugeMetricFamily("kdserve_jobs", "Jobs in the database by status.", labels=["status"])
    for status in STATUSES:
        jobs.add_metric([status], counts.get(status, 0))
    durations = HistogramMetricFamily(
        "kdserve_job_duration_seconds", "Wall time from start to end of finished jobs, by method and final status.",
        labels=["method", "status"])
    for method, status, count, total, *cumulative in rows:
        buckets = [(str(float(b)), int(n or 0)) for b, n in zip(DURATION_BUCKETS, cumulative)] + [("+Inf", int(count))]
        durations.add_metric([method or "unknown", status], buckets, float(total or 0))
    return [jobs, durations], int(alive or 0)


def _broker(ctx: Context, busy_workers: int | None) -> list[Metric]:
    queue = ctx.settings.queue
    try:
        with redis_client(ctx.settings.resolved_redis_url) as r, r.pipeline(transaction=False) as pipe:
            for step in PRIORITY_STEPS:
                pipe.llen(queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}")
            depth = sum(pipe.execute())
    except Exception as exc:  # the broker is down: say so, and skip what needs it
        log.warning("metrics: broker unreachable: %s", exc)
        return [_gauge("kdserve_broker_up", "1 when the Celery broker (Redis) answered this scrape.", 0)]
    out = [_gauge("kdserve_broker_up", "1 when the Celery broker (Redis) answered this scrape.", 1),
           _gauge("kdserve_queue_depth", "Jobs waiting in the Celery queue (Redis LLEN over priority lists).",
                  depth, queue=queue)]

    # A worker is one Celery process (solo pool: one job at a time). An idle one answers a
    # broadcast; a busy one cannot (its main thread is training) and is counted through the job it
    # runs, whose heartbeat it keeps fresh. Replies are filtered by queue: several deployments may
    # share one Redis.
    try:
        replies = ctx.celery.control.broadcast("active_queues", reply=True, timeout=PING_TIMEOUT_S)
    except Exception as exc:
        log.warning("metrics: worker broadcast failed: %s", exc)
        replies = []
    idle = sum(1 for reply in replies for queues in reply.values()
               if isinstance(queues, list) and any(q.get("name") == queue for q in queues))
    workers = GaugeMetricFamily("kdserve_workers", "Celery workers of this deployment's queue: idle ones answered "
                                "a 0.5 s broadcast, busy ones run a job whose heartbeat is fresh.", labels=["state"])
    workers.add_metric(["idle"], idle)
    if busy_workers is not None:
        workers.add_metric(["busy"], busy_workers)
    out.append(workers)
    return out


def scrape(ctx: Context) -> Snapshot:
    """Read every scrape-time number (blocking I/O: run it in a thread)."""
    t0 = time.perf_counter()
    snap = Snapshot()
    busy = None
    try:
        job_families, busy = _jobs(ctx)
        snap.families += job_families
        snap.families.append(_gauge("kdserve_database_up", "1 when the database answered this scrape.", 1))
    except Exception as exc:
        log.warning("metrics: database unreachable: %s", exc)
        snap.families.append(_gauge("kdserve_database_up", "1 when the database answered this scrape.", 0))
    snap.families += _broker(ctx, busy)
    snap.families.append(_gauge("kdserve_scrape_seconds", "Time this scrape spent reading the database and broker.",
                                time.perf_counter() - t0))
    return snap


def hashed_label(model_id: str) -> str:
    return "m_" + hashlib.sha256(model_id.encode()).hexdigest()[:16]


class HashedModels:
    """The counted families (service/metrics.py) as the world sees them without the token: every
    `model` label replaced by hashed_label(its id)."""

    def collect(self):
        for family in counted.REGISTRY.collect():
            family.samples = [s._replace(labels={**s.labels, "model": hashed_label(s.labels["model"])})
                              if "model" in s.labels else s for s in family.samples]
            yield family


def _authorised(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, ctx: Context = Depends(get_ctx)) -> Response:
    token = ctx.settings.metrics_token
    if not _authorised(request, token):
        raise ApiError(401, "unauthorized", "GET /metrics needs 'Authorization: Bearer <KDSERVE_METRICS_TOKEN>'")
    snapshot = await request.app.state.probes.get("metrics", lambda: scrape(ctx))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(snapshot)
    if token is None:
        counted_registry = CollectorRegistry(auto_describe=False)
        counted_registry.register(HashedModels())
    else:
        counted_registry = counted.REGISTRY
    body = generate_latest(counted_registry) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
