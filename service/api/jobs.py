"""/v1/jobs: create (pre-flight checks, Idempotency-Key), get, list, cancel, events (JSON or SSE)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time

import jsonschema
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from service.api.deps import Context, get_ctx, get_owned, key_check, paginate, principal
from service.auth import Principal
from service.ingest import TEXT_FORMATS
from service.errors import ApiError
from service.limits import HeldStreamingResponse
from service.queue import enqueue_job
from service.schemas import EventOut, JobCreate, JobOut, ListOut
from service.store.db import TERMINAL, Dataset, Job, JobEvent, Teacher, new_id, now

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("kdserve.api")

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def to_out(job: Job) -> JobOut:
    spec = job.spec
    return JobOut(
        id=job.id, status=job.status, stage=job.stage, progress=job.progress, epoch=job.epoch,
        epochs=spec["training"]["epochs"], teacher_id=job.teacher_id, dataset_id=job.dataset_id,
        validation_dataset_id=job.validation_dataset_id, student=spec["student"], method=spec["method"],
        training=spec["training"], export=spec["export"], metrics=job.metrics or {}, model_id=job.model_id,
        error=job.error, attempts=job.attempts, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, estimated_finish=job.estimated_finish, metadata=spec.get("metadata", {}),
    )


def _non_finite(value, path: str) -> str | None:
    """The path of the first NaN or infinite number in a JSON value (JSON itself has none, but
    Python's parser accepts NaN and Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((p for k, v in items if (p := _non_finite(v, f"{path}.{k}"))), None)


def _check_params(schema: dict, params: dict, param_prefix: str) -> dict:
    """Validate against the registry's JSON schema; return the params with defaults filled in."""
    bad = _non_finite(params, param_prefix)
    if bad:
        raise ApiError(422, "invalid_request", f"{bad} must be a finite number", bad)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            extra = sorted(set(params) - set(schema.get("properties", {})))
            raise ApiError(422, "invalid_request", f"unknown parameter(s) {extra}; known: {sorted(schema.get('properties', {}))}",
                           f"{param_prefix}.{extra[0]}" if extra else param_prefix)
        where = ".".join(str(p) for p in err.path)
        raise ApiError(422, "invalid_request", f"{where or 'params'}: {err.message}",
                       f"{param_prefix}.{where}" if where else param_prefix)
    defaults = {k: v["default"] for k, v in schema.get("properties", {}).items() if "default" in v}
    return {**defaults, **params}


def preflight(ctx: Context, body: JobCreate, who: Principal, s) -> None:
    method = ctx.method(body.method.name)
    if method is None:
        names = [m["name"] for m in ctx.catalog["methods"]]
        raise ApiError(422, "invalid_request", f"unknown method {body.method.name!r}; choose one of {names}", "method.name")
    arch = ctx.architecture(body.student.architecture)
    if arch is None:
        names = [a["name"] for a in ctx.catalog["architectures"]]
        raise ApiError(422, "invalid_request", f"unknown architecture {body.student.architecture!r}; choose one of {names}",
                       "student.architecture")
    body.method.params = _check_params(method["params"], body.method.params, "method.params")
    body.student.params = _check_params(arch["params"], body.student.params, "student.params")

    dataset = get_owned(s, Dataset, body.dataset_id, who, "dataset", "dataset_id")
    val = get_owned(s, Dataset, body.validation_dataset_id, who, "dataset", "validation_dataset_id") \
        if body.validation_dataset_id else None
    if val is not None and val.feature_shape != dataset.feature_shape:
        raise ApiError(422, "invalid_request", f"validation rows have shape {val.feature_shape}, training rows "
                       f"{dataset.feature_shape}", "validation_dataset_id")
    if method["needs_labels"] and not dataset.labeled:
        raise ApiError(422, "invalid_request", f"method {method['name']!r} needs labels and dataset {dataset.id} has none",
                       "dataset_id")
    if (method["needs_teacher"] or body.teacher_refinement) and not body.teacher_id:
        raise ApiError(422, "invalid_request", f"method {method['name']!r} needs a teacher: set teacher_id", "teacher_id")
    if not body.teacher_id and not dataset.labeled:
        raise ApiError(422, "invalid_request", "without a teacher the dataset must be labelled", "dataset_id")
    if "teacher_features" in method["requires"] and not body.teacher_features:
        raise ApiError(422, "invalid_request", f"method {method['name']!r} needs teacher features: set teacher_features "
                       "to the name of one of the teacher's outputs", "teacher_features")
    if body.teacher_refinement:
        spec = next(r for r in ctx.catalog["refinements"] if r["name"] == body.teacher_refinement.method)
        body.teacher_refinement.params = _check_params(spec["params"], body.teacher_refinement.params,
                                                       "teacher_refinement.params")
        if not dataset.labeled:
            raise ApiError(422, "invalid_request", "teacher refinement needs a labelled dataset", "dataset_id")
    teacher = get_owned(s, Teacher, body.teacher_id, who, "teacher", "teacher_id") if body.teacher_id else None
    text_preflight(body, method, arch, dataset, val, teacher)
    if teacher is not None:
        names = [o["name"] for o in teacher.outputs or []]
        if body.teacher_features and body.teacher_features not in names:
            raise ApiError(422, "invalid_request", f"the teacher has no output {body.teacher_features!r}; its outputs "
                           f"are {names}", "teacher_features")
        if body.teacher_refinement and teacher.format != "torchscript":
            raise ApiError(422, "invalid_request", "only a TorchScript teacher can be refined (an ONNX teacher is "
                           "a black box)", "teacher_refinement")
        if teacher.format != "hf" and teacher.input_shape != dataset.feature_shape:
            raise ApiError(422, "invalid_request", f"dataset rows have shape {dataset.feature_shape} but the teacher "
                           f"expects input of shape {teacher.input_shape}", "dataset_id")
        embedding_teacher = (teacher.details or {}).get("task") == "embedding"
        for ds in filter(None, (dataset, val)):
            if not embedding_teacher and ds.num_classes is not None and ds.num_classes > teacher.num_classes:
                raise ApiError(422, "label_out_of_range", f"dataset {ds.id} has label {ds.num_classes - 1} but the "
                               f"teacher has only {teacher.num_classes} classes", "dataset_id")


TEXT_ARCHITECTURES_HINT = "transformer (from scratch) or layer_dropped (a copy of a BERT teacher)"


def text_preflight(body: JobCreate, method: dict, arch: dict, dataset: Dataset, val: Dataset | None,
                   teacher: Teacher | None) -> None:
    """Text jobs: the dataset, teacher, student and method must agree on text, on the tokenizer and
    on the head. A text dataset is tokenised with the teacher's tokenizer at job start, and the
    student shares that vocabulary: a mismatch here would otherwise surface as an index error
    deep in training (the most common failure of distillation between transformers)."""
    text_data = dataset.format in TEXT_FORMATS
    text_arch = arch.get("inputs") == "text"
    text_teacher = teacher is not None and teacher.format == "hf"
    if val is not None and (val.format in TEXT_FORMATS) != text_data:
        raise ApiError(422, "invalid_request", f"validation dataset {val.id} and dataset {dataset.id} must both be text "
                       "or both numeric", "validation_dataset_id")
    if text_data:
        if teacher is None:
            raise ApiError(422, "invalid_request", f"dataset {dataset.id} is text: it is tokenised with the teacher's "
                           "tokenizer, so set teacher_id to a text teacher (format hf)", "teacher_id")
        if not text_teacher:
            raise ApiError(422, "invalid_request", f"dataset {dataset.id} is text but teacher {teacher.id} ({teacher.format}) "
                           "has no tokenizer; use a Hugging Face teacher (format hf) whose tokenizer the student will "
                           "share", "teacher_id")
        if not text_arch:
            raise ApiError(422, "invalid_request", f"student architecture {arch['name']!r} takes numeric features; for "
                           f"text use {TEXT_ARCHITECTURES_HINT}", "student.architecture")
    else:
        if text_teacher:
            raise ApiError(422, "invalid_request", f"teacher {teacher.id} is a text model (format hf); its dataset must "
                           f"be text (jsonl), and dataset {dataset.id} is {dataset.format}", "dataset_id")
        if text_arch:
            raise ApiError(422, "invalid_request", f"{arch['name']!r} is a text student and dataset {dataset.id} is "
                           f"numeric ({dataset.format}); use mlp, cnn or patch_transformer", "student.architecture")
        return
    d = teacher.details or {}
    task, vocab = d.get("task"), int(d.get("vocab_size") or 0)
    if body.text.max_length > int(d.get("max_positions") or 512):
        raise ApiError(422, "invalid_request", f"text.max_length {body.text.max_length} is more than the teacher's "
                       f"{d.get('max_positions')} positions", "text.max_length")
    if method.get("compares", "logits") == "logits" and task == "embedding":
        raise ApiError(422, "invalid_request", f"method {method['name']!r} compares class logits through a softmax, "
                       f"and teacher {teacher.id} is a sentence-embedding model (no classes); use embedding_cosine, "
                       "embedding_mse or embedding_relational", "method.name")
    if method["needs_labels"] and task == "embedding":
        raise ApiError(422, "invalid_request", f"method {method['name']!r} trains on class labels; an embedding "
                       "student has no class head", "method.name")
    p = body.student.params
    if arch["name"] == "transformer":
        if p.get("vocab_size") is not None and p["vocab_size"] < vocab:
            raise ApiError(422, "invalid_request", f"vocabulary mismatch: student.params.vocab_size is {p['vocab_size']} "
                           f"but teacher {teacher.id}'s tokenizer has {vocab} tokens; ids ≥ {p['vocab_size']} would "
                           "index outside the student's embedding table. Leave vocab_size out to use the tokenizer's",
                           "student.params.vocab_size")
        if p.get("hidden", 1) % p.get("heads", 1):
            raise ApiError(422, "invalid_request", f"student.params.hidden {p['hidden']} must be a multiple of heads "
                           f"{p['heads']}", "student.params.hidden")
        if p.get("max_positions") is not None and p["max_positions"] < body.text.max_length:
            raise ApiError(422, "invalid_request", f"student.params.max_positions {p['max_positions']} is less than "
                           f"text.max_length {body.text.max_length}", "student.params.max_positions")
    elif arch["name"] == "layer_dropped":
        if d.get("model_type") != "bert":
            raise ApiError(422, "invalid_request", f"layer_dropped copies a BERT-family teacher (model_type bert); "
                           f"teacher {teacher.id} is {d.get('model_type')!r}: use the transformer student",
                           "student.architecture")
        layers, n = p.get("layers"), int(d.get("num_layers") or 0)
        if layers is not None and p.get("every") is not None:
            raise ApiError(422, "invalid_request", "give student.params.layers or every, not both", "student.params.layers")
        if layers is not None and (sorted(set(layers)) != layers or layers[0] < 0 or layers[-1] >= n):
            raise ApiError(422, "invalid_request", f"student.params.layers {layers} must be distinct, increasing and "
                           f"within the teacher's layers 0..{n - 1}", "student.params.layers")
        if layers is None and (p.get("every") or 2) > n:
            raise ApiError(422, "invalid_request", f"every={p.get('every')} keeps no layer of a {n}-layer teacher",
                           "student.params.every")
        if p.get("hidden_size") is not None and p["hidden_size"] > int(d.get("hidden_size") or 0):
            raise ApiError(422, "invalid_request", f"student.params.hidden_size {p['hidden_size']} is wider than the "
                           f"teacher's {d.get('hidden_size')}", "student.params.hidden_size")
        width = p.get("hidden_size") or int(d.get("hidden_size") or 0)
        if p.get("embedding_rank") is not None and width and p["embedding_rank"] >= width:
            raise ApiError(422, "invalid_request", f"student.params.embedding_rank {p['embedding_rank']} must be below "
                           f"the student's hidden size {width}: a factorisation of full rank saves nothing",
                           "student.params.embedding_rank")
        full_rows, vocab = p.get("embedding_full_rows"), int(d.get("vocab_size") or 0)
        if full_rows is not None and p.get("embedding_rank") is None:
            raise ApiError(422, "invalid_request", "student.params.embedding_full_rows adds full rows to a factorised "
                           "table: set student.params.embedding_rank too", "student.params.embedding_full_rows")
        if full_rows is not None and vocab and full_rows >= vocab:
            raise ApiError(422, "invalid_request", f"student.params.embedding_full_rows {full_rows} must be below the "
                           f"tokenizer's {vocab} tokens: the full table keeps every row", "student.params.embedding_full_rows")


@router.post("", status_code=202, response_model=JobOut)
def create_job(body: JobCreate, idempotency_key: str | None = Header(None, max_length=255),
               ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        preflight(ctx, body, who, s)
        active = s.scalar(select(func.count()).select_from(Job).where(
            Job.tenant == who.tenant, Job.status.in_(("queued", "running"))))
        if active >= ctx.settings.tenant_max_active_jobs and not (
                idempotency_key and s.scalar(select(Job.id).where(Job.tenant == who.tenant,
                                                                  Job.idempotency_key == idempotency_key))):
            raise ApiError(429, "rate_limited", f"tenant {who.tenant!r} has {active} queued or running jobs, its limit "
                           "(KDSERVE_TENANT_MAX_ACTIVE_JOBS); wait for one to end or cancel one")
        spec = body.model_dump(mode="json")
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        if idempotency_key:
            prior = s.scalar(select(Job).where(Job.tenant == who.tenant, Job.idempotency_key == idempotency_key))
            if prior is not None:
                if prior.request_hash != digest:
                    raise ApiError(409, "conflict", "this Idempotency-Key was used with a different request body")
                return JSONResponse(to_out(prior).model_dump(mode="json"), status_code=200)
        job = Job(id=new_id("job"), tenant=who.tenant, status="queued", teacher_id=body.teacher_id,
                  dataset_id=body.dataset_id, validation_dataset_id=body.validation_dataset_id, spec=spec,
                  metrics={}, idempotency_key=idempotency_key, request_hash=digest, dispatched_at=now())
        s.add(job)
        s.add(JobEvent(job_id=job.id, message="queued", type="stage", data={"status": "queued"}))
    try:
        enqueue_job(ctx.celery, job.id, ctx.settings.queue)
    except Exception as exc:
        log.warning("broker unavailable, job %s not accepted: %s", job.id, exc)
        with ctx.db.session() as s:
            s.query(JobEvent).filter_by(job_id=job.id).delete()
            s.query(Job).filter_by(id=job.id).delete()
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; nothing was created, retry shortly")
    return to_out(job)


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


def _events(ctx: Context, job_id: str, after: int, limit: int) -> tuple[list[EventOut], bool]:
    with ctx.db.session() as s:
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                              .order_by(JobEvent.id).limit(limit + 1)))
        out = [EventOut(id=e.id, created_at=e.created_at, level=e.level, type=e.type, message=e.message, data=e.data)
               for e in rows[:limit]]
        return out, len(rows) > limit


# Event ids are database row ids: a cursor past a signed 64-bit integer is no id, and would
# overflow the database's integer instead of matching nothing.
MAX_EVENT_ID = 2**63 - 1
_LAST_EVENT_ID = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes '²' and '١'


def resume_cursor(last_event_id: str | None, after: int) -> int:
    """Where an SSE stream starts: the Last-Event-ID a reconnecting client sends, else `after`.
    This route only ever sends numeric ids, so anything else is refused, never guessed at."""
    if last_event_id is None or last_event_id == "":
        return after
    value = last_event_id.strip()
    if not _LAST_EVENT_ID.fullmatch(value) or int(value) > MAX_EVENT_ID:
        raise ApiError(422, "invalid_request", "Last-Event-ID must be the id of an event this stream sent (a "
                       "non-negative integer)", "Last-Event-ID")
    return int(value)


@router.get("/{job_id}/events")
async def job_events(request: Request, job_id: str, after: int = Query(0, ge=0, le=MAX_EVENT_ID),
                     limit: int = Query(100, ge=1, le=1000),
                     ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    def owned() -> Job:
        with ctx.db.session() as s:
            return get_owned(s, Job, job_id, who, "job")

    await run_in_threadpool(owned)
    if "text/event-stream" not in request.headers.get("accept", ""):
        events, more = await run_in_threadpool(_events, ctx, job_id, after, limit)
        return ListOut(data=events, has_more=more)
    cursor = resume_cursor(request.headers.get("last-event-id"), after)
    release = ctx.event_streams.acquire(who.tenant, ctx.settings.tenant_max_event_streams)
    return HeldStreamingResponse(_stream(request, ctx, job_id, cursor, owned), release=release,
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(request: Request, ctx: Context, job_id: str, cursor: int, owned):
    """The events after `cursor` as they are written, until the job ends, the client goes away or
    the caller's key is revoked; a comment line every 15 s keeps proxies from closing it."""
    still_valid = key_check(request, ctx)
    last_sent = time.monotonic()
    while True:
        events, more = await run_in_threadpool(_events, ctx, job_id, cursor, 500)
        for e in events:
            cursor = e.id
            yield f"id: {e.id}\nevent: {e.type}\ndata: {e.model_dump_json()}\n\n"
        if not more:
            job = await run_in_threadpool(owned)
            if job.status in TERMINAL:
                tail, _ = await run_in_threadpool(_events, ctx, job_id, cursor, 500)
                for e in tail:
                    yield f"id: {e.id}\nevent: {e.type}\ndata: {e.model_dump_json()}\n\n"
                return
            if await request.is_disconnected() or not await run_in_threadpool(still_valid):
                return
            if time.monotonic() - last_sent > 15:
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(0.5)
