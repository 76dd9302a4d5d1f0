"""create_app(): the FastAPI application with its routers, error handlers and lifespan.

Run with `uvicorn --factory kdserve.service.app:create_app` (what `kdserve up` does)."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kdserve.service import errors, openapi, sweep
from kdserve.service.bodies import BodyParser
from kdserve.service.api import datasets, inference_v2, jobs, models, ops, teachers
from kdserve.service.api import checkpoints, dashboard, searches, webhooks
from kdserve.service.api import metrics as metrics_api
from kdserve.service.api.deps import Context, load_catalog
from kdserve.service.probe_limits import ProbeLimiter
from kdserve.service.schemas import JobCreate, PredictIn
from kdserve.service.serving.v2 import InferRequest, Memo, Serving
from kdserve.service.queue import enqueue_deliveries, make_celery
from kdserve.service.settings import Settings, get_settings
from kdserve.service.store.blobs import make_blob_store
from kdserve.service.store.db import Database


def freeze_startup_heap() -> None:
    """Exempt what start-up made (imported modules, the app, preloaded models: ~150 k objects)
    from the garbage collector's later full passes.

    CPython's full (generation 2) collection walks every tracked object, and it runs every few
    seconds under load; with the start-up heap in it, each pass held the event loop for 100-150 ms
    on the 2-core benchmark machine, which was the p99 of /v2 infer at every request size (every
    request in flight waited for it). After the freeze, a full pass only walks what was made since
    start-up (about 9 ms there instead of 100-150). Garbage made at start-up is collected first; the
    lifespan unfreezes at shutdown, so an app created and stopped in a longer process (tests) can
    still be collected."""
    gc.collect()
    gc.freeze()


class KdserveApp(FastAPI):
    """FastAPI, with the inference requests answered before the router
    (inference_v2.infer_direct): for a small model, routing and middleware cost a request more
    than its inference. Everything else goes through FastAPI as usual."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and \
                await inference_v2.infer_direct(self, scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.make_data_dir()
        db = Database(settings.resolved_database_url)
        db.migrate()
        ctx = Context(settings=settings, db=db, blobs=make_blob_store(settings), celery=make_celery(settings),
                      catalog={}, probes=ProbeLimiter(settings.probe_max_concurrent, settings.probe_max_per_tenant))
        # webhook deliveries this process writes (a replay, a test, a cancel's event) go to a worker
        db.on_deliveries = lambda ids: enqueue_deliveries(ctx.celery, ids, settings.queue)
        app.state.parser = BodyParser(settings.parse_processes)  # large JSON bodies, in child processes
        app.state.parser.start(InferRequest, PredictIn, JobCreate)
        ctx.catalog = load_catalog()
        app.state.ctx = ctx
        app.state.probes = Memo(settings.probe_cache_s, 8)  # /readyz and /metrics readings
        app.state.serving = Serving(settings)
        preloaded = app.state.serving.preload(ctx)
        logging.getLogger("kdserve.api").info("kdserve API ready: %d methods, %d architectures, %d models preloaded",
                                              len(ctx.catalog["methods"]), len(ctx.catalog["architectures"]),
                                              len(preloaded))
        sweeper = sweep.start_sweeper(settings, ctx.blobs)  # orphaned temp files, now and periodically
        freeze_startup_heap()
        yield
        sweeper.set()
        gc.unfreeze()
        app.state.parser.close()
        ctx.probes.close()
        app.state.serving.close()
        db.engine.dispose()

    # /docs is served by dashboard.py from files in the package (no CDN); ReDoc, which would load
    # its script from a CDN, is off
    app = KdserveApp(title="kdserve", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Knowledge distillation as a service: upload a teacher and data, get a small ONNX student.")
    errors.install(app)
    for router in (ops.router, teachers.router, datasets.router, jobs.router, checkpoints.router, searches.router,
                   models.router, webhooks.router, inference_v2.router):
        app.include_router(router)
    app.include_router(metrics_api.router)  # GET /metrics (Prometheus)
    app.include_router(dashboard.router)    # GET / (the dashboard) and its files under /web
    dashboard.mount_static(app)
    openapi.install(app)  # document the real error shapes
    return app
