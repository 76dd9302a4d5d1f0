"""Webhooks: a tenant's endpoints get its events (job and search status changes, models published,
variants withheld) as signed HTTP POSTs, per the Standard Webhooks spec (standardwebhooks.com).

- signing.py: secrets and the `webhook-*` headers (HMAC-SHA256), written here, not borrowed;
- addresses.py: where a webhook may go (no SSRF into the cluster): checked at create and again
  before every attempt, on the addresses the host resolves to, and the attempt connects to the
  address that was checked;
- schemas.py: the HTTP contract of /v1/webhooks;
- sender.py: the workers' delivery: claim a due row, send one attempt, record it, schedule the
  next with exponential backoff.

The rows to send are written by the outbox (kdserve.service.store.outbox) in the same transaction
as the status change they announce, so an event is never announced without having happened nor
lost when a message is.
"""
