"""Delivering webhook messages: what a worker does with a row of the outbox.

Each worker process keeps a few sender threads (`Sender`), fed with delivery ids from three
places: its own commits (the outbox's ids, at once), the Celery task the API sends after its
commits (kdserve.worker.tasks.deliver_webhooks), and the reaper's sweep of due rows every round
(kdserve.worker.reaper), which is what makes a lost message or a dead worker harmless. A job never
waits for them: they are threads beside the job, and a Celery task only hands them ids.

One attempt (`Sender.attempt`):
1. claim the row atomically (one UPDATE: still pending, due, and not leased by a live sender),
   with a lease longer than an attempt can take, so two workers never send the same attempt and a
   sender that dies mid-way only delays the next one until its lease ends;
2. check the destination again (kdserve.service.webhooks.addresses: a refused address is
   recorded and nothing is sent) and POST the message, signed (signing.py), to the checked
   address, without following redirects, within KDSERVE_WEBHOOK_TIMEOUT_S;
3. record the attempt {at, status_code, error, duration_ms}: a 2xx ends it `succeeded`; anything
   else is retried after an exponential backoff until KDSERVE_WEBHOOK_MAX_ATTEMPTS, then `failed`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import httpx
from sqlalchemy import delete, or_, select, update

from kdserve.service.settings import Settings
from kdserve.service.store.db import Database, Webhook, WebhookDelivery
from kdserve.service.webhooks import signing
from kdserve.service.webhooks.addresses import Policy, Refused, Unresolvable, check

log = logging.getLogger("kdserve.webhooks")

USER_AGENT = "kdserve-webhooks/1"
# Waits after the 1st, 2nd, … failed attempt, in units of KDSERVE_WEBHOOK_RETRY_BASE_S (5 s by default:
# 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, and 1 h from then on).
BACKOFF = (1, 6, 24, 120, 360, 720)
SWEEP_LIMIT = 200  # due rows one sweep hands to the senders


@dataclass
class Attempt:
    """One try at sending a message, as GET /v1/webhooks/{id}/deliveries shows it."""

    at: float
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(settings: Settings, failures: int) -> float:
    """Seconds to wait after the `failures`-th failed attempt."""
    return settings.webhook_retry_base_s * BACKOFF[min(failures, len(BACKOFF)) - 1]


def lease_s(settings: Settings) -> float:
    """How long a claim holds a row: longer than any attempt (resolving, connecting, sending the
    body and waiting for the answer's headers, each within the timeout)."""
    return 4 * settings.webhook_timeout_s + 30


def body_of(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def post(url: str, secret: str, message_id: str, payload: dict, policy: Policy, timeout: float) -> tuple[Attempt, bool]:
    """Send one signed attempt; the attempt, and whether it may be tried again."""
    at, t0 = time.time(), time.perf_counter()

    def done(status_code: int | None = None, error: str | None = None) -> Attempt:
        return Attempt(round(at, 3), status_code, error, round((time.perf_counter() - t0) * 1000, 1))

    try:
        dest = check(url, policy)
    except Unresolvable as exc:  # DNS may answer later
        return done(error=str(exc)), True
    except Refused as exc:  # the address is not allowed: nothing is sent, now or later
        return done(error=f"refused, not sent: {exc}"), False
    body = body_of(payload)
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, "host": dest.host_header(),
               **signing.headers(secret, message_id, int(time.time()), body)}
    # to the address that was checked; for https, the certificate is verified for the host name
    extensions = {"sni_hostname": dest.host} if dest.scheme == "https" else {}
    try:
        with httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False) as client:
            request = client.build_request("POST", dest.pinned_url(), content=body, headers=headers,
                                           extensions=extensions)
            response = client.send(request, stream=True)  # the answer's body is never read
            response.close()
    except httpx.TimeoutException:
        return done(error=f"timed out after {timeout:g} s"), True
    except httpx.HTTPError as exc:
        return done(error=f"{type(exc).__name__}: {exc}"[:500]), True
    return done(response.status_code), True


class Sender:
    """A worker process's delivery threads (daemons: a worker that stops mid-attempt leaves the
    row leased, and the sweep retries it once the lease ends)."""

    def __init__(self, db: Database, settings: Settings, threads: int | None = None):
        self.db, self.settings = db, settings
        self.policy = Policy.from_settings(settings)
        self._ids: queue.Queue[str] = queue.Queue()
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        for k in range(threads or settings.webhook_senders):
            threading.Thread(target=self._loop, name=f"kdserve-webhooks-{k}", daemon=True).start()

    def submit(self, delivery_ids: list[str]) -> None:
        """Attempt these deliveries soon (each once, if due and not held by another sender)."""
        with self._lock:
            fresh = [i for i in delivery_ids if i not in self._waiting]
            self._waiting.update(fresh)
        for delivery_id in fresh:
            self._ids.put(delivery_id)

    def sweep(self) -> int:
        """Hand every due delivery to the threads (the reaper's round); how many."""
        due = due_ids(self.db, time.time(), SWEEP_LIMIT)
        self.submit(due)
        return len(due)

    def _loop(self) -> None:
        while True:
            delivery_id = self._ids.get()
            with self._lock:
                self._waiting.discard(delivery_id)
            try:
                self.attempt(delivery_id)
            except Exception:  # the database went away, a bug: the row stays pending for the sweep
                log.exception("webhook delivery %s: attempt failed", delivery_id)

    def attempt(self, delivery_id: str) -> Attempt | None:
        """One attempt at this delivery if it is due and this sender wins its claim; the attempt."""
        token = uuid.uuid4().hex
        if not claim(self.db, delivery_id, token, time.time(), lease_s(self.settings)):
            return None
        with self.db.session() as s:
            row = s.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))
            if row is None:  # deleted with its endpoint since the claim
                return None
            hook = s.scalar(select(Webhook).where(Webhook.id == row.webhook_id))
            if hook is None:  # the endpoint was deleted after the row was written
                s.execute(delete(WebhookDelivery).where(WebhookDelivery.id == delivery_id))
                return None
        if not hook.enabled:
            result, retry = Attempt(round(time.time(), 3), None, "not sent: the endpoint is disabled", 0.0), False
        else:
            result, retry = post(hook.url, hook.secret, row.message_id, row.payload, self.policy,
                                 self.settings.webhook_timeout_s)
        record(self.db, self.settings, row, token, result, retry)
        log.info("webhook delivery %s (%s to %s): %s", delivery_id, row.event_type, hook.id,
                 result.status_code or result.error)
        return result


def due_ids(db: Database, t: float, limit: int) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= t,
            or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < t),
        ).order_by(WebhookDelivery.next_attempt_at).limit(limit)))


def claim(db: Database, delivery_id: str, token: str, t: float, lease: float) -> bool:
    """Take the row for one attempt: one UPDATE that only one sender can win while the lease lasts."""
    with db.session() as s:
        return s.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= t,
            or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < t),
        ).values(leased_by=token, leased_until=t + lease)).rowcount == 1


def record(db: Database, settings: Settings, row: WebhookDelivery, token: str, attempt: Attempt, retry: bool) -> None:
    """Append the attempt and decide what is next: done, failed, or another attempt after the backoff.
    Only the sender holding the lease writes (one whose lease ran out and was claimed again does not)."""
    attempts = [*row.attempts, asdict(attempt)]
    if attempt.ok:
        status, next_at = "succeeded", None
    elif retry and len(attempts) < settings.webhook_max_attempts:
        status, next_at = "pending", time.time() + retry_delay(settings, len(attempts))
    else:
        status, next_at = "failed", None
    with db.session() as s:
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id, WebhookDelivery.leased_by == token)
                  .values(attempts=attempts, status=status, next_attempt_at=next_at, leased_by=None,
                          leased_until=None))
