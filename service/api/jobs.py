"""/v1/jobs: create (pre-flight checks, Idempotency-Key), get, list, cancel, events (JSON or SSE)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from kdserve.service import auto, budgets
from kdserve.service.api.deps import Context, body_openapi, get_ctx, get_owned, json_body, key_check, paginate, principal
from kdserve.service.api.job_rows import check_active_jobs, enqueue_or_undo, to_out
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError, not_found
from kdserve.service.limits import HeldStreamingResponse
from kdserve.service.schemas import EventOut, JobCreate, JobOut, ListOut, StudentAuto, StudentSpec
from kdserve.service.settings import Settings
from kdserve.service.spec import architectures as spec_archs
from kdserve.service.spec import methods as spec_methods
from kdserve.service.spec.errors import SpecError
from kdserve.service.spec.jobs import (AUTO_STEPS, DataFacts, TeacherFacts, auto_epochs, check_pairing,
                                       check_student, student_input, validate_params)
from kdserve.service.vocab import TEXT_DATASET_FORMATS
from kdserve.service.store.blobs import epoch_weights_key
from kdserve.service.store.db import TERMINAL, Dataset, Job, JobEvent, Teacher, new_id, now

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("kdserve.api")

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def refused(exc: SpecError) -> ApiError:
    """A job-spec rule's refusal (kdserve.service.spec) as the API's 422."""
    return ApiError(422, "invalid_request", exc.message, exc.param)


def normalize(body: JobCreate) -> None:
    """The part of pre-flight that needs only the spec: known method and architecture, their params
    validated (kdserve.service.spec, the classes the worker validates them with again) and
    completed with defaults. The request's digest (Idempotency-Key) is taken after it and before
    anything is looked up, so a replay is recognised even when the job's teacher or dataset has
    been deleted since. A student or method left out is picked later (resolve_auto), from the
    teacher and the data."""
    body.student.reason = body.method.reason = None  # the service's to set
    if body.student.architecture is None and body.student.params:
        raise ApiError(422, "invalid_request", "student.params needs student.architecture (or leave both out and the "
                       "service picks the student)", "student.params")
    if body.student.architecture is not None and body.student.auto is not None:
        raise ApiError(422, "invalid_request", "give student.architecture or student.auto, not both", "student.auto")
    if body.method.name is None and body.method.params:
        raise ApiError(422, "invalid_request", "method.params needs method.name (or leave both out and the service "
                       "picks the method)", "method.params")
    try:
        if body.method.name is not None:
            body.method.params = validate_params(method_of(body).params, body.method.params, "method.params")
        if body.student.architecture is not None:
            body.student.params = validate_params(arch_of(body).params, body.student.params, "student.params")
        if body.teacher_refinement:
            refinement = spec_methods.REFINEMENTS[body.teacher_refinement.method]
            body.teacher_refinement.params = validate_params(refinement.params, body.teacher_refinement.params,
                                                             "teacher_refinement.params")
    except SpecError as exc:
        raise refused(exc)
    check_metadata(body.metadata)


def _known(catalog: dict, name: str | None, what: str, param: str):
    """The catalog entry of a method or architecture name, or the 422 that lists the known ones."""
    entry = catalog.get(name)
    if entry is None:
        raise ApiError(422, "invalid_request", f"unknown {what} {name!r}; choose one of {list(catalog)}", param)
    return entry


def stored_spec(body: JobCreate) -> dict:
    """The spec as the job stores and shows it: `student.auto`/`reason` and `method.reason` only
    where the service picked them (a student and method named by the request look as sent)."""
    spec = body.model_dump(mode="json")
    for part in ("student", "method"):
        spec[part] = {k: v for k, v in spec[part].items() if v is not None or k not in ("auto", "reason")}
    return spec


def method_of(body: JobCreate) -> spec_methods.MethodSpec:
    return _known(spec_methods.METHODS, body.method.name, "method", "method.name")


def arch_of(body: JobCreate) -> spec_archs.ArchSpec:
    return _known(spec_archs.ARCHITECTURES, body.student.architecture, "architecture", "student.architecture")


def resolve_auto(s, body: JobCreate, who: Principal, spec: dict) -> list[str]:
    """Pick the student and the method a job left out (kdserve.service.auto), into `body` and the
    stored `spec`; what was picked and why, for the queued event."""
    if body.student.architecture is not None and body.method.name is not None:
        return []
    dataset = get_owned(s, Dataset, body.dataset_id, who, "dataset", "dataset_id")
    teacher = get_owned(s, Teacher, body.teacher_id, who, "teacher", "teacher_id") if body.teacher_id else None
    details = (teacher.details or {}) if teacher is not None else {}
    embedding_teacher = details.get("task") == "embedding"
    said = []
    if body.method.name is None:
        body.method.name, body.method.reason = auto.pick_method(teacher is not None, embedding_teacher)
        body.method.params = validate_params(method_of(body).params, {}, "method.params")
        said.append(f"method {body.method.reason}")
    if body.student.architecture is None:
        wish = body.student.auto or StudentAuto()
        budget, why = auto.budget_of(wish.max_params, wish.ratio, teacher.num_parameters if teacher else None)
        text = spec_archs.TextTeacher.from_details(details) if dataset.format in TEXT_DATASET_FORMATS and \
            teacher is not None and teacher.format == "hf" else None
        width = int(details.get("hidden_size") or 0) if embedding_teacher else \
            (teacher.num_classes if teacher is not None else (dataset.num_classes or 2))
        try:
            picked = auto.pick_student(list(dataset.feature_shape or []), width, budget, why, text)
        except auto.AutoError as exc:
            raise ApiError(422, "invalid_request", exc.message, exc.param)
        body.student = StudentSpec(architecture=picked.architecture, params=picked.params,
                                   auto=StudentAuto(max_params=picked.max_params, ratio=wish.ratio),
                                   reason=picked.reason)
        said.append(f"student {picked.reason}")
    resolved = stored_spec(body)
    spec["student"], spec["method"] = resolved["student"], resolved["method"]
    return said


def preflight(ctx: Context, body: JobCreate, who: Principal, s) -> None:
    """Everything a job needs, checked against its teacher and data before it is queued (after
    normalize())."""
    method, arch = method_of(body), arch_of(body)
    dataset = get_owned(s, Dataset, body.dataset_id, who, "dataset", "dataset_id")
    val = get_owned(s, Dataset, body.validation_dataset_id, who, "dataset", "validation_dataset_id") \
        if body.validation_dataset_id else None
    if val is not None and val.feature_shape != dataset.feature_shape:
        raise ApiError(422, "invalid_request", f"validation rows have shape {val.feature_shape}, training rows "
                       f"{dataset.feature_shape}", "validation_dataset_id")
    if method.needs_labels and not dataset.labeled:
        raise ApiError(422, "invalid_request", f"method {method.name!r} needs labels and dataset {dataset.id} has none",
                       "dataset_id")
    if (method.needs_teacher or body.teacher_refinement) and not body.teacher_id:
        raise ApiError(422, "invalid_request", f"method {method.name!r} needs a teacher: set teacher_id", "teacher_id")
    if not body.teacher_id and not dataset.labeled:
        raise ApiError(422, "invalid_request", "without a teacher the dataset must be labelled", "dataset_id")
    if "teacher_features" in method.requires and not body.teacher_features:
        raise ApiError(422, "invalid_request", f"method {method.name!r} needs teacher features: set teacher_features "
                       "to the name of one of the teacher's outputs", "teacher_features")
    if body.baseline and not dataset.labeled:
        raise ApiError(422, "invalid_request", f"baseline: true trains with labels (ce) and dataset {dataset.id} has "
                       "none", "baseline")
    if body.teacher_refinement:
        if not dataset.labeled:
            raise ApiError(422, "invalid_request", "teacher refinement needs a labelled dataset", "dataset_id")
    teacher = get_owned(s, Teacher, body.teacher_id, who, "teacher", "teacher_id") if body.teacher_id else None
    check_spec(body, method, arch, dataset, val, teacher)
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
        if body.baseline and embedding_teacher:
            raise ApiError(422, "invalid_request", "baseline: true compares class accuracy, and an embedding "
                           "teacher's student has no classes", "baseline")
        for ds in filter(None, (dataset, val)):
            if not embedding_teacher and ds.num_classes is not None and ds.num_classes > teacher.num_classes:
                raise ApiError(422, "label_out_of_range", f"dataset {ds.id} has label {ds.num_classes - 1} but the "
                               f"teacher has only {teacher.num_classes} classes", "dataset_id")
    check_budget(ctx.settings, body, dataset, val, teacher)
    if body.from_checkpoint is not None:
        check_from_checkpoint(ctx, s, body, who)


def check_from_checkpoint(ctx: Context, s, body: JobCreate, who: Principal) -> None:
    """Kept weights fit only the student and method that trained them."""
    ref = body.from_checkpoint
    source = get_owned(s, Job, ref.job_id, who, "job", "from_checkpoint.job_id")
    for part, keys in (("student", ("architecture", "params")), ("method", ("name", "params"))):
        given = getattr(body, part).model_dump(mode="json")
        if any(source.spec[part].get(k) != given[k] for k in keys):
            raise ApiError(422, "invalid_request", f"from_checkpoint: job {source.id} trained another {part} "
                           f"({source.spec[part]})", part)
    if not ctx.blobs.exists(epoch_weights_key(source.id, ref.epoch)):
        raise ApiError(404, "not_found", f"job {source.id} kept no weights for epoch {ref.epoch} (GET "
                       f"/v1/jobs/{source.id}/checkpoints lists those it kept)", "from_checkpoint.epoch")


METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
METADATA_VALUE_MAX = 1024
# metadata.name names the published model: it is a path segment of /v2/models/{name} and the
# file name in the download's Content-Disposition header, so it keeps to a URL- and header-safe set
# (and to the models table's column).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_metadata(metadata: dict[str, str]) -> None:
    """Free text kept with the job and shown back: keys are short identifiers, values printable
    text of bounded length (no control or invisible formatting characters), `name` a model name."""
    for key, value in metadata.items():
        if not METADATA_KEY.match(key):
            raise ApiError(422, "invalid_request", f"metadata key {key[:64]!r} must be 1-64 letters, digits, '_', '.' "
                           "or '-'", "metadata")
        if len(value) > METADATA_VALUE_MAX or not value.isprintable():
            raise ApiError(422, "invalid_request", f"metadata.{key} must be at most {METADATA_VALUE_MAX} printable "
                           "characters (no control characters)", f"metadata.{key}")
    name = metadata.get("name")
    if name is not None and not MODEL_NAME.match(name):
        raise ApiError(422, "invalid_request", "metadata.name names the model: 1-128 letters, digits, '_', '.' or "
                       "'-', starting with a letter or digit", "metadata.name")


def check_budget(settings: Settings, body: JobCreate, dataset: Dataset, val: Dataset | None,
                 teacher: Teacher | None) -> None:
    """The job's estimated size (service/budgets.py) against the workers' budget: classes,
    parameters (and the single-file ONNX limit the export must fit in), memory."""
    width = teacher.num_classes if teacher is not None else (dataset.num_classes or 0)
    if width > settings.job_max_classes:
        raise ApiError(422, "invalid_request", f"the student would have {width} outputs; the limit is "
                       f"{settings.job_max_classes} (KDSERVE_JOB_MAX_CLASSES)", "teacher_id" if teacher else "dataset_id")
    text = dataset.format in TEXT_DATASET_FORMATS
    shapes = budgets.Shapes(
        input_shape=dataset.feature_shape, width=width, rows=dataset.num_rows + (val.num_rows if val else 0),
        batch_size=body.training.batch_size, max_length=body.text.max_length if text else 0,
        teacher_parameters=teacher.num_parameters if teacher else 0, teacher_details=(teacher.details or {}) if teacher else {})
    est = budgets.estimate(body.student.architecture, body.student.params, shapes)
    if est is None:
        return
    onnx_file = f"the weights one ONNX file can hold: {budgets.ONNX_SINGLE_FILE_BYTES / 1024**3:.1f} GiB of float32"
    for limit, why in ((settings.job_max_parameters, "KDSERVE_JOB_MAX_PARAMETERS"),
                       (budgets.ONNX_SINGLE_FILE_BYTES // budgets.FLOAT, onnx_file)):
        if est.parameters > limit:
            raise ApiError(422, "invalid_request", f"the student would have about {est.parameters:,} parameters; the "
                           f"limit is {limit:,} ({why})", "student.params")
    if est.memory_bytes > settings.job_max_memory_bytes:
        part = max(est.memory, key=est.memory.get)
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 1024**3:.2f}" for k, v in est.memory.items())
        raise ApiError(422, "invalid_request", f"the job would need about {est.memory_bytes / 1024**3:.1f} GiB of worker "
                       f"memory ({parts} GiB); the limit is {settings.job_max_memory_bytes / 1024**3:.1f} GiB "
                       f"(KDSERVE_JOB_MAX_MEMORY_BYTES): lower {budgets.PARAM_OF_PART[part]}",
                       budgets.PARAM_OF_PART[part])


def check_spec(body: JobCreate, method: spec_methods.MethodSpec, arch: spec_archs.ArchSpec, dataset: Dataset,
               val: Dataset | None, teacher: Teacher | None) -> None:
    """The spec's rules (kdserve.service.spec.jobs) on what was stored at upload: text or numeric
    agreement, the tokenizer and head of a text teacher, and the student's own rules for this
    input, the same the worker's builders run again."""
    data = DataFacts(dataset.id, dataset.format, dataset.feature_shape)
    val_data = DataFacts(val.id, val.format, val.feature_shape) if val is not None else None
    facts = TeacherFacts(teacher.id, teacher.format, teacher.details) if teacher is not None else None
    try:
        check_pairing(method, arch, data, val_data, facts, body.text.max_length)
        check_student(arch, body.student.params, student_input(data, facts, body.text.max_length))
    except SpecError as exc:
        raise refused(exc)


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
    for table, ids, kind in ((Dataset, [body.dataset_id, body.validation_dataset_id], "dataset"),
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
              dataset_id=body.dataset_id, validation_dataset_id=body.validation_dataset_id, spec=spec,
              metrics={}, idempotency_key=idempotency_key, request_hash=digest, dispatched_at=now())
    s.add(job)
    said = [*picked, *([f"epochs \"auto\": {queued['epochs_auto']} (about {AUTO_STEPS} optimizer steps)"]
                       if "epochs_auto" in queued else [])]
    if picked:
        queued["picked"] = {"student": body.student.reason, "method": body.method.reason}
    s.add(JobEvent(job_id=job.id, message="; ".join(["queued", *said]), type="stage", data=queued))
    s.flush()  # the unique Idempotency-Key is checked here, inside the caller's try
    return job


def resolve_epochs(s, body: JobCreate) -> int:
    """`epochs: "auto"` for this job's training rows (the dataset less its validation split)."""
    rows = s.scalar(select(Dataset.num_rows).where(Dataset.id == body.dataset_id))
    if not body.validation_dataset_id:
        rows -= min(max(1, round(rows * body.validation_split)), rows - 1)
    return auto_epochs(rows, body.training.batch_size)


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
