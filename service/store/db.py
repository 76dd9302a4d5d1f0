"""Database tables and the few queries everything shares. The database is the source of truth:
the Celery message carries a job id, nothing else."""

from __future__ import annotations

import secrets
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import (JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, create_engine, event,
                        func, select, update)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Teacher(Base):
    __tablename__ = "teachers"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[Any]] = mapped_column(JSON)
    input_dtype: Mapped[str] = mapped_column(String(20))
    num_classes: Mapped[int] = mapped_column(Integer)
    num_parameters: Mapped[int] = mapped_column(Integer)
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    blob_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    # Text teachers (format hf): task, tokenizer and architecture facts the pre-flight checks need.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    num_rows: Mapped[int] = mapped_column(Integer)
    feature_shape: Mapped[list[Any]] = mapped_column(JSON)
    labeled: Mapped[bool] = mapped_column(Boolean)
    num_classes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    class_counts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    blob_key: Mapped[str] = mapped_column(String(255))  # canonical npz: x float32, y int64 (-1 = unlabelled)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    # Text datasets (format jsonl): kind, whether rows are text pairs, text lengths.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    # the index serves claim_next's "when was each tenant last served"
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key"), Index("ix_jobs_tenant_claimed_at", "tenant", "claimed_at"))
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True, default="queued")
    stage: Mapped[str | None] = mapped_column(String(20), nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    teacher_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    validation_dataset_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated JobCreate body
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)  # the delivery that holds the job
    dispatched_at: Mapped[int | None] = mapped_column(Integer, nullable=True)  # last time its id was sent to the broker
    claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # last time a worker took it (fairness)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(10), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Model(Base):
    __tablename__ = "models"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(255))
    job_id: Mapped[str] = mapped_column(String(40), unique=True)  # one model per job: publishing is idempotent
    card: Mapped[dict[str, Any]] = mapped_column(JSON)  # everything of the model card but the ids above
    created_at: Mapped[int] = mapped_column(Integer, default=now)


TERMINAL = ("succeeded", "failed", "cancelled")


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

    def migrate(self) -> str:
        """Create or upgrade the schema with the migrations (service/store/migrate.py); safe to call
        from every process at start. Says what it did."""
        from kdserve.service.store import migrate  # it imports this module's models

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
