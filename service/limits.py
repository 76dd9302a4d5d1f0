"""What one tenant may hold open at once in an API process, and the disk space an upload must leave.

A Server-Sent Events stream holds a connection and polls the database twice a second for as long as
its client likes; an upload holds a connection, a temp file and a share of the disk for as long as
its body takes. Without a bound, one tenant's script could hold every one of them
(KDSERVE_TENANT_MAX_EVENT_STREAMS, KDSERVE_TENANT_MAX_UPLOADS: 429 past them). The counts are per
API process: behind a load balancer each process allows its own.

An upload streams to the blob store's scratch folder; one that would leave less than
KDSERVE_DISK_RESERVE_BYTES free there is refused with 507 (the database, Redis's append-only file
and the jobs' checkpoints share that disk, and they fail badly on a full one).
"""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from starlette.responses import StreamingResponse

from kdserve.service.errors import ApiError


class TenantSlots:
    """At most `limit` of one kind of thing (`what`) open per tenant; `setting` names the knob."""

    def __init__(self, what: str, setting: str):
        self.what, self.setting = what, setting
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant: str, limit: int) -> Callable[[], None]:
        """Take a slot, or raise 429; returns the function that gives it back (call it once)."""
        with self._lock:
            held = self._open.get(tenant, 0)
            if held >= limit:
                raise ApiError(429, "rate_limited", f"tenant {tenant!r} has {held} {self.what} open, its limit "
                               f"({self.setting}); close one or retry later")
            self._open[tenant] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    left = self._open.get(tenant, 1) - 1
                    if left > 0:
                        self._open[tenant] = left
                    else:
                        self._open.pop(tenant, None)

        return release

    @contextmanager
    def hold(self, tenant: str, limit: int) -> Iterator[None]:
        release = self.acquire(tenant, limit)
        try:
            yield
        finally:
            release()

    def held(self, tenant: str) -> int:
        return self._open.get(tenant, 0)


class HeldStreamingResponse(StreamingResponse):
    """A StreamingResponse that gives back a slot when it ends, however it ends (finished, the
    client gone, an error): its body generator's own `finally` would not run for a response whose
    body was never started."""

    def __init__(self, *args, release: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def ensure_free_space(folder: Path, incoming: int, reserve: int) -> None:
    """507 when writing `incoming` more bytes under `folder` would leave less than `reserve` free."""
    free = shutil.disk_usage(folder).free
    if free - incoming < reserve:
        raise ApiError(507, "insufficient_storage", f"the server's disk has {free} bytes free; {incoming} more would "
                       f"go under its {reserve}-byte reserve (KDSERVE_DISK_RESERVE_BYTES); retry later or ask the "
                       "operator to free space", "file")
