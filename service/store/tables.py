"""The database's tables (SQLAlchemy ORM). The schema is made and upgraded by the migrations
(service/store/migrate.py), which compare against these; queries live in service/store/db.py."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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


class Upload:
    """The columns every uploaded file's row has (teachers and datasets)."""

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)


class Teacher(Upload, Base):
    __tablename__ = "teachers"
    input_shape: Mapped[list[Any]] = mapped_column(JSON)
    input_dtype: Mapped[str] = mapped_column(String(20))
    num_classes: Mapped[int] = mapped_column(Integer)
    num_parameters: Mapped[int] = mapped_column(Integer)
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    blob_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    # Text teachers (format hf): task, tokenizer and architecture facts the pre-flight checks need.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Dataset(Upload, Base):
    __tablename__ = "datasets"
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
    test_dataset_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
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
    # A search's trial: the search, and the trial (number, params the optimizer chose, its outcome).
    search_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    trial: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # What the user should know about a job that ran (a variant withheld, a student far below its
    # teacher, a tiny validation split, ...): [{code, message}], also on the model card.
    warnings: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class Event:
    """The columns every event row has (a job's, a search's): ids only grow, so they are cursors."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(10), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class JobEvent(Event, Base):
    __tablename__ = "job_events"
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)


class Model(Base):
    __tablename__ = "models"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(255))
    job_id: Mapped[str] = mapped_column(String(40), unique=True)  # one model per job: publishing is idempotent
    card: Mapped[dict[str, Any]] = mapped_column(JSON)  # everything of the model card but the ids above
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Search(Base):
    """A search (POST /v1/searches): its trials are jobs (Job.search_id); the optimizer's own state
    lives in Optuna's storage (kdserve.worker.search)."""

    __tablename__ = "searches"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True, default="queued")
    teacher_id: Mapped[str] = mapped_column(String(40), index=True)
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated SearchCreate, its space resolved
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # leaderboard, Pareto front, recommendation
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    trials_started: Mapped[int] = mapped_column(Integer, default=0)
    # Who advances the search now (ask/tell): a lease, so that one worker at a time does, and a
    # flag that another one wanted to (the holder goes round once more before it lets go).
    advancing_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    advance_again: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class SearchEvent(Event, Base):
    __tablename__ = "search_events"
    search_id: Mapped[str] = mapped_column(String(40), ForeignKey("searches.id", ondelete="CASCADE"), index=True)



class Webhook(Base):
    """A tenant's webhook endpoint (POST /v1/webhooks): where its events are sent, signed with
    `secret` (Standard Webhooks: "whsec_" + base64 of the key)."""

    __tablename__ = "webhooks"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column(JSON)  # event types (kdserve.service.vocab.WEBHOOK_EVENTS)
    description: Mapped[str | None] = mapped_column(String(500), nullable=True)
    secret: Mapped[str] = mapped_column(String(120))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    updated_at: Mapped[int] = mapped_column(Integer, default=now)


class WebhookDelivery(Base):
    """One message to one endpoint, and every attempt to send it: the outbox. A row is written in
    the transaction that makes its event true (kdserve.service.store.outbox) and sent by a worker
    (kdserve.service.webhooks.sender), which claims it with a lease so that no two send one attempt.

    `webhook_id` has no foreign key on purpose: a job's transaction that writes a delivery must
    never fail because the endpoint was deleted meanwhile (the sender drops such orphans)."""

    __tablename__ = "webhook_deliveries"
    # the sweep's query: pending rows whose next attempt is due
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    webhook_id: Mapped[str] = mapped_column(String(40), index=True)
    message_id: Mapped[str] = mapped_column(String(40))  # the `webhook-id` header: the same on every attempt and replay
    event_type: Mapped[str] = mapped_column(String(50))
    subject_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the job, search or model it is about
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"type", "timestamp", "data"}: the body sent
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | succeeded | failed
    attempts: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{at, status_code, error, duration_ms}]
    next_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # None once it ended
    leased_by: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the sender attempting it now
    leased_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    replay_of: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the delivery it replays
    created_at: Mapped[int] = mapped_column(Integer, default=now)


TERMINAL = ("succeeded", "failed", "cancelled")
