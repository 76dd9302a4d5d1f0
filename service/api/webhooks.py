"""/v1/webhooks: a tenant's webhook endpoints (create, list, get, update, delete), their deliveries
with every attempt, a replay of one, and a test event.

The events themselves are written by the outbox (kdserve.service.store.outbox) when jobs,
searches and models change, and sent by the workers (kdserve.service.webhooks.sender); this
router only manages endpoints and adds the deliveries a caller asks for (replay, test), which the
same outbox hook announces to a worker once committed."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import delete, func, select

from kdserve.service.api.deps import (Context, add_read_routes, body_openapi, get_ctx, get_owned, json_body, paginate,
                                      principal)
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError, not_found
from kdserve.service.schemas import ListOut
from kdserve.service.store import outbox
from kdserve.service.store.db import Webhook, WebhookDelivery, new_id, now
from kdserve.service.vocab import WEBHOOK_EVENTS, WEBHOOK_TEST_EVENT
from kdserve.service.webhooks import signing
from kdserve.service.webhooks.addresses import Policy, Refused, check
from kdserve.service.webhooks.schemas import (WebhookAttempt, WebhookCreate, WebhookDeliveryOut, WebhookOut,
                                              WebhookPatch)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def to_out(row: Webhook, secret: bool = False) -> WebhookOut:
    return WebhookOut(id=row.id, url=row.url, events=row.events, description=row.description, enabled=row.enabled,
                      secret=row.secret if secret else None, created_at=row.created_at, updated_at=row.updated_at)


def delivery_out(row: WebhookDelivery) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(id=row.id, webhook_id=row.webhook_id, message_id=row.message_id,
                              event_type=row.event_type, payload=row.payload, status=row.status,
                              attempts=[WebhookAttempt(**a) for a in row.attempts], next_attempt_at=row.next_attempt_at,
                              replay_of=row.replay_of, created_at=row.created_at)


def checked_url(ctx: Context, url: str) -> str:
    """The URL when a webhook may go there now (its host resolves to allowed addresses), else 422."""
    try:
        check(url, Policy.from_settings(ctx.settings))
    except Refused as exc:
        raise ApiError(422, "invalid_request", str(exc), "url")
    return url


def event_list(events: list[str] | None) -> list[str]:
    return list(dict.fromkeys(events)) if events else list(WEBHOOK_EVENTS)


@router.post("", status_code=201, response_model=WebhookOut, openapi_extra=body_openapi(WebhookCreate))
def create_webhook(body: WebhookCreate = Depends(json_body(WebhookCreate)), ctx: Context = Depends(get_ctx),
                   who: Principal = Depends(principal)):
    """A new endpoint; the answer holds its signing secret (made here unless given)."""
    if body.secret is not None:
        try:
            signing.secret_key(body.secret)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc), "secret")
    url = checked_url(ctx, body.url)
    with ctx.db.session() as s:
        count = s.scalar(select(func.count()).select_from(Webhook).where(Webhook.tenant == who.tenant))
        if count >= ctx.settings.webhook_max_per_tenant:
            raise ApiError(429, "rate_limited", f"tenant {who.tenant!r} has {count} webhooks, its limit "
                           "(KDSERVE_WEBHOOK_MAX_PER_TENANT); delete one first")
        row = Webhook(id=new_id("wh"), tenant=who.tenant, url=url, events=event_list(body.events),
                      description=body.description, secret=body.secret or signing.new_secret(), enabled=True)
        s.add(row)
        s.flush()
        return to_out(row, secret=True)


add_read_routes(router, Webhook, "webhook", lambda row: to_out(row, secret=True), WebhookOut, list_item=to_out)


@router.patch("/{webhook_id}", response_model=WebhookOut, openapi_extra=body_openapi(WebhookPatch))
def update_webhook(webhook_id: str, body: WebhookPatch = Depends(json_body(WebhookPatch)),
                   ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """Change the fields given (a new url is checked like a new endpoint's)."""
    given = body.model_fields_set
    for name in ("url", "events", "enabled"):
        if name in given and getattr(body, name) is None:
            raise ApiError(422, "invalid_request", f"{name} cannot be null", name)
    url = checked_url(ctx, body.url) if "url" in given else None
    with ctx.db.session() as s:
        row = get_owned(s, Webhook, webhook_id, who, "webhook")
        if url is not None:
            row.url = url
        if "events" in given:
            row.events = event_list(body.events)
        if "description" in given:
            row.description = body.description
        if "enabled" in given:
            row.enabled = body.enabled
        row.updated_at = now()
        return to_out(row)


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """Delete the endpoint and its deliveries (one being sent right now may still arrive)."""
    with ctx.db.session() as s:
        row = get_owned(s, Webhook, webhook_id, who, "webhook")
        s.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == row.id))
        s.delete(row)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=ListOut)
def list_deliveries(webhook_id: str, status: str | None = Query(None), limit: int = Query(20, ge=1, le=100),
                    after: str | None = None, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """The endpoint's deliveries, newest first, each with its attempts."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise ApiError(422, "invalid_request", f"status must be one of {list(DELIVERY_STATUSES)}", "status")
    with ctx.db.session() as s:
        hook = get_owned(s, Webhook, webhook_id, who, "webhook")
        rows, more = paginate(s, WebhookDelivery, who, limit, after, WebhookDelivery.webhook_id == hook.id,
                              *([WebhookDelivery.status == status] if status else []))
        return ListOut(data=[delivery_out(r) for r in rows], has_more=more)


def _sendable(hook: Webhook) -> None:
    if not hook.enabled:
        raise ApiError(409, "conflict", f"webhook {hook.id} is disabled; enable it first (PATCH enabled: true)")


@router.post("/{webhook_id}/deliveries/{delivery_id}/replay", status_code=202, response_model=WebhookDeliveryOut)
def replay_delivery(webhook_id: str, delivery_id: str, ctx: Context = Depends(get_ctx),
                    who: Principal = Depends(principal)):
    """Send a delivery's message again, as a new delivery (the same payload and webhook-id, so a
    receiver that already handled it can tell), whatever became of the first."""
    with ctx.db.session() as s:
        hook = get_owned(s, Webhook, webhook_id, who, "webhook")
        original = s.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                          WebhookDelivery.webhook_id == hook.id))
        if original is None:
            raise not_found("delivery", delivery_id, "delivery_id")
        _sendable(hook)
        row = outbox.delivery(hook, original.payload, original.subject_id, original.message_id, replay_of=original.id)
        s.add(row)
        s.flush()
        return delivery_out(row)


@router.post("/{webhook_id}/test", status_code=202, response_model=WebhookDeliveryOut)
def test_webhook(webhook_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """Send a `webhook.test` event to the endpoint now (whatever events it subscribes to)."""
    with ctx.db.session() as s:
        hook = get_owned(s, Webhook, webhook_id, who, "webhook")
        _sendable(hook)
        row = outbox.delivery(hook, outbox.message(WEBHOOK_TEST_EVENT, {"webhook_id": hook.id,
                                                                       "message": "a test event from kdserve"}))
        s.add(row)
        s.flush()
        return delivery_out(row)
