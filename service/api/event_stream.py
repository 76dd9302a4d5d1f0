"""A resource's events (jobs, searches): a page of them as JSON, or a Server-Sent Events stream that
follows them until the resource ends. Event ids are the table's row ids, so `after` and
Last-Event-ID resume exactly where a client stopped."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Callable

from fastapi import Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kdserve.service.api.deps import Context, key_check
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.limits import HeldStreamingResponse
from kdserve.service.schemas import EventOut, ListOut
from kdserve.service.store.db import TERMINAL

# Event ids are database row ids: a cursor past a signed 64-bit integer is no id, and would
# overflow the database's integer instead of matching nothing.
MAX_EVENT_ID = 2**63 - 1
_LAST_EVENT_ID = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes '²' and '١'


def resume_cursor(last_event_id: str | None, after: int) -> int:
    """Where an SSE stream starts: the Last-Event-ID a reconnecting client sends, else `after`.
    This route only ever sends numeric ids, so anything else is refused, never guessed at."""
    if last_event_id is None or last_event_id == "":
        return after
    value = last_event_id.strip()
    if not _LAST_EVENT_ID.fullmatch(value) or int(value) > MAX_EVENT_ID:
        raise ApiError(422, "invalid_request", "Last-Event-ID must be the id of an event this stream sent (a "
                       "non-negative integer)", "Last-Event-ID")
    return int(value)


class EventSource:
    """The events of one resource: `table` (JobEvent, SearchEvent), its owner column, and `owned`,
    which loads the resource for the caller (404 when it is not theirs) and has a `status`."""

    def __init__(self, ctx: Context, table: Any, owner_column: Any, owner_id: str, owned: Callable[[], Any]):
        self.ctx, self.table, self.column, self.owner_id, self.owned = ctx, table, owner_column, owner_id, owned

    def page(self, after: int, limit: int) -> tuple[list[EventOut], bool]:
        t = self.table
        with self.ctx.db.session() as s:
            rows = list(s.scalars(select(t).where(self.column == self.owner_id, t.id > after)
                                  .order_by(t.id).limit(limit + 1)))
            out = [EventOut(id=e.id, created_at=e.created_at, level=e.level, type=e.type, message=e.message,
                            data=e.data) for e in rows[:limit]]
            return out, len(rows) > limit


async def respond(request: Request, source: EventSource, who: Principal, after: int, limit: int):
    """GET …/events: a JSON page, or (Accept: text/event-stream) the live stream."""
    await run_in_threadpool(source.owned)
    if "text/event-stream" not in request.headers.get("accept", ""):
        events, more = await run_in_threadpool(source.page, after, limit)
        return ListOut(data=events, has_more=more)
    cursor = resume_cursor(request.headers.get("last-event-id"), after)
    ctx = source.ctx
    release = ctx.event_streams.acquire(who.tenant, ctx.settings.tenant_max_event_streams)
    return HeldStreamingResponse(_stream(request, source, cursor), release=release,
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(e: EventOut) -> str:
    return f"id: {e.id}\nevent: {e.type}\ndata: {e.model_dump_json()}\n\n"


async def _stream(request: Request, source: EventSource, cursor: int):
    """The events after `cursor` as they are written, until the resource ends, the client goes
    away or the caller's key is revoked; a comment line every 15 s keeps proxies from closing it."""
    still_valid = key_check(request, source.ctx)
    last_sent = time.monotonic()
    while True:
        events, more = await run_in_threadpool(source.page, cursor, 500)
        for e in events:
            cursor = e.id
            yield _sse(e)
        if not more:
            resource = await run_in_threadpool(source.owned)
            if resource.status in TERMINAL:
                tail, _ = await run_in_threadpool(source.page, cursor, 500)
                for e in tail:
                    yield _sse(e)
                return
            if await request.is_disconnected() or not await run_in_threadpool(still_valid):
                return
            if time.monotonic() - last_sent > 15:
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(0.5)
