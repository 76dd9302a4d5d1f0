"""Searches on the workers: Optuna chooses the trials, the job pipeline runs them.

A search has no process of its own. Its steps are short and run wherever one is due: when it is
created (a Celery message), when one of its trials ends (in that trial's worker), and in every
worker's reaper round (which also picks up a search whose step was lost with a killed worker).
A step (advance) tells Optuna how the trials that ended did, recomputes the leaderboard, the Pareto
front and the recommendation (service/search_results.py), and asks Optuna for new trials while
fewer than `budget.parallel` run and the budget lasts; each new trial is an ordinary job, queued
like any other. One worker at a time steps a search: a lease on the search row
(`advancing_until`), and a flag (`advance_again`) by which a step that found it held makes the
holder go round once more, so no ended trial waits for the next reaper round.

Optuna: TPE (seeded by the search; its constraints are the cost targets, so trials that miss them
guide the sampler away) and a successive-halving pruner on each trial's validation score per epoch
(the trial job reports it and stops, `pruned`, when told to), once the first few trials have
completed (AfterStartup). Its storage is the service's own
database: a schema `optuna` beside kdserve's tables on PostgreSQL, and a file beside kdserve's on
SQLite (Optuna's tables and migrations would otherwise meet kdserve's own `alembic_version`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.pruners import BasePruner, SuccessiveHalvingPruner
from optuna.samplers import TPESampler
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import create_engine, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from kdserve.service.schemas import SearchCreate
from kdserve.service.search_results import candidates_of, summarize
from kdserve.service.search_space import PRUNED, has_temperature, trial_job, trial_status
from kdserve.service.settings import Settings
from kdserve.service.store.db import TERMINAL, Database, Job, JobEvent, Model, Search, SearchEvent, new_id, now
from kdserve.worker import trainer

log = logging.getLogger("kdserve.search")
optuna.logging.set_verbosity(optuna.logging.WARNING)

LEASE_S = 60.0  # a step takes well under a second; a holder silent this long was killed
COST_TARGETS = ("latency_ms", "max_size_bytes", "max_parameters")

_storages: dict[str, RDBStorage] = {}
_storage_lock = threading.Lock()


# -- Optuna ---------------------------------------------------------------------------------

def storage(settings: Settings) -> RDBStorage:
    """Optuna's RDB storage in the service's database (one per process)."""
    url = settings.resolved_database_url
    with _storage_lock:
        if url not in _storages:
            if url.startswith("sqlite"):
                path = Path(url.split("///", 1)[1])
                target, kwargs = f"sqlite:///{path.with_name(path.stem + '-optuna.db')}", {
                    "connect_args": {"timeout": 30}}
            else:
                _create_schema(url)
                target, kwargs = url, {"connect_args": {"options": "-c search_path=optuna"}, "pool_pre_ping": True}
            for attempt in range(3):  # several workers making Optuna's tables at once: one wins, the others retry
                try:
                    _storages[url] = RDBStorage(target, engine_kwargs=kwargs)
                    break
                except SQLAlchemyError:
                    if attempt == 2:
                        raise
                    time.sleep(0.5)
        return _storages[url]


def _create_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            c.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS optuna")
    except SQLAlchemyError:  # made by another worker at the same moment
        pass
    finally:
        engine.dispose()


def _cost_miss(trial: optuna.trial.FrozenTrial) -> list[float]:
    """TPE's constraint: how far the trial's best file misses the cost targets (≤ 0: met)."""
    return [trial.user_attrs.get("cost_miss", 0.0)]


class AfterStartup(BasePruner):
    """Successive halving once the first `startup` trials have completed: they set the bar at each
    rung and none of them is stopped (optuna's pruner alone stops the second trial to reach a rung
    unless it beats the first, which in a small search prunes nearly everything)."""

    def __init__(self, startup: int, wrapped: BasePruner):
        self.startup, self.wrapped = startup, wrapped

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return done >= self.startup and self.wrapped.prune(study, trial)


def open_study(settings: Settings, search_id: str, spec: SearchCreate, epochs: int, asked: int = 0) -> optuna.Study:
    """The search's study; the sampler and pruner are made again each step (their state is the
    stored trials). The sampler's seed moves on with the trials `asked` so far: the same seed each
    step would draw the same random trial again."""
    sampler = TPESampler(seed=spec.seed * 100_003 + asked, n_startup_trials=max(3, min(10, spec.budget.trials // 4)),
                         constraints_func=_cost_miss)
    startup = max(2, min(5, spec.budget.trials // 8))
    pruner = AfterStartup(startup, SuccessiveHalvingPruner(min_resource=max(1, epochs // 4), reduction_factor=3))
    return optuna.create_study(storage=storage(settings), study_name=search_id, direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _choose(trial: optuna.Trial, spec: SearchCreate) -> dict:
    space = spec.space
    method = trial.suggest_categorical("method", space.methods)
    student = trial.suggest_categorical("student", list(range(len(space.students))))
    lo, hi = space.learning_rate
    lr = trial.suggest_float("learning_rate", lo, hi, log=True)
    temperature = trial.suggest_float("temperature", *space.temperature) if has_temperature(method) else None
    return {"method": method, "student": student, "learning_rate": lr, "temperature": temperature}


# -- stepping a search ----------------------------------------------------------------------

def advance(db: Database, settings: Settings, search_id: str, send: Callable[[str], None]) -> None:
    """Take the search's next step(s), unless another worker is taking them (then it goes round
    again for us). `send` queues a job id."""
    if not _take(db, search_id):
        return
    try:
        while True:
            for job_id in _step(db, settings, search_id):
                try:
                    send(job_id)
                except Exception as exc:  # the reaper sends it later (its dispatched_at ages)
                    log.warning("search %s: trial job %s not sent (%s); the reaper will", search_id, job_id, exc)
            if _let_go(db, search_id):
                return
    except BaseException:
        with db.session() as s:
            s.execute(update(Search).where(Search.id == search_id).values(advancing_until=None))
        raise


def _take(db: Database, search_id: str) -> bool:
    t = time.time()
    with db.session() as s:
        won = s.execute(update(Search).where(
            Search.id == search_id, Search.status.in_(("queued", "running")),
            or_(Search.advancing_until.is_(None), Search.advancing_until < t),
        ).values(advancing_until=t + LEASE_S, advance_again=False)).rowcount == 1
        if not won:
            s.execute(update(Search).where(Search.id == search_id).values(advance_again=True))
    return won


def _let_go(db: Database, search_id: str) -> bool:
    """Release the lease; False (and the flag cleared) when someone asked for another round meanwhile."""
    with db.session() as s:
        if s.execute(update(Search).where(Search.id == search_id, Search.advance_again.is_(False))
                     .values(advancing_until=None)).rowcount == 1:
            return True
        s.execute(update(Search).where(Search.id == search_id).values(advance_again=False,
                                                                       advancing_until=time.time() + LEASE_S))
        return False


def _step(db: Database, settings: Settings, search_id: str) -> list[str]:
    """One step; returns the ids of the trial jobs it queued (to send once committed)."""
    with db.session() as s:
        search = s.scalar(select(Search).where(Search.id == search_id))
        if search is None or search.status in TERMINAL:
            return []
        spec = SearchCreate.model_validate(search.spec)
        study = open_study(settings, search.id, spec, int(spec.space.epochs), search.trials_started)
        jobs = list(s.scalars(select(Job).where(Job.search_id == search.id).order_by(Job.seq)))
        cards = {m.id: m.card for m in s.scalars(select(Model).where(
            Model.id.in_([j.model_id for j in jobs if j.model_id])))}
        for job in jobs:
            if job.status in TERMINAL and (job.trial or {}).get("state") in ("queued", "running"):
                _tell(s, study, search, spec, job, cards.get(job.model_id))
        search.result = summarize([c for j in jobs if j.model_id in cards for c in _candidates(j, cards, spec)],
                                  spec.targets).model_dump(mode="json")
        active = [j for j in jobs if j.status not in TERMINAL]
        for job in active:  # what the search shows as running
            if job.status == "running" and job.trial.get("state") == "queued":
                job.trial = {**job.trial, "state": "running"}
        if search.cancel_requested:
            if not active:
                _finish(s, search, jobs, "cancelled")
            return []
        t = now()
        if search.status == "queued":
            search.status, search.started_at = "running", t
            s.add(SearchEvent(search_id=search.id, type="stage", data={"status": "running"}, message="running"))
        left = None if spec.budget.max_duration_s is None else search.started_at + spec.budget.max_duration_s - t
        queued = []
        while (left is None or left > 0) and search.trials_started < spec.budget.trials \
                and len(active) + len(queued) < spec.budget.parallel:
            queued.append(_launch(s, study, search, spec, left))
        if not active and not queued:
            _finish(s, search, jobs, "succeeded" if any(j.status == "succeeded" for j in jobs) else "failed")
        return [j.id for j in queued]


def _candidates(job: Job, cards: dict, spec: SearchCreate):
    return candidates_of(job.trial["number"], job.id, job.model_id, cards[job.model_id], spec.targets,
                         spec.space.precisions, (job.metrics or {}).get("val_score"), (job.metrics or {}).get("val_kl"))


def _launch(s, study: optuna.Study, search: Search, spec: SearchCreate, left: int | None) -> Job:
    trial = study.ask()
    choice = _choose(trial, spec)
    number = search.trials_started
    body = trial_job(search.id, spec, number, choice, max_duration_s=left)
    job_spec = body.model_dump(mode="json")
    for part in ("student", "method"):  # as POST /v1/jobs stores a named student and method
        job_spec[part] = {k: v for k, v in job_spec[part].items() if v is not None or k not in ("auto", "reason")}
    shown = {"method": choice["method"], "student": spec.space.students[choice["student"]].model_dump(),
             "learning_rate": choice["learning_rate"], "temperature": choice["temperature"]}
    job = Job(id=new_id("job"), tenant=search.tenant, status="queued", teacher_id=spec.teacher_id,
              dataset_id=spec.dataset_id, validation_dataset_id=spec.validation_dataset_id, spec=job_spec, metrics={},
              dispatched_at=now(), search_id=search.id,
              trial={"number": number, "optuna_id": trial._trial_id, "params": shown, "state": "queued"})
    s.add(job)
    s.flush()
    said = _describe(shown)
    s.add(JobEvent(job_id=job.id, type="stage", data={"status": "queued", "search_id": search.id, "trial": number},
                   message=f"queued: trial {number} of search {search.id}: {said}"))
    s.add(SearchEvent(search_id=search.id, data={"trial": number, "job_id": job.id, "params": shown},
                      message=f"trial {number} queued as job {job.id}: {said}"))
    search.trials_started = number + 1
    return job


def _describe(params: dict) -> str:
    student = params["student"]
    shape = student["params"].get("hidden_sizes") or student["params"].get("channels") or student["params"]
    temp = f", temperature {params['temperature']:.2f}" if params.get("temperature") is not None else ""
    return f"{params['method']}, {student['architecture']} {shape}, learning rate {params['learning_rate']:.2e}{temp}"


def score_of(metrics: dict) -> float | None:
    """What the optimizer maximises: the published epoch's validation score (what the trial chose
    its epoch by: accuracy and agreement weighted by their rows, mean cosine for embeddings)."""
    for key in ("val_score", "student_accuracy", "agreement", "mean_cosine"):
        if metrics.get(key) is not None:
            return float(metrics[key])
    return None


def _tell(s, study: optuna.Study, search: Search, spec: SearchCreate, job: Job, card: dict | None) -> None:
    number, status = job.trial["number"], trial_status(job.status, job.error)
    value = score_of(job.metrics or {}) if status == "succeeded" else None
    frozen = study._storage.get_trial(job.trial["optuna_id"])
    if frozen.state == TrialState.RUNNING:  # not told already (a step that died after it)
        if status == "succeeded" and value is not None and card is not None:
            cands = _candidates(job, {job.model_id: card}, spec)
            miss = min((sum(v for k, v in c.violations.items() if k in COST_TARGETS) for c in cands), default=0.0)
            study._storage.set_trial_user_attr(frozen._trial_id, "cost_miss", float(miss))
            study.tell(number, value)
        elif status == "pruned":
            study.tell(number, state=TrialState.PRUNED)
        else:
            study.tell(number, state=TrialState.FAIL)
    job.trial = {**job.trial, "state": status, "value": value}
    detail = f"validation score {value:.4f}" if value is not None else \
        (job.error or {}).get("message", "stopped") if status != "succeeded" else "no score"
    s.add(SearchEvent(search_id=search.id, level="warning" if status == "failed" else "info",
                      data={"trial": number, "job_id": job.id, "status": status, "value": value,
                            "model_id": job.model_id},
                      message=f"trial {number} {status}: {detail}"))


def _finish(s, search: Search, jobs: list[Job], status: str) -> None:
    search.status, search.finished_at, search.advancing_until = status, now(), None
    result = search.result or {}
    if status == "failed":
        first = next((j.error for j in jobs if j.error), None) or {}
        search.error = {"code": "no_trial_succeeded", "param": None,
                        "message": f"none of the {len(jobs)} trials succeeded; the first failure: "
                        f"{first.get('code', '?')}: {first.get('message', 'no error recorded')}"}
        message = search.error["message"]
    elif result.get("recommended"):
        r = result["recommended"]
        message = (f"{status}: recommended trial {r['trial']} ({r['precision']}, model {r['model_id']}): accuracy "
                   f"{_num(r['accuracy'])}, {_num(r['latency_ms'])} ms, {r['size_bytes']:,} bytes")
    elif result.get("closest"):
        c = result["closest"]
        message = (f"{status}: no file meets every target; the closest is trial {c['trial']} ({c['precision']}, "
                   f"model {c['model_id']}), missing {', '.join(f'{k} by {v:.1%}' for k, v in c['violations'].items())}")
    else:
        message = f"{status}: no trial finished"
    s.add(SearchEvent(search_id=search.id, type="stage", level="error" if status == "failed" else "info",
                      data={"status": status, "recommended": result.get("recommended"),
                            "meets_targets": result.get("meets_targets", False)}, message=message))


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


# -- what a trial job does for its search ---------------------------------------------------

def pruning(settings: Settings, db: Database, job: Job, on_epoch: Callable) -> Callable:
    """on_epoch for a trial's training: report each epoch's validation score to Optuna, and stop
    the trial (trainer.Stopped(PRUNED)) when the pruner says it cannot catch up."""
    with db.session() as s:
        search = s.scalar(select(Search).where(Search.id == job.search_id))
    spec = SearchCreate.model_validate(search.spec)
    study = open_study(settings, search.id, spec, int(spec.space.epochs))
    trial = optuna.trial.Trial(study, job.trial["optuna_id"])

    def hook(m: trainer.EpochMetrics) -> None:
        on_epoch(m)
        if m.val_score is None:
            return
        try:
            trial.report(m.val_score, m.epoch)
            prune = trial.should_prune()
        except (RuntimeError, ValueError) as exc:  # the trial was already told (its search cancelled)
            log.info("trial job %s: not reported to its study: %s", job.id, exc)
            return
        if prune:
            raise trainer.Stopped(PRUNED)

    return hook

