"""The database and the few queries everything shares. The database is the source of truth: the
Celery message carries a job id, nothing else. The tables are in service/store/tables.py (their
names are importable from here too)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from kdserve.service.store import migrate, outbox
from kdserve.service.store.tables import (TERMINAL, ApiKey, Base, Dataset, Job, JobEvent, Model, Search, SearchEvent,
                                          Teacher, Webhook, WebhookDelivery, new_id, now)

__all__ = ["TERMINAL", "ApiKey", "Base", "Database", "Dataset", "Job", "JobEvent", "Model", "Search", "SearchEvent",
           "Teacher", "Webhook", "WebhookDelivery", "new_id", "now", "waiting"]


class Database:
    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Webhook deliveries are written with the changes they announce (service/store/outbox.py);
        # once committed, their ids go to `on_deliveries` (set by the API and the workers: who sends them).
        self.on_deliveries: Callable[[list[str]], None] | None = None
        outbox.install(self._sessions, self._announce)

    def _announce(self, delivery_ids: list[str]) -> None:
        if self.on_deliveries is not None:
            self.on_deliveries(delivery_ids)

    def migrate(self) -> str:
        """Create or upgrade the schema with the migrations (service/store/migrate.py); safe to call
        from every process at start. Says what it did."""
        return migrate.upgrade(self.engine)

    create_all = migrate  # the name callers used before migrations existed

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    @contextmanager
    def locked_session(self) -> Iterator[Session]:
        """A session for a check-then-write that must not interleave with another one (a job created
        while its dataset is deleted, two requests with one Idempotency-Key). On SQLite its
        transaction takes the database's write lock before its first read (BEGIN IMMEDIATE), so
        such transactions run one after the other; on PostgreSQL it is an ordinary transaction and
        the rows that matter are locked with lock_rows()."""
        with self.session() as s:
            if self.engine.dialect.name == "sqlite":
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield s

    def lock_rows(self, s: Session, table: type[Base], ids: list[str], *, exclusive: bool) -> set[str]:
        """Lock these rows of `table` until `s` commits and return the ids that still exist. On
        PostgreSQL a shared lock (a job that will read the row) waits for an exclusive one (its
        delete) and the other way round; under READ COMMITTED a row deleted meanwhile is simply not
        returned. On SQLite locked_session() already holds the whole database."""
        query = select(table.id).where(table.id.in_(ids))
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update(read=not exclusive)
        return set(s.scalars(query))

    def ping(self) -> None:
        with self.engine.connect() as c:
            c.exec_driver_sql("SELECT 1")

    # -- job helpers used by both the API and the worker --------------------------------------

    def add_event(self, job_id: str, message: str, *, type: str = "message", level: str = "info",
                  data: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            s.add(JobEvent(job_id=job_id, message=message, type=type, level=level, data=data))

    def update_job(self, job_id: str, **fields: Any) -> Job | None:
        with self.session() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None:
                return None
            for k, v in fields.items():
                setattr(job, k, v)
            return job

    def claim_job(self, job_id: str, worker: str, stale_before: int) -> bool:
        """Atomically take a job for this delivery: a queued job, or a running one whose worker went
        silent before `stale_before`. False when another live delivery holds it (or it ended)."""
        with self.session() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, waiting(stale_before))
                .values(status="running", worker=worker, heartbeat_at=now(), attempts=Job.attempts + 1,
                        started_at=func.coalesce(Job.started_at, now()), claimed_at=time.time(), error=None)
            ).rowcount
        return claimed == 1

    def claim_next(self, worker: str, stale_before: int) -> Job | None:
        """Take the next job to run, fairly between tenants, for this delivery; None when no job waits.

        A Celery message only wakes a worker: the job it runs is chosen here, from the database,
        among every waiting job (queued, or running with a silent worker: see claim_job). The
        tenant chosen is the one with the fewest jobs running now, then the one whose last job
        started longest ago (a tenant never served first), and its oldest waiting job runs. So
        with one worker tenants take turns: one tenant's hundred queued jobs delay another
        tenant's first job by at most the job already running. Per-tenant Celery queues consumed
        round-robin would do the same, but need a queue per tenant known to every worker; here
        the broker still carries one message per accepted job (the reaper keeps their count
        right), acks_late, redelivery and the job row's lease work as before."""
        for _ in range(CLAIM_TRIES):  # another worker may take our choice first: choose again
            job_id = self._next_job(stale_before)
            if job_id is None:
                return None
            if self.claim_job(job_id, worker, stale_before):
                return self.get_job(job_id)
        return None

    def _next_job(self, stale_before: int) -> str | None:
        with self.session() as s:
            heads = dict(s.execute(select(Job.tenant, func.min(Job.seq)).where(waiting(stale_before))
                                   .group_by(Job.tenant)).all())
            if not heads:
                return None
            running = dict(s.execute(select(Job.tenant, func.count()).where(
                Job.tenant.in_(heads), Job.status == "running", Job.heartbeat_at >= stale_before).group_by(Job.tenant)).all())
            served = dict(s.execute(select(Job.tenant, func.max(Job.claimed_at)).where(Job.tenant.in_(heads))
                                    .group_by(Job.tenant)).all())
            tenant = min(heads, key=lambda t: (running.get(t, 0), served.get(t) or 0.0, heads[t]))
            return s.scalar(select(Job.id).where(Job.seq == heads[tenant]))

    def count_waiting(self, stale_before: int) -> int:
        """Jobs that need a worker: each needs a message in the broker to wake one."""
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Job).where(waiting(stale_before)))

    def release_job(self, job_id: str, worker: str) -> bool:
        """This delivery gives the job back (its worker is shutting down): the lease is made stale at
        once, so the next delivery or the reaper takes it without waiting, and the attempt is not
        counted (a shutdown is not a lost worker)."""
        with self.session() as s:
            return s.execute(update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
                             .values(heartbeat_at=0, attempts=Job.attempts - 1)).rowcount == 1

    def heartbeat(self, job_id: str, worker: str) -> bool:
        """Refresh the lease; False when this delivery no longer holds the job."""
        with self.session() as s:
            return s.execute(update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
                             .values(heartbeat_at=now())).rowcount == 1

    def get_job(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.scalar(select(Job).where(Job.id == job_id))


CLAIM_TRIES = 5


def waiting(stale_before: int):
    """A job a worker may take: queued, or running with a worker silent since before `stale_before`
    (killed, or its machine lost); never one whose cancel was asked (the reaper ends those)."""
    return Job.cancel_requested.is_(False) & (
        (Job.status == "queued") | ((Job.status == "running") & (Job.heartbeat_at < stale_before)))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
