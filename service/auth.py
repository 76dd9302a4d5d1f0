"""API keys: `kd_` + 43 URL-safe characters, stored as sha256 hashes, each bound to a tenant."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from kdserve.service.store.db import ApiKey, Database, new_id, now

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    tenant: str
    is_admin: bool = False


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, tenant: str, is_admin: bool = False) -> tuple[str, ApiKey]:
    key = "kd_" + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), tenant=tenant, key_hash=hash_key(key), prefix=key[:8], is_admin=is_admin)
    with db.session() as s:
        s.add(row)
    return key, row


# Valid keys seen in the last `ttl_s` seconds (KDSERVE_AUTH_CACHE_S, default 0.5), so a busy
# client (inference, polling) costs one database read per key per TTL instead of one per request.
# `kdserve keys revoke` runs in another process, so an API process learns of a revocation only
# from the database: a revoked key stops working within the TTL.
_cache: dict[tuple[str, str], tuple[float, Principal]] = {}


def lookup(db: Database, key: str, ttl_s: float = 0.5) -> Principal | None:
    """The principal of a valid key, else None; answered from the cache when checked < ttl_s ago."""
    digest = hash_key(key)
    hit = _cache.get((db.url, digest))
    if hit and hit[0] > time.monotonic():
        return hit[1]
    with db.session() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
        who = Principal(row.tenant, row.is_admin) if row else None
    if who is None or ttl_s <= 0:
        _cache.pop((db.url, digest), None)
    else:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[(db.url, digest)] = (time.monotonic() + ttl_s, who)
    return who


def revoke(db: Database, key_id: str) -> bool:
    with db.session() as s:
        row = s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = now()
    _cache.clear()  # this process forgets at once; API processes within their KDSERVE_AUTH_CACHE_S
    return True


def ensure_bootstrap_key(db: Database, key_file: Path) -> str | None:
    """On first start: create the `default` tenant's key, write it to key_file and return it.
    Returns None when the file exists and its key is still valid. Either way the file ends up
    0600 (owner only), whatever mode an older version or a copy left it with; a symbolic link in
    its place is refused (O_NOFOLLOW), never written through."""
    if key_file.exists():
        _owner_only(key_file)
        if lookup(db, key_file.read_text().strip()):
            return None
    key, _ = create_key(db, DEFAULT_TENANT, is_admin=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode applies to a new file only
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _owner_only(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
