"""/v1/searches: the best student for a target. POST checks the whole space (every student with
every method, through the jobs' own pre-flight) and queues the search; the workers run it
(kdserve.worker.search: Optuna asks for trials, each trial is an ordinary job, finished trials are
told back). GET one or a page, GET …/trials, POST …/cancel, GET …/events (JSON or SSE)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import object_session

from kdserve.service import auto
from kdserve.service.api.deps import Context, add_read_routes, body_openapi, get_ctx, get_owned, json_body, principal
from kdserve.service.api.event_stream import MAX_EVENT_ID, EventSource, respond
from kdserve.service.api.job_checks import (check_metadata, normalize, preflight, resolve_epochs,
                                            student_input_facts)
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.queue import enqueue_search
from kdserve.service.schemas import (ListOut, SearchCreate, SearchOut, SearchResult, StudentChoice, TrialCounts,
                                     TrialOut)
from kdserve.service.search_results import candidates_of
from kdserve.service.search_space import (CLASSIFIER_METHODS, EMBEDDING_METHODS, LR_RANGE, representative, trial_job,
                                          trial_status)
from kdserve.service.spec import methods as spec_methods
from kdserve.service.store.db import TERMINAL, Dataset, Job, JobEvent, Model, Search, SearchEvent, Teacher, new_id, now

router = APIRouter(prefix="/v1/searches", tags=["searches"])
log = logging.getLogger("kdserve.api")

SPEC_MAX_BYTES = 64 * 1024
LADDER = (1, 4, 16, 64)  # the default students: the largest within the budget, and within 1/4, 1/16, 1/64 of it


def to_out(search: Search) -> SearchOut:
    spec = search.spec
    counts = TrialCounts(started=search.trials_started)
    s = object_session(search)
    if s is not None:
        for job in s.scalars(select(Job).where(Job.search_id == search.id)):
            status = trial_status(job.status, job.error)
            setattr(counts, status, getattr(counts, status) + 1)
    return SearchOut(id=search.id, status=search.status, teacher_id=search.teacher_id, dataset_id=search.dataset_id,
                     validation_dataset_id=spec.get("validation_dataset_id"), targets=spec["targets"],
                     space=spec["space"], budget=spec["budget"], trials=counts,
                     result=SearchResult.model_validate(search.result or {}), error=search.error,
                     created_at=search.created_at, started_at=search.started_at, finished_at=search.finished_at,
                     metadata=spec.get("metadata", {}))


def resolve_space(ctx: Context, s, body: SearchCreate, who: Principal, teacher: Teacher, dataset: Dataset) -> None:
    """Fill the space's defaults from the teacher and data, then run every student × method through
    the jobs' pre-flight, so that no trial fails on something POST could have said."""
    space = body.space
    embedding = (teacher.details or {}).get("task") == "embedding"
    if space.methods is None:
        space.methods = list(EMBEDDING_METHODS if embedding else CLASSIFIER_METHODS)
    for name in space.methods:
        if name not in spec_methods.METHODS:
            raise ApiError(422, "invalid_request", f"unknown method {name!r}; choose from "
                           f"{list(spec_methods.METHODS)}", "space.methods")
    if space.students is None:
        space.students = default_students(body, teacher, dataset)
    if space.learning_rate is None:
        space.learning_rate = LR_RANGE.get(space.students[0].architecture, LR_RANGE["default"])
    for name, (lo, hi) in (("learning_rate", space.learning_rate), ("temperature", space.temperature)):
        if lo > hi:
            raise ApiError(422, "invalid_request", f"space.{name} is [low, high]: {lo} > {hi}", f"space.{name}")
    for i, student in enumerate(space.students):
        for method in space.methods:
            job = trial_job("search", body, 0, representative(body, i, method))
            try:
                normalize(job)
                preflight(ctx, job, who, s)
            except ApiError as exc:
                raise ApiError(exc.status, exc.code, f"space: student {i} ({student.architecture}) with method "
                               f"{method!r}: {exc.message}", "space.students" if exc.param and
                               exc.param.startswith("student") else (exc.param or "space"))
            student.params = job.student.params  # completed with the architecture's defaults
    if space.epochs == "auto":
        space.epochs = resolve_epochs(s, trial_job("search", body, 0, representative(body, 0, space.methods[0])))


def default_students(body: SearchCreate, teacher: Teacher, dataset: Dataset) -> list[StudentChoice]:
    """The family a job would pick from, at up to four sizes under the budget."""
    cap = body.space.max_params or body.targets.max_parameters
    budget, why = auto.budget_of(cap, None, teacher.num_parameters)
    shape, width, text = student_input_facts(teacher, dataset)
    picked: list[StudentChoice] = []
    for share in LADDER:
        try:
            p = auto.pick_student(shape, width, max(1, budget // share), why, text)
        except auto.AutoError as exc:
            if not picked:
                raise ApiError(422, "invalid_request", exc.message.replace("student.auto.max_params",
                                                                            "space.max_params"), "space.max_params")
            break
        choice = StudentChoice(architecture=p.architecture, params=p.params)
        if choice not in picked:
            picked.append(choice)
    return picked


@router.post("", status_code=202, response_model=SearchOut, openapi_extra=body_openapi(SearchCreate))
def create_search(body: SearchCreate = Depends(json_body(SearchCreate, SPEC_MAX_BYTES, "a search spec is a few KB")),
                  ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    check_metadata(body.metadata)
    if body.budget.parallel > ctx.settings.tenant_max_active_jobs:
        raise ApiError(422, "invalid_request", f"budget.parallel {body.budget.parallel} is over the tenant's limit of "
                       f"{ctx.settings.tenant_max_active_jobs} active jobs (KDSERVE_TENANT_MAX_ACTIVE_JOBS)",
                       "budget.parallel")
    with ctx.db.locked_session() as s:
        teacher = get_owned(s, Teacher, body.teacher_id, who, "teacher", "teacher_id")
        dataset = get_owned(s, Dataset, body.dataset_id, who, "dataset", "dataset_id")
        resolve_space(ctx, s, body, who, teacher, dataset)
        search = Search(id=new_id("search"), tenant=who.tenant, status="queued", teacher_id=body.teacher_id,
                        dataset_id=body.dataset_id, spec=body.model_dump(mode="json"), result={})
        s.add(search)
        space = body.space
        s.add(SearchEvent(search_id=search.id, type="stage", data={"status": "queued", "space": search.spec["space"]},
                          message=f"queued: {body.budget.trials} trials over {len(space.methods)} methods × "
                          f"{len(space.students)} students, learning rate {space.learning_rate[0]:g}–"
                          f"{space.learning_rate[1]:g}, {space.epochs} epochs each"))
    try:
        enqueue_search(ctx.celery, search.id, ctx.settings.queue)
    except Exception as exc:  # the workers' reaper also starts queued searches: only log
        log.warning("search %s: the broker did not take its first step (%s); a worker's reaper will", search.id, exc)
    with ctx.db.session() as s:
        return to_out(get_owned(s, Search, search.id, who, "search"))


add_read_routes(router, Search, "search", to_out, SearchOut)


@router.get("/{search_id}/trials", response_model=ListOut)
def list_trials(search_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """Every trial so far, by number: what the optimizer chose, how it ended, its files."""
    with ctx.db.session() as s:
        search = get_owned(s, Search, search_id, who, "search")
        spec = SearchCreate.model_validate(search.spec)
        jobs = list(s.scalars(select(Job).where(Job.search_id == search.id).order_by(Job.seq)))
        cards = {m.id: m.card for m in s.scalars(select(Model).where(Model.id.in_([j.model_id for j in jobs
                                                                                    if j.model_id])))}
        out = []
        for job in jobs:
            trial = job.trial or {}
            cands = candidates_of(trial["number"], job.id, job.model_id, cards[job.model_id], spec.targets,
                                  spec.space.precisions, (job.metrics or {}).get("val_score")) \
                if job.model_id in cards else []
            out.append(TrialOut(number=trial["number"], job_id=job.id, status=trial_status(job.status, job.error),
                                params=trial.get("params", {}), value=trial.get("value"),
                                epochs_run=job.epoch if job.status != "queued" else None, model_id=job.model_id,
                                candidates=cands, error=job.error if job.status == "failed" else None))
        return ListOut(data=out, has_more=False)


@router.post("/{search_id}/cancel", response_model=SearchOut)
def cancel_search(search_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """Stop the search: queued trials are cancelled now, running ones at their next batch; the
    search ends `cancelled` when the last one has stopped, with the results of those that finished."""
    with ctx.db.session() as s:
        search = get_owned(s, Search, search_id, who, "search")
        if search.status in TERMINAL:
            raise ApiError(409, "conflict", f"the search has already {search.status}")
        search.cancel_requested = True
        active = list(s.scalars(select(Job).where(Job.search_id == search.id, Job.status.in_(("queued", "running")))))
        for job in active:
            if job.status == "queued":
                job.status, job.finished_at = "cancelled", now()
                s.add(JobEvent(job_id=job.id, message="cancelled while queued (its search was cancelled)",
                               type="stage", data={"status": "cancelled"}))
            elif not job.cancel_requested:
                s.add(JobEvent(job_id=job.id, message="cancel requested (its search was cancelled); stopping at the "
                               "next batch", type="message"))
            job.cancel_requested = True
        if not any(j.status == "running" for j in active):
            search.status, search.finished_at = "cancelled", now()
            s.add(SearchEvent(search_id=search.id, type="stage", data={"status": "cancelled"},
                              message="cancelled; no trial was running"))
        else:
            s.add(SearchEvent(search_id=search.id, message="cancel requested; the running trials stop at their next "
                              "batch"))
        s.flush()
        return to_out(search)


@router.get("/{search_id}/events")
async def search_events(request: Request, search_id: str, after: int = Query(0, ge=0, le=MAX_EVENT_ID),
                        limit: int = Query(100, ge=1, le=1000),
                        ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    def owned() -> Search:
        with ctx.db.session() as s:
            return get_owned(s, Search, search_id, who, "search")

    return await respond(request, EventSource(ctx, SearchEvent, SearchEvent.search_id, search_id, owned), who,
                         after, limit)
