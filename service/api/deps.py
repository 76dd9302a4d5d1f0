"""What every router needs, in one place: the app context, the caller, pagination, uploads."""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from celery import Celery
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kdserve.service import auth, bodies
from kdserve.service.errors import ApiError, not_found
from kdserve.service.probe_limits import ProbeLimiter
from kdserve.service.limits import TenantSlots, ensure_free_space
from kdserve.service.model_card import ModelCard
from kdserve.service.serving.v2 import Serving
from kdserve.service.schemas import ListOut
from kdserve.service.settings import Settings
from kdserve.service.spec.catalog import catalog
from kdserve.service.store.blobs import BlobStore
from kdserve.service.store.db import Database, Dataset, Job, Model, Search, Teacher


@dataclass
class Context:
    settings: Settings
    db: Database
    blobs: BlobStore
    celery: Celery
    catalog: dict[str, Any]
    probes: ProbeLimiter | None = None  # teacher probes in flight (service/probe_limits.py); set by the app
    # per tenant, in this process (service/limits.py)
    event_streams: TenantSlots = field(default_factory=lambda: TenantSlots(
        "event streams", "KDSERVE_TENANT_MAX_EVENT_STREAMS"))
    uploads: TenantSlots = field(default_factory=lambda: TenantSlots("uploads in progress", "KDSERVE_TENANT_MAX_UPLOADS"))

    @property
    def python(self) -> str:
        return self.settings.python or sys.executable


def load_catalog() -> dict[str, Any]:
    """Methods, architectures and refinements as the job-spec classes define them
    (kdserve.service.spec.catalog): torch-free, the same classes POST /v1/jobs validates with."""
    return catalog()


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


async def serving(request: Request) -> Serving:
    """The process's inference state (a coroutine: a plain `def` dependency costs a thread hand-off,
    more than a small model's inference)."""
    return request.app.state.serving


def principal(request: Request, ctx: Context = Depends(get_ctx)) -> auth.Principal:
    return authenticate(request, ctx)


def authenticate(request: Request, ctx: Context, cached: bool = True) -> auth.Principal:
    """The caller named by the request's bearer key, or 401. `cached`: trust a key checked in the
    last KDSERVE_AUTH_CACHE_S (auth.lookup); the /v2 routes keep a memo of their own instead."""
    if ctx.settings.auth == "disabled":
        return auth.Principal(auth.DEFAULT_TENANT, is_admin=True)
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    who = auth.lookup(ctx.db, key.strip(), ctx.settings.auth_cache_s if cached else 0.0)
    if who is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    return who


def json_body(model: type[BaseModel], max_bytes: int | None = None, why: str = bodies.REQUEST_LIMIT) -> Callable:
    """A dependency giving the request's JSON body as `model`, read only once the caller's key
    has been checked (a route's own body parameter is read by FastAPI before any dependency, so the
    JSON routes take theirs from this), up to KDSERVE_MAX_REQUEST_BYTES or `max_bytes` if smaller,
    parsed off the event loop when large (service/bodies.py). Document the body with
    `openapi_extra=body_openapi(model)`."""
    async def read_body(request: Request, _: auth.Principal = Depends(principal)) -> BaseModel:
        if not bodies.is_json(request):
            raise ApiError(422, "invalid_request", "the request body must be JSON (Content-Type: application/json)")
        settings = request.app.state.ctx.settings
        cap = min(settings.max_request_bytes, max_bytes or settings.max_request_bytes)
        raw = await bodies.read(request, cap, why if cap == max_bytes else bodies.REQUEST_LIMIT)
        return await request.app.state.parser.parse(model, raw)

    return read_body


def body_openapi(model: type[BaseModel]) -> dict:
    """The requestBody of a route that reads `model` through json_body (service/openapi.py adds its schema)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def key_check(request: Request, ctx: Context) -> Callable[[], bool]:
    """For a response that goes on long after its request was let in (an SSE stream, a large
    download): a blocking function that says whether the caller's key still works, decided as
    `authenticate` would decide now (through the auth cache: at most one database read per
    KDSERVE_AUTH_CACHE_S). The response ends when it says no, so a revoked key's stream stops."""
    def still_valid() -> bool:
        try:
            authenticate(request, ctx)
        except ApiError:
            return False
        return True

    return still_valid


async def uploader(request: Request, ctx: Context = Depends(get_ctx), who: auth.Principal = Depends(principal)):
    """The caller of an upload route, holding one of its tenant's upload slots while the request
    runs (429 past KDSERVE_TENANT_MAX_UPLOADS), once the body's declared size is known to fit on
    the disk above KDSERVE_DISK_RESERVE_BYTES (507; uploads.receive checks again as it streams)."""
    declared = request.headers.get("content-length", "")
    incoming = int(declared) if declared.isascii() and declared.isdigit() and len(declared) <= 19 else 0
    ensure_free_space(ctx.blobs.scratch_dir, incoming, ctx.settings.disk_reserve_bytes)
    with ctx.uploads.hold(who.tenant, ctx.settings.tenant_max_uploads):
        yield who


def get_owned(s: Session, table, id_: str, who: auth.Principal, kind: str, param: str | None = None):
    """The row with this id if the caller's tenant owns it; else 404 as if it did not exist."""
    row = s.scalar(select(table).where(table.id == id_))
    if row is None or (row.tenant != who.tenant and not who.is_admin):
        raise not_found(kind, id_, param)
    return row


MAX_CURSOR_CHARS = 64  # ids are a prefix and 24 hex digits


def paginate(s: Session, table, who: auth.Principal, limit: int, after: str | None, *filters) -> tuple[list, bool]:
    """Newest first; `after` is the id of the last item of the previous page."""
    q = select(table).where(*filters)
    if not who.is_admin:
        q = q.where(table.tenant == who.tenant)
    if after:
        if len(after) > MAX_CURSOR_CHARS:  # no id is this long: not worth a query, nor echoing back
            raise ApiError(422, "invalid_request", f"unknown cursor ({len(after)} characters)", "after")
        cursor = s.scalar(select(table.seq).where(table.id == after))
        if cursor is None:
            raise ApiError(422, "invalid_request", f"unknown cursor {after!r}", "after")
        q = q.where(table.seq < cursor)
    rows = list(s.scalars(q.order_by(table.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def add_read_routes(router: APIRouter, table, kind: str, to_out: Callable, out_model: type[BaseModel],
                    list_item: Callable | None = None) -> None:
    """GET "" (the caller's rows, newest first, a page at a time) and GET "/{<kind>_id}" (one row,
    404 unless the caller's): the reads every stored resource has, written once. `list_item`: how
    a row is shown in the list when not as `to_out` (a webhook's secret is shown only one at a time)."""
    list_item = list_item or to_out

    def list_rows(limit: int = Query(20, ge=1, le=100), after: str | None = None,
                  ctx: Context = Depends(get_ctx), who: auth.Principal = Depends(principal)):
        with ctx.db.session() as s:
            rows, more = paginate(s, table, who, limit, after)
            return ListOut(data=[list_item(r) for r in rows], has_more=more)

    def get_row(ctx: Context = Depends(get_ctx), who: auth.Principal = Depends(principal), **ids: str):
        with ctx.db.session() as s:
            return to_out(get_owned(s, table, ids[f"{kind}_id"], who, kind))

    # the path parameter keeps its resource's name ({dataset_id}, ...), in the OpenAPI document too
    id_param = inspect.Parameter(f"{kind}_id", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)
    rest = [p for p in inspect.signature(get_row).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    get_row.__signature__ = inspect.Signature([id_param, *rest])
    router.add_api_route("", list_rows, methods=["GET"], response_model=ListOut, name=f"list_{kind}s")
    router.add_api_route(f"/{{{kind}_id}}", get_row, methods=["GET"], response_model=out_model, name=f"get_{kind}")


def delete_unused(ctx: Context, who: auth.Principal, table, id_: str, kind: str, used_by) -> None:
    """Delete the caller's row (404 as get_owned) unless a queued or running job or search uses it
    (409; `used_by`: the Job condition). Under the lock no job can be created for it between the check
    and the delete."""
    with ctx.db.locked_session() as s:
        row = get_owned(s, table, id_, who, kind)
        if not ctx.db.lock_rows(s, table, [id_], exclusive=True):  # deleted meanwhile
            raise not_found(kind, id_)
        search = s.query(Search.id).filter(Search.status.in_(("queued", "running")),
                                           (Search.teacher_id == id_) | (Search.dataset_id == id_)).first()
        if search:  # its next trials will need it
            raise ApiError(409, "conflict", f"search {search[0]} is using this {kind}; cancel it or wait for it to end")
        busy = s.query(Job.id).filter(used_by, Job.status.in_(("queued", "running"))).first()
        if busy:
            raise ApiError(409, "conflict", f"job {busy[0]} is using this {kind}; cancel it or wait for it to end")
        s.delete(row)


def check_storage(ctx: Context, who: auth.Principal, incoming: int) -> None:
    """413 when this upload would take the tenant past KDSERVE_TENANT_MAX_STORAGE_BYTES. It reads
    the database: async routes call it in the thread pool."""
    used = tenant_storage_bytes(ctx.db, who.tenant)
    limit = ctx.settings.tenant_max_storage_bytes
    if used + incoming > limit:
        raise ApiError(413, "payload_too_large", f"tenant {who.tenant!r} stores {used} bytes; this upload of "
                       f"{incoming} would pass its {limit}-byte quota; delete teachers, datasets or models first",
                       "file")


def tenant_storage_bytes(db: Database, tenant: str) -> int:
    with db.session() as s:
        used = sum(s.scalars(select(func.coalesce(func.sum(t.size_bytes), 0)).where(t.tenant == tenant)).one()
                   for t in (Teacher, Dataset))
        for card in s.scalars(select(Model.card).where(Model.tenant == tenant)):
            used += ModelCard.of(card).stored_bytes()
    return int(used)


def parse_json_form(value: str | None, param: str) -> Any:
    if value is None or value == "":
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ApiError(422, "invalid_request", f"{param} must be JSON", param)
