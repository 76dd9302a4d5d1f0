"""What the job routers share: a job row as the API's JobOut, the tenant's active-job limit, and
queueing a job just inserted (undone when the broker is down)."""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from kdserve.service.api.deps import Context
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.queue import enqueue_job
from kdserve.service.schemas import JobOut
from kdserve.service.store.db import Job, JobEvent, WebhookDelivery

log = logging.getLogger("kdserve.api")


def to_out(job: Job) -> JobOut:
    spec = job.spec
    return JobOut(
        id=job.id, status=job.status, stage=job.stage, progress=job.progress, epoch=job.epoch,
        epochs=spec["training"]["epochs"], teacher_id=job.teacher_id, dataset_id=job.dataset_id,
        validation_dataset_id=job.validation_dataset_id, test_dataset_id=job.test_dataset_id, student=spec["student"], method=spec["method"],
        training=spec["training"], export=spec["export"], metrics=job.metrics or {}, model_id=job.model_id,
        error=job.error, attempts=job.attempts, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, estimated_finish=job.estimated_finish, metadata=spec.get("metadata", {}),
        warnings=job.warnings or [],
    )


def check_active_jobs(ctx: Context, s, who: Principal) -> None:
    """429 when the tenant already has its limit of queued and running jobs."""
    active = s.scalar(select(func.count()).select_from(Job).where(
        Job.tenant == who.tenant, Job.status.in_(("queued", "running"))))
    if active >= ctx.settings.tenant_max_active_jobs:
        raise ApiError(429, "rate_limited", f"tenant {who.tenant!r} has {active} queued or running jobs, its limit "
                       "(KDSERVE_TENANT_MAX_ACTIVE_JOBS); wait for one to end or cancel one")


def enqueue_or_undo(ctx: Context, job_id: str) -> None:
    """Queue a job just inserted; when the broker is unreachable, delete it again (and the webhook
    deliveries that announced it) and answer 503."""
    try:
        enqueue_job(ctx.celery, job_id, ctx.settings.queue)
    except Exception as exc:
        log.warning("broker unavailable, job %s not accepted: %s", job_id, exc)
        with ctx.db.session() as s:
            s.query(JobEvent).filter_by(job_id=job_id).delete()
            s.query(WebhookDelivery).filter_by(subject_id=job_id, status="pending").delete()
            s.query(Job).filter_by(id=job_id).delete()
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; nothing was created, retry shortly")
