"""/v1/jobs: create (pre-flight checks in job_checks.py, Idempotency-Key), get, list, cancel, events
(JSON or SSE)."""

from __future__ import annotations

import hashlib
import json
import logging

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from kdserve.service.api.deps import Context, body_openapi, get_ctx, get_owned, json_body, paginate, principal
from kdserve.service.api.event_stream import MAX_EVENT_ID, EventSource, respond
from kdserve.service.api.job_checks import normalize, preflight, resolve_auto, resolve_epochs, stored_spec
from kdserve.service.api.job_rows import check_active_jobs, enqueue_or_undo, to_out
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError, not_found
from kdserve.service.schemas import JobCreate, JobOut, ListOut
from kdserve.service.spec.jobs import AUTO_STEPS
from kdserve.service.store.db import TERMINAL, Dataset, Job, JobEvent, Teacher, new_id, now

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("kdserve.api")

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


SPEC_MAX_BYTES = 256 * 1024  # a job spec is a few KB; its JSON is stored with the job


@router.post("", status_code=202, response_model=JobOut, openapi_extra=body_openapi(JobCreate))
def create_job(body: JobCreate = Depends(json_body(JobCreate, SPEC_MAX_BYTES, "a job spec is a few KB")),
               idempotency_key: str | None = Header(None, max_length=255),
               ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    normalize(body)
    spec = stored_spec(body)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    try:
        with ctx.db.locked_session() as s:
            prior = _replay(s, who, idempotency_key, digest)
            if prior is not None:
                return prior
            job = _add_job(ctx, s, body, who, spec, idempotency_key, digest)
    except IntegrityError:
        # PostgreSQL: a request with the same Idempotency-Key committed between our look-up and our
        # insert (the unique constraint caught it). Answer its job like any replay.
        with ctx.db.session() as s:
            prior = _replay(s, who, idempotency_key, digest)
        if prior is None:
            raise
        return prior
    enqueue_or_undo(ctx, job.id)
    return to_out(job)


def _replay(s, who: Principal, idempotency_key: str | None, digest: str) -> JSONResponse | None:
    """The job an earlier request with this Idempotency-Key created (200), a 409 when that request
    had another body, or None. Answered before any other check: the first job is the answer even
    if its dataset has been deleted or the tenant is at its job limit since."""
    if not idempotency_key:
        return None
    prior = s.scalar(select(Job).where(Job.tenant == who.tenant, Job.idempotency_key == idempotency_key))
    if prior is None:
        return None
    if prior.request_hash != digest:
        raise ApiError(409, "conflict", "this Idempotency-Key was used with a different request body")
    return JSONResponse(to_out(prior).model_dump(mode="json"), status_code=200)


def _add_job(ctx: Context, s, body: JobCreate, who: Principal, spec: dict, idempotency_key: str | None,
             digest: str) -> Job:
    """Pre-flight and insert, in `s` (a locked_session): a DELETE of the job's teacher or dataset
    runs wholly before (the job is refused with 404) or wholly after (the DELETE answers 409)."""
    picked = resolve_auto(s, body, who, spec)
    preflight(ctx, body, who, s)
    for table, ids, kind in ((Dataset, [body.dataset_id, body.validation_dataset_id, body.test_dataset_id], "dataset"),
                             (Teacher, [body.teacher_id], "teacher")):
        ids = [i for i in ids if i]
        missing = set(ids) - ctx.db.lock_rows(s, table, ids, exclusive=False)
        if missing:  # deleted between pre-flight's read and the lock (PostgreSQL)
            raise not_found(kind, sorted(missing)[0], "teacher_id" if kind == "teacher" else "dataset_id")
    check_active_jobs(ctx, s, who)
    queued = {"status": "queued"}
    if spec["training"]["epochs"] == "auto":
        queued["epochs_auto"] = spec["training"]["epochs"] = resolve_epochs(s, body)
    job = Job(id=new_id("job"), tenant=who.tenant, status="queued", teacher_id=body.teacher_id,
              dataset_id=body.dataset_id, validation_dataset_id=body.validation_dataset_id,
              test_dataset_id=body.test_dataset_id, spec=spec,
              metrics={}, idempotency_key=idempotency_key, request_hash=digest, dispatched_at=now())
    s.add(job)
    said = [*picked, *([f"epochs \"auto\": {queued['epochs_auto']} (about {AUTO_STEPS} optimizer steps)"]
                       if "epochs_auto" in queued else [])]
    if picked:
        queued["picked"] = {"student": body.student.reason, "method": body.method.reason}
    s.add(JobEvent(job_id=job.id, message="; ".join(["queued", *said]), type="stage", data=queued))
    s.flush()  # the unique Idempotency-Key is checked here, inside the caller's try
    return job


@router.get("", response_model=ListOut)
def list_jobs(status: str | None = Query(None), limit: int = Query(20, ge=1, le=100), after: str | None = None,
              ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    if status is not None and status not in STATUSES:
        raise ApiError(422, "invalid_request", f"status must be one of {list(STATUSES)}", "status")
    with ctx.db.session() as s:
        rows, more = paginate(s, Job, who, limit, after, *([Job.status == status] if status else []))
        return ListOut(data=[to_out(r) for r in rows], has_more=more)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        return to_out(get_owned(s, Job, job_id, who, "job"))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        job = get_owned(s, Job, job_id, who, "job")
        if job.status in TERMINAL:
            raise ApiError(409, "conflict", f"the job has already {job.status}")
        if job.status == "queued":
            job.status, job.finished_at = "cancelled", now()
            s.add(JobEvent(job_id=job.id, message="cancelled while queued", type="stage", data={"status": "cancelled"}))
        elif not job.cancel_requested:
            s.add(JobEvent(job_id=job.id, message="cancel requested; stopping at the next batch", type="message"))
        job.cancel_requested = True
        return to_out(job)


@router.get("/{job_id}/events")
async def job_events(request: Request, job_id: str, after: int = Query(0, ge=0, le=MAX_EVENT_ID),
                     limit: int = Query(100, ge=1, le=1000),
                     ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    def owned() -> Job:
        with ctx.db.session() as s:
            return get_owned(s, Job, job_id, who, "job")

    return await respond(request, EventSource(ctx, JobEvent, JobEvent.job_id, job_id, owned), who, after, limit)
