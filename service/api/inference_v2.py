"""Open Inference Protocol v2 (KServe / Triton REST) for published students, run by onnxruntime in
this process (service/serving/runtime.py: session cache + dynamic batching; service/serving/v2.py: what
a request means, tensors in and out). docs/api.md#open-inference-protocol-v2.

    GET  /v2/health/live                      200 while the process serves (no key: a probe)
    GET  /v2/health/ready                     200 when the database answers, else 503 (no key: a probe)
    GET  /v2                                  server metadata
    GET  /v2/models/{model}[/versions/{v}]    model metadata: name, versions, platform, inputs, outputs
    GET  /v2/models/{model}[/versions/{v}]/ready
    POST /v2/models/{model}[/versions/{v}]/infer

`{model}` is a model id (`mdl_…`) or a model name (the caller's newest model of that name). A
version is an artifact precision (`fp32`, `int8`, `fp16`); without one, fp32 is served. Everything
but the two health probes needs `Authorization: Bearer <key>` like /v1 (probes cannot send one),
and another tenant's model answers 404. Errors are `{"error": "<message>"}` (service/errors.py
gives /v2 paths this shape): 400 for a bad request (shape, datatype, values), 401 without a valid
key, 404 for an unknown model or version.

Tensors are JSON: FP32, FP64, INT64, INT32 and BOOL, `data` flat (row-major) or nested to the
shape. Values are converted to the model input's type when that is lossless in meaning (any number
to a float input; integers to an integer input); NaN and infinities are refused. The binary tensor
data extension (raw little-endian tensors after a JSON header, service/serving/v2_binary.py) is accepted for
inputs and, on request, used for outputs.

A text student (its card has `text`) also takes a BYTES tensor `text` (and `text_pair` when it was
trained on pairs): the strings are tokenised here with the student's own tokenizer
(service/serving/text.py) into its `input_ids` and `attention_mask`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any, Callable

import numpy as np
import pydantic_core
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kdserve.service import bodies, metrics
from kdserve.service.api.deps import Context, authenticate, body_openapi, serving
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.serving import text as text_serving
from kdserve.service.serving import v2_binary
from kdserve.service.serving.runtime import rows_of
from kdserve.service.serving.v2 import (InferRequest, Served, Serving, TensorError, attach_binary, bad_request,
                                        check_finite, classification_output, decode_inputs, encode_output,
                                        model_metadata)
from kdserve.service.settings import Settings

router = APIRouter(prefix="/v2", tags=["inference (Open Inference Protocol v2)"])
log = logging.getLogger("kdserve.api")

# Dependencies of the /v2 routes are coroutines: FastAPI runs a plain `def` dependency (like
# deps.get_ctx) in a worker thread, and those hand-offs cost more than a small model's inference.


async def context(request: Request) -> Context:
    return request.app.state.ctx


async def caller(request: Request, ctx: Context = Depends(context), srv: Serving = Depends(serving)) -> Principal:
    """The caller, checked by deps.authenticate exactly as on /v1 (in a worker thread: it reads the
    database), memoised per Authorization header for KDSERVE_AUTH_CACHE_S (keyed by its sha256, so
    the memo holds no key); this memo is the only cache on the way."""
    memo_key = hashlib.sha256(request.headers.get("authorization", "").encode()).digest()
    return await srv.callers.get(memo_key, lambda: authenticate(request, ctx, cached=False))


# The infer body is read by pydantic's own JSON parser, not FastAPI's (`json.loads`, then
# validation): for a request of 64 rows × 64 floats that is 0.14 ms instead of 1.3 ms of the event
# loop's time, which is most of what serving such a request costs; one over 64 KiB is parsed in a
# child process (service/bodies.py). The OpenAPI document still describes the body (openapi_extra
# below, the schemas added by service/openapi.py).
INFER_BODY_OPENAPI = body_openapi(InferRequest)


async def infer_body(request: Request, settings: Settings) -> InferRequest:
    """The request's tensors: read up to KDSERVE_MAX_REQUEST_BYTES (413), the JSON (header) parsed
    and validated (400), binary tensors attached, at most KDSERVE_MAX_REQUEST_ROWS rows (413).
    Called once the caller's key has been checked."""
    header_length = request.headers.get(v2_binary.HEADER)
    if header_length is None and not bodies.is_json(request):
        raise bad_request(f"the request body must be JSON (Content-Type: application/json), not "
                          f"{request.headers.get('content-type')!r}, "
                          "or a JSON header and binary tensors with an Inference-Header-Content-Length header")
    try:
        header, blob = v2_binary.split_body(await bodies.read(request, settings.max_request_bytes), header_length)
        body = await request.app.state.parser.parse(InferRequest, header)
        bodies.check_rows(body.rows, settings.max_request_rows)
        attach_binary(body, blob, header_length is not None)
    except v2_binary.BinaryError as exc:
        raise bad_request(str(exc)) from None
    return body


def json_response(content: Any) -> Response:
    """pydantic-core's serializer: ~10× faster than json.dumps on the long float lists of outputs."""
    return Response(pydantic_core.to_json(content), media_type="application/json")


async def _text_feeds(srv: Serving, served: Served, body: InferRequest, ctx: Context) -> dict[str, np.ndarray]:
    """A text student sent BYTES `text` (and `text_pair`): tokenised with the student's own
    tokenizer (service/serving/text.py), into its input_ids and attention_mask, in a worker thread
    (the tokenizer releases the GIL) within the request's character budget."""
    try:
        tok = srv.tokenizers.get(ctx.blobs, served.model_id, served.card) if srv.tokenizers.cached(served.model_id) \
            else await run_in_threadpool(srv.tokenizers.get, ctx.blobs, served.model_id, served.card)
        return await run_in_threadpool(text_serving.v2_text_feeds, tok, body.inputs,
                                       served.card.text.text_pairs, ctx.settings.max_request_text_chars)
    except text_serving.TextInputError as exc:
        raise bad_request(str(exc)) from None


# ---- routes -----------------------------------------------------------------------------------


@router.get("/health/live")
def live():
    return {"live": True}


@router.get("/health/ready")
async def ready(ctx: Context = Depends(context)):
    try:
        await run_in_threadpool(ctx.db.ping)
    except Exception as exc:
        return JSONResponse({"error": f"not ready: database unreachable: {type(exc).__name__}"}, status_code=503)
    return {"ready": True}


@router.get("")
def server_metadata(request: Request, _: Principal = Depends(caller)):
    return {"name": "kdserve", "version": request.app.version, "extensions": ["classification"]}


@router.get("/models/{model}")
async def metadata(model: str, ctx: Context = Depends(context), who: Principal = Depends(caller),
                   srv: Serving = Depends(serving)):
    return model_metadata(await srv.served(ctx, who, model))


@router.get("/models/{model}/versions/{version}")
async def metadata_version(model: str, version: str, ctx: Context = Depends(context),
                           who: Principal = Depends(caller), srv: Serving = Depends(serving)):
    return model_metadata(await srv.served(ctx, who, model, version))


async def _ready(srv: Serving, ctx: Context, who: Principal, model: str, version: str | None):
    served = await srv.served(ctx, who, model, version)
    await srv.load(served)  # 503 with the reason when the file cannot be loaded
    return {"name": served.name, "version": served.precision, "ready": True}


@router.get("/models/{model}/ready")
async def model_ready(model: str, ctx: Context = Depends(context), who: Principal = Depends(caller),
                      srv: Serving = Depends(serving)):
    return await _ready(srv, ctx, who, model, None)


@router.get("/models/{model}/versions/{version}/ready")
async def model_version_ready(model: str, version: str, ctx: Context = Depends(context),
                              who: Principal = Depends(caller), srv: Serving = Depends(serving)):
    return await _ready(srv, ctx, who, model, version)


async def _infer(srv: Serving, ctx: Context, who: Principal, model: str, version: str | None,
                 body: InferRequest) -> Response:
    t0 = time.perf_counter()
    served = await srv.served(ctx, who, model, version)
    try:
        answer, rows = await _run_infer(srv, served, body, ctx)
    except ApiError:
        metrics.observe_inference(served.model_id, protocol="v2", batch_size=0, seconds=0.0, outcome="error")
        raise
    response = answer if isinstance(answer, Response) else json_response(answer)
    metrics.observe_inference(served.model_id, protocol="v2", batch_size=rows, seconds=time.perf_counter() - t0)
    return response


async def _run_infer(srv: Serving, served: Served, body: InferRequest, ctx: Context) -> tuple[dict | Response, int]:
    loaded = await srv.load(served)
    if served.card.is_text and any(t.datatype == "BYTES" for t in body.inputs):
        feeds = await _text_feeds(srv, served, body, ctx)
    else:
        feeds = decode_inputs(body, loaded)
    names = [o.name for o in body.outputs] if body.outputs else loaded.output_names
    unknown = [n for n in names if n not in loaded.output_names]
    if unknown:
        raise bad_request(f"unknown output(s) {unknown}; the model's outputs are {loaded.output_names}")
    outputs = await loaded.infer(feeds, names)
    try:
        check_finite(outputs)
    except TensorError as exc:
        raise bad_request(str(exc)) from None
    info = {t.name: t for t in loaded.outputs}
    answer: dict[str, Any] = {"model_name": served.name, "model_version": served.precision}
    if body.id is not None:
        answer["id"] = body.id
    own = {o.name: o.parameters or {} for o in body.outputs or []}
    classify = {n: own[n]["classification"] for n in names if "classification" in own.get(n, {})}
    binary = [n for n in names if n not in classify and v2_binary.wants_binary(body.parameters, own.get(n))]
    answer["outputs"] = [classification_output(n, outputs[n], classify[n], served.card.class_names) if n in classify
                         else encode_output(n, outputs[n], info[n], binary=n in binary) for n in names]
    rows = rows_of(feeds)
    if not binary:
        return answer, rows
    header = pydantic_core.to_json(answer)  # then each binary output's bytes, in the order listed
    blobs = b"".join(v2_binary.encode(outputs[n], info[n].datatype) for n in binary)
    return Response(header + blobs, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))}), rows


# The infer routes read their caller and body by calling caller and infer_body, not through
# Depends: FastAPI solves every dependency of a request by introspection, and the seven of these
# routes (nested) cost a small model's request more event-loop time than decoding its body. The key
# is checked first: a request without a valid one is answered 401 with its body unread.


@router.post("/models/{model}/infer", openapi_extra=INFER_BODY_OPENAPI)
async def infer(model: str, request: Request):
    return await _infer_request(request, model, None)


@router.post("/models/{model}/versions/{version}/infer", openapi_extra=INFER_BODY_OPENAPI)
async def infer_version(model: str, version: str, request: Request):
    return await _infer_request(request, model, version)


async def _infer_request(request: Request, model: str, version: str | None) -> Response:
    srv, ctx = await serving(request), await context(request)
    who = await caller(request, ctx, srv)
    return await _infer(srv, ctx, who, model, version, await infer_body(request, ctx.settings))


# ---- the direct path for infer requests -------------------------------------------------------

# What the two infer routes match (Starlette's `{model}` is `[^/]+`, the path already %-decoded).
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


async def infer_direct(app: Any, scope: dict, receive: Callable, send: Callable) -> bool:
    """Answer POST /v2/models/{model}[/versions/{version}]/infer without FastAPI's router and
    middleware; False (having touched nothing) for any other request, or before start-up is done.

    The infer routes above stay in the router and in the OpenAPI document; this is the same
    function (`_infer_request`) reached without what the router adds per request: matching the
    path against the included routers and their routes, solving the route's parameters, an exit
    stack and two middleware layers — together about a third of the API process's time for a
    small model's request (bench/results/serving.md). Errors go through the
    app's own exception handlers (service/errors.py), so every answer is what the route would give:
    the same bodies, codes and headers, the same log line for an unexpected error."""
    match = INFER_PATH.fullmatch(scope["path"])
    if match is None or getattr(app.state, "serving", None) is None:
        return False
    scope["app"] = app  # what Starlette sets before routing (Request.app reads it)
    request = Request(scope, receive)
    try:
        response = await _infer_request(request, match[1], match[2])
    except ClientDisconnect:  # the client went away before its body arrived: nobody to answer
        return True
    except Exception as exc:
        handler = next((app.exception_handlers[c] for c in type(exc).__mro__ if c in app.exception_handlers), None)
        if handler is None:
            raise
        response = await handler(request, exc)
    await response(scope, receive, send)
    return True
