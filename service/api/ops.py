"""Discovery and operations: /healthz, /readyz, /v1/methods, /v1/architectures."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Context, get_ctx, principal
from service.auth import Principal
from service.queue import redis_client
from service.schemas import ListOut

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
def readyz(ctx: Context = Depends(get_ctx)):
    checks = {}
    for name, check in (("database", ctx.db.ping), ("blob_store", ctx.blobs.ping),
                        ("broker", lambda: redis_client(ctx.settings.resolved_redis_url).ping())):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503)


@router.get("/v1/methods", response_model=ListOut, tags=["discovery"])
def methods(ctx: Context = Depends(get_ctx), _: Principal = Depends(principal)):
    return ListOut(data=[{"object": "method", **m} for m in ctx.catalog["methods"]], has_more=False)


@router.get("/v1/architectures", response_model=ListOut, tags=["discovery"])
def architectures(ctx: Context = Depends(get_ctx), _: Principal = Depends(principal)):
    return ListOut(data=[{"object": "architecture", **a} for a in ctx.catalog["architectures"]], has_more=False)
