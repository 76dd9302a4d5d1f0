"""/v1/webhooks' requests and answers (the HTTP contract, docs/api.md#webhooks)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from kdserve.service.schemas import Strict
from kdserve.service.vocab import WEBHOOK_EVENTS

WebhookEvent = Literal[tuple(WEBHOOK_EVENTS)]  # type: ignore[valid-type]
DeliveryStatus = Literal["pending", "succeeded", "failed"]

_URL = ("where the events are POSTed: http(s), a public address (loopback, private and link-local addresses are "
        "refused unless the operator allows them)")
_EVENTS = "the event types to send (" + ", ".join(WEBHOOK_EVENTS) + ")"


# one line of printable text (no control characters, which PostgreSQL would refuse to store)
Description = Annotated[str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]


class WebhookCreate(Strict):
    url: str = Field(min_length=1, max_length=2048, description=_URL)
    events: list[WebhookEvent] | None = Field(None, min_length=1, description=_EVENTS + "; left out: every one")
    description: Description | None = Field(None, description="what the endpoint is for, for people")
    secret: str | None = Field(None, max_length=120, description="the signing secret, \"whsec_\" + base64 of 24 to "
                               "64 bytes (Standard Webhooks); left out, one is made")


class WebhookPatch(Strict):
    url: str | None = Field(None, min_length=1, max_length=2048, description=_URL)
    events: list[WebhookEvent] | None = Field(None, min_length=1, description=_EVENTS)
    description: Description | None = Field(None, description="null clears it")
    enabled: bool | None = Field(None, description="false: no new deliveries, and pending ones are not sent")


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    secret: str | None = Field(description="the signing secret (verify with any Standard Webhooks library); shown "
                               "when the endpoint is created and by GET /v1/webhooks/{id}, null in lists")
    created_at: int
    updated_at: int


class WebhookAttempt(BaseModel):
    at: float = Field(description="when it was sent (unix seconds)")
    status_code: int | None = Field(description="the receiver's HTTP status; null when none came")
    error: str | None = Field(description="why no 2xx came: a timeout, a connection error, a refused address")
    duration_ms: float


class WebhookDeliveryOut(BaseModel):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_id: str
    message_id: str = Field(description="the `webhook-id` header: the same on every attempt and on a replay")
    event_type: str
    payload: dict[str, Any] = Field(description="the body sent: {type, timestamp, data}")
    status: DeliveryStatus
    attempts: list[WebhookAttempt]
    next_attempt_at: float | None = Field(description="when the next attempt is due (unix seconds); null once it "
                                          "succeeded or failed")
    replay_of: str | None = Field(description="the delivery this one replays")
    created_at: int
