"""The webhook outbox: when a status change, a published model or a withheld variant is written,
the deliveries that announce it to the tenant's endpoints are written in the same transaction.

One hook instead of a call at every place that changes a status: every such change already writes
a row that says so, and this hook (a `before_flush` listener on the Database's sessions) reads
those rows as they are inserted:

- a JobEvent of type "stage" with data {"status": s}: `job.<s>` (the API's create and cancel, the
  worker's claim and finish, the reaper's ends, a search's trials);
- a JobEvent with data {"warning": "variant_withheld"}: `model.variant_withheld`;
- a SearchEvent of type "stage" with data {"status": s}: `search.<s>`;
- a new Model row: `model.published`.

For each, a WebhookDelivery row is added per enabled endpoint of the tenant that subscribes to
the event (the session flushes it with the rest). So the event and its deliveries commit or roll
back together: no delivery for a change that did not happen, none lost for one that did. Once the
transaction commits, the Database's `on_deliveries` callback is told the new ids (the API sends
them to a worker through Celery; a worker hands them to its own senders); if that message is
lost, the workers' sweep (kdserve.worker.reaper) finds the rows anyway.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from kdserve.service.store.tables import Job, JobEvent, Model, Search, SearchEvent, Webhook, WebhookDelivery, new_id

log = logging.getLogger("kdserve.webhooks")

NEW_DELIVERIES = "kdserve.new_webhook_deliveries"  # session.info key: ids written by this transaction


def install(sessions: sessionmaker, announce: Callable[[list[str]], None]) -> None:
    """Write deliveries in every session `sessions` makes; `announce(ids)` after each commit that wrote some."""
    event.listen(sessions, "before_flush", _before_flush)
    event.listen(sessions, "after_commit", lambda s: _after_commit(s, announce))
    event.listen(sessions, "after_rollback", lambda s: s.info.pop(NEW_DELIVERIES, None))


def message(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """A Standard Webhooks payload: {"type", "timestamp" (ISO 8601, UTC), "data"}."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"type": event_type, "timestamp": stamp, "data": data}


def delivery(hook: Webhook, payload: dict[str, Any], subject_id: str | None = None, message_id: str | None = None,
             replay_of: str | None = None) -> WebhookDelivery:
    """A pending delivery of `payload` (about `subject_id`: a job, search or model) to `hook`, due now."""
    return WebhookDelivery(id=new_id("whd"), tenant=hook.tenant, webhook_id=hook.id,
                           message_id=message_id or new_id("msg"), event_type=payload["type"], subject_id=subject_id,
                           payload=payload, status="pending", attempts=[], next_attempt_at=0.0, replay_of=replay_of)


def _before_flush(session: Session, _context, _instances) -> None:
    try:
        _write(session)
    except Exception:  # a bug here must not fail the job's or the API's transaction
        log.exception("webhook deliveries not written for this change")
    session.info.setdefault(NEW_DELIVERIES, []).extend(
        obj.id for obj in session.new if isinstance(obj, WebhookDelivery))


def _after_commit(session: Session, announce: Callable[[list[str]], None]) -> None:
    ids = session.info.pop(NEW_DELIVERIES, None)
    if not ids:
        return
    try:
        announce(ids)
    except Exception as exc:  # best effort: the workers' sweep sends them anyway
        log.warning("webhook deliveries %s not announced (the sweep will send them): %s: %s", ids,
                    type(exc).__name__, exc)


def _write(session: Session) -> None:
    endpoints: dict[str, list[Webhook]] = {}
    for tenant, event_type, data in list(_events(session)):
        if tenant not in endpoints:
            endpoints[tenant] = list(session.scalars(select(Webhook).where(Webhook.tenant == tenant,
                                                                             Webhook.enabled.is_(True))))
        subscribed = [hook for hook in endpoints[tenant] if event_type in hook.events]
        if not subscribed:
            continue
        payload, message_id = message(event_type, data), new_id("msg")  # one message, to every endpoint
        subject = data.get("job_id") if event_type == "model.variant_withheld" else data["id"]
        for hook in subscribed:
            session.add(delivery(hook, payload, subject, message_id))


def _events(session: Session) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(tenant, event type, data) for each row of this flush that announces an event."""
    for obj in list(session.new):
        if isinstance(obj, JobEvent):
            data = obj.data or {}
            if obj.type == "stage" and data.get("status"):
                job = _row(session, Job, obj.job_id)
                if job is not None:
                    yield job.tenant, f"job.{data['status']}", _job_data(job, data["status"], obj.message)
            elif data.get("warning") == "variant_withheld":
                job = _row(session, Job, obj.job_id)
                if job is not None:
                    yield job.tenant, "model.variant_withheld", {
                        "job_id": job.id, "precision": data.get("precision"),
                        "accuracy_delta": data.get("accuracy_delta"), "message": obj.message}
        elif isinstance(obj, SearchEvent) and obj.type == "stage" and (obj.data or {}).get("status"):
            search = _row(session, Search, obj.search_id)
            if search is not None:
                yield search.tenant, f"search.{obj.data['status']}", _search_data(search, obj)
        elif isinstance(obj, Model):
            yield obj.tenant, "model.published", _model_data(obj)


def _row(session: Session, table, id_: str):
    """The row with this id: one added in this flush, else the stored one (as this transaction sees it)."""
    for obj in session.new:
        if isinstance(obj, table) and obj.id == id_:
            return obj
    return session.scalar(select(table).where(table.id == id_))


def _job_data(job: Job, status: str, said: str) -> dict[str, Any]:
    return {"id": job.id, "object": "job", "status": status, "teacher_id": job.teacher_id,
            "dataset_id": job.dataset_id, "search_id": job.search_id, "model_id": job.model_id,
            "error": job.error, "metadata": (job.spec or {}).get("metadata") or {}, "message": said}


def _search_data(search: Search, ev: SearchEvent) -> dict[str, Any]:
    return {"id": search.id, "object": "search", "status": ev.data["status"], "teacher_id": search.teacher_id,
            "dataset_id": search.dataset_id, "recommended": ev.data.get("recommended"), "error": search.error,
            "message": ev.message}


def _model_data(model: Model) -> dict[str, Any]:
    card = model.card or {}
    return {"id": model.id, "object": "model", "name": model.name, "job_id": model.job_id,
            "num_parameters": card.get("num_parameters"), "metrics": card.get("metrics") or {},
            "precisions": [a.get("precision") for a in card.get("artifacts") or []]}
