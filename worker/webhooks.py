"""This worker process's webhook senders (kdserve.service.webhooks.sender): made once, on first
use, with the process's database, whose commits then hand their new deliveries straight to them
(no trip through the broker: a worker busy with a job does not read its Celery messages until the
job ends, but these threads run beside it)."""

from __future__ import annotations

from functools import lru_cache

from kdserve.service.settings import get_settings
from kdserve.service.webhooks.sender import Sender
from kdserve.worker.pipeline import context


@lru_cache
def sender() -> Sender:
    db, _blobs = context()
    senders = Sender(db, get_settings())
    db.on_deliveries = senders.submit
    return senders
