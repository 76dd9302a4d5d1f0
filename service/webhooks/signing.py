"""Standard Webhooks signatures (https://github.com/standard-webhooks/standard-webhooks, "Signature
scheme"): the receiver checks that a request came from us, unaltered and recently.

    webhook-id:        the message id, the same on every retry (the receiver's idempotency key)
    webhook-timestamp: the attempt's time, unix seconds (the receiver refuses old ones: replays)
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))

where key is the secret's bytes: the secret is "whsec_" + base64(key). Written here rather than
taken from the `standardwebhooks` package so the service needs no extra dependency at run time;
the tests verify these headers with that package, the reference implementation."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # what a generated secret holds; the spec asks for 24 to 64
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a "whsec_…" secret; ValueError, saying why, when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a secret starts with {SECRET_PREFIX!r} followed by base64 (leave it out to have one made)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError(f"the part after {SECRET_PREFIX!r} is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"the secret's key is {len(key)} bytes; it must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}")
    return key


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for this message (one "v1," signature)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt to send `body`."""
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, message_id, timestamp, body)}
