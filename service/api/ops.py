"""Discovery and operations: /healthz, /readyz, /v1/methods, /v1/architectures."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from kdserve.service.api.deps import Context, get_ctx, principal
from kdserve.service.auth import Principal
from kdserve.service.queue import redis_client
from kdserve.service.schemas import ListOut

router = APIRouter(tags=["operations"])
log = logging.getLogger("kdserve.api")


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


class NotReady(Exception):
    """A readiness check failed; `checks` names each component `ok` or `error`."""

    def __init__(self, checks: dict[str, str]):
        super().__init__(checks)
        self.checks = checks


def check_ready(ctx: Context) -> dict[str, str]:
    """Each component `ok`, or NotReady. Why one failed goes to the log, not to the caller: the
    endpoint needs no key, and exception text can carry hosts, paths and credentials in URLs."""
    checks = {}
    for name, check in (("database", ctx.db.ping), ("blob_store", ctx.blobs.ping),
                        ("broker", lambda: _ping_redis(ctx.settings.resolved_redis_url))):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            log.warning("readyz: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "error"
    if any(v != "ok" for v in checks.values()):
        raise NotReady(checks)
    return checks


def _ping_redis(url: str) -> None:
    with redis_client(url) as r:
        r.ping()


@router.get("/readyz")
async def readyz(request: Request, ctx: Context = Depends(get_ctx)):
    """200 when the database, blob store and broker answer, else 503; a ready answer is reused for
    KDSERVE_PROBE_CACHE_S (a not-ready one never is, so recovery shows at the next probe)."""
    try:
        checks = await request.app.state.probes.get("ready", lambda: check_ready(ctx))
    except NotReady as exc:
        return JSONResponse({"status": "not_ready", "checks": exc.checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/v1/methods", response_model=ListOut, tags=["discovery"])
def methods(ctx: Context = Depends(get_ctx), _: Principal = Depends(principal)):
    return ListOut(data=[{"object": "method", **m} for m in ctx.catalog["methods"]], has_more=False)


@router.get("/v1/architectures", response_model=ListOut, tags=["discovery"])
def architectures(ctx: Context = Depends(get_ctx), _: Principal = Depends(principal)):
    return ListOut(data=[{"object": "architecture", **a} for a in ctx.catalog["architectures"]], has_more=False)
