"""Open Inference Protocol v2 (KServe / Triton REST) for published students, run by onnxruntime in
this process (service/serving/runtime.py: session cache + dynamic batching). PEERS.md §8 has the shapes.

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

import asyncio
import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Hashable

import numpy as np
import pydantic_core
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kdserve.service.serving.runtime import BatchConfig, LoadedModel, SessionCache, TensorInfo, rows_of
from kdserve.service import bodies, metrics
from kdserve.service.model_card import ModelCard
from kdserve.service.serving import text as text_serving
from kdserve.service.serving import v2_binary
from kdserve.service.api.deps import Context, authenticate, body_openapi
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.settings import Settings
from kdserve.service.store.db import Model

router = APIRouter(prefix="/v2", tags=["inference (Open Inference Protocol v2)"])
log = logging.getLogger("kdserve.api")

PLATFORM = "onnx_onnxv1"
DEFAULT_VERSION = "fp32"
MAX_DIMENSION = 2**31 - 1  # one dimension of a tensor: far past any real batch or feature count
JSON_DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


# ---- the session cache and which file a request means ------------------------------------------


@dataclass(frozen=True)
class Served:
    """A published model's artifact as the runtime needs it."""

    model_id: str
    name: str
    precision: str
    versions: list[str]
    path: Path
    sha256: str
    card: ModelCard

    @property
    def key(self) -> str:
        return f"{self.model_id}:{self.precision}:{self.sha256}"


def find_model(ctx: Context, who: Principal, ref: str) -> Model:
    """The model `ref` names, by id or (the caller's newest) by name; 404 as if absent otherwise."""
    with ctx.db.session() as s:
        row = s.scalar(select(Model).where(Model.id == ref))
        if row is None:
            q = select(Model).where(Model.name == ref)
            if not who.is_admin:
                q = q.where(Model.tenant == who.tenant)
            row = s.scalar(q.order_by(Model.seq.desc()).limit(1))
    if row is None or (row.tenant != who.tenant and not who.is_admin):
        raise ApiError(404, "not_found", f"no model {ref!r} (use a model id or name from GET /v1/models)", "model")
    return row


def resolve(ctx: Context, who: Principal, ref: str, version: str | None = None) -> Served:
    row = find_model(ctx, who, ref)
    card = ModelCard.of(row.card)
    artifacts = card.onnx_artifacts()
    versions = [a.precision for a in artifacts]
    if not versions:
        raise ApiError(404, "not_found", f"model {ref!r} has no ONNX artifact to serve", "model")
    wanted = version or (DEFAULT_VERSION if DEFAULT_VERSION in versions else versions[0])
    artifact = next((a for a in artifacts if a.precision == wanted), None)
    if artifact is None:
        raise ApiError(404, "not_found", f"model {ref!r} has no version {wanted!r}; its versions are {versions}",
                       "version")
    try:
        path = ctx.blobs.local_path(artifact.blob_key)
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"the {wanted} file of model {ref!r} is gone from the blob store", "model")
    return Served(row.id, row.name, wanted, versions, path, artifact.sha256, card)


class Memo:
    """A short-lived memo of blocking lookups (database reads) for the event loop.

    An entry answers from memory for `ttl_s` after its lookup. A lookup runs in a worker thread,
    once per key however many requests want it at the same time: they all await the one in flight.
    Under steady use the entry is looked up again before it expires — the first request that finds
    it in the last REFRESH_FRACTION of its life starts that lookup and answers from memory — so a
    busy key's requests never wait for the database or a thread hand-off. (When an entry simply
    expired, every request that came in before a new one was memoised hopped to a thread of its
    own for the same read, and the requests in flight stalled behind them once per TTL.)

    A lookup that raises (unknown model, refused key) removes the entry and is never memoised;
    the requests waiting for it get its exception."""

    REFRESH_FRACTION = 0.5

    def __init__(self, ttl_s: float, size: int):
        self.ttl_s, self.size = ttl_s, size
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._lookups: dict[Hashable, asyncio.Task] = {}

    async def get(self, key: Hashable, lookup: Callable[[], Any]) -> Any:
        """The memoised value of key, else `lookup()` run in a worker thread."""
        hit = self._entries.get(key)
        if hit is not None:
            left = hit[0] - time.monotonic()
            if left > 0:
                if left < self.ttl_s * self.REFRESH_FRACTION and key not in self._lookups:
                    self._start(key, lookup)  # in the background: this request answers from memory
                return hit[1]
        task = self._lookups.get(key) or self._start(key, lookup)
        return await asyncio.shield(task)  # a caller that goes away does not cancel the others' lookup

    def _start(self, key: Hashable, lookup: Callable[[], Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._lookup(key, lookup))
        self._lookups[key] = task
        # the exception of a background lookup nobody awaits is retrieved here, not logged as lost
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _lookup(self, key: Hashable, lookup: Callable[[], Any]) -> Any:
        try:
            value = await run_in_threadpool(lookup)
        except BaseException:
            self._entries.pop(key, None)
            raise
        finally:
            current = self._lookups.get(key) is asyncio.current_task()
            if current:
                del self._lookups[key]
        if current:  # not dropped meanwhile (drop() discards what a lookup read before it)
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl_s, value)
        return value

    def drop(self, stale: Callable[[Any], bool]) -> None:
        """Forget the entries whose value is stale, and what the lookups in flight will read."""
        for key, (_, value) in list(self._entries.items()):
            if stale(value):
                self._entries.pop(key, None)
        self._lookups.clear()


class Serving:
    """What the API process keeps for inference: the session cache, and two short-lived memos
    (Memo) — which file a (caller, model, version) means, and who an API key belongs to.

    Each memo saves a database round trip and a thread hand-off per request, which together cost a
    small model's request more than its inference. Models live 2 s: a model deleted through this
    process is forgotten at once, one deleted through another API process is served from memory
    for at most RESOLVE_TTL_S, and a newer model given an existing name takes over within it.
    Callers live KDSERVE_AUTH_CACHE_S (0.5 s) and are read past auth's own cache, so a revoked key
    stops working on /v2 within that, as on /v1 (refused keys are never memoised)."""

    RESOLVE_TTL_S = 2.0
    MEMO_SIZE = 4096

    def __init__(self, settings: Settings):
        batching = BatchConfig(enabled=settings.batching, max_size=settings.batch_max_size,
                               max_wait_s=settings.batch_max_wait_ms / 1000)
        self.runtime = SessionCache(settings.model_cache_size, settings.model_cache_bytes,
                                    threads=settings.inference_threads, batching=batching,
                                    on_run=lambda key, rows: metrics.observe_batch(key.split(":")[0], rows))
        self.resolved = Memo(self.RESOLVE_TTL_S, self.MEMO_SIZE)  # (principal, ref, version) → Served
        self.tokenizers = text_serving.TextTokenizers()  # text students: their tokenizers, for BYTES inputs
        self.callers = Memo(settings.auth_cache_s, self.MEMO_SIZE)  # sha256 of the Authorization header → Principal

    async def served(self, ctx: Context, who: Principal, ref: str, version: str | None = None) -> Served:
        return await self.resolved.get((who, ref, version), lambda: resolve(ctx, who, ref, version))

    async def load(self, served: Served) -> LoadedModel:
        loaded = self.runtime.peek(served.key)
        if loaded is None:  # first use: read the file in a thread, the event loop keeps serving
            try:
                loaded = await run_in_threadpool(self.runtime.get, served.key, served.path)
            except Exception as exc:  # a missing or damaged file in the store: this model is not servable now
                log.error("cannot load %s from %s: %s", served.key, served.path, exc)
                raise ApiError(503, "unavailable", f"model {served.name!r} ({served.precision}) cannot be loaded: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return loaded

    def forget(self, model_id: str) -> None:
        """A deleted model: drop its memo entries and its sessions."""
        self.resolved.drop(lambda served: served.model_id == model_id)
        self.runtime.evict(f"{model_id}:")
        self.tokenizers.forget(model_id)

    def preload(self, ctx: Context) -> list[str]:
        """Load KDSERVE_PRELOAD_MODELS (`mdl_…` or `mdl_…:precision`, comma-separated) at start, so
        the first request does not pay for reading the file. A listed model that is missing is
        logged and skipped: the service still starts."""
        loaded = []
        operator = Principal("", is_admin=True)
        for item in filter(None, (s.strip() for s in ctx.settings.preload_models.split(","))):
            ref, _, version = item.partition(":")
            try:
                served = resolve(ctx, operator, ref, version or None)
                self.runtime.get(served.key, served.path)
                loaded.append(served.key)
            except Exception as exc:
                log.warning("KDSERVE_PRELOAD_MODELS: cannot load %r: %s", item, exc)
        return loaded

    def close(self) -> None:
        self.runtime.close()


# Dependencies of the /v2 routes are coroutines: FastAPI runs a plain `def` dependency (like
# deps.get_ctx) in a worker thread, and those hand-offs cost more than a small model's inference.


async def serving(request: Request) -> Serving:
    return request.app.state.serving


async def context(request: Request) -> Context:
    return request.app.state.ctx


async def caller(request: Request, ctx: Context = Depends(context), srv: Serving = Depends(serving)) -> Principal:
    """The caller, checked by deps.authenticate exactly as on /v1 (in a worker thread: it reads the
    database), memoised per Authorization header for KDSERVE_AUTH_CACHE_S (keyed by its sha256, so
    the memo holds no key); this memo is the only cache on the way."""
    memo_key = hashlib.sha256(request.headers.get("authorization", "").encode()).digest()
    return await srv.callers.get(memo_key, lambda: authenticate(request, ctx, cached=False))


# ---- JSON tensors ---------------------------------------------------------------------------


class TensorError(ValueError):
    """A tensor that cannot be what the model expects; the message says what is wrong."""


def to_array(data: Any, datatype: str, label: str) -> np.ndarray:
    """JSON values → a numpy array of the datatype, refusing what would silently change meaning:
    strings, nulls, ragged nesting, fractions in an integer tensor, numbers in a BOOL tensor,
    NaN/Infinity (Python's JSON reader accepts those literals)."""
    if datatype not in JSON_DATATYPES:
        raise TensorError(f"{label}: datatype {datatype!r} is not supported as JSON; use one of "
                          f"{sorted(JSON_DATATYPES)} (FP16 has no JSON form)")
    try:
        raw = np.array(data)
    except ValueError as exc:
        raise TensorError(f"{label}: data is not a rectangular array of numbers ({exc})") from None
    if datatype == "BOOL":
        if raw.size and raw.dtype.kind != "b":
            raise TensorError(f"{label}: BOOL data must be true/false values")
        return raw.astype(np.bool_)
    if raw.size and raw.dtype.kind not in "iuf":
        if raw.dtype.kind == "b":
            raise TensorError(f"{label}: {datatype} data must be numbers, not true/false")
        raise TensorError(f"{label}: {datatype} data must be numbers (got {_kind_name(raw)})")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise TensorError(f"{label}: data contains NaN or Infinity")
    if datatype.startswith("INT") and raw.dtype.kind == "f":
        if not np.array_equal(raw, np.floor(raw)):
            raise TensorError(f"{label}: {datatype} data must be integers")
    out = raw.astype(JSON_DATATYPES[datatype])
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise TensorError(f"{label}: a value overflows {datatype}")
    return out


def _kind_name(raw: np.ndarray) -> str:
    return {"U": "strings", "S": "strings", "O": "nulls or mixed values"}.get(raw.dtype.kind, str(raw.dtype))


def fit_shape(arr: np.ndarray, shape: list[int], label: str) -> np.ndarray:
    """Nested data must have the declared shape; flat data must have its number of elements."""
    if list(arr.shape) == list(shape):
        return arr
    count = math.prod(shape)
    if arr.ndim == 1 and arr.size == count:
        return arr.reshape(shape)
    if arr.ndim == 1 or arr.ndim == len(shape):
        raise TensorError(f"{label}: data has {arr.size} values in shape {list(arr.shape)}, but shape {shape} needs "
                          f"{count}")
    raise TensorError(f"{label}: nested data has shape {list(arr.shape)}, the declared shape is {shape}")


def to_model_input(arr: np.ndarray, info: TensorInfo, label: str) -> np.ndarray:
    """Check a decoded tensor against the model's input (rank, fixed dims, batch ≥ 1) and convert
    it to the input's type."""
    if arr.ndim != len(info.shape):
        raise TensorError(f"{label}: shape {list(arr.shape)} has rank {arr.ndim}; the model's input "
                          f"{info.name!r} has shape {list(info.shape)} (-1 = any size)")
    for i, (got, want) in enumerate(zip(arr.shape, info.shape)):
        if want >= 0 and got != want:
            raise TensorError(f"{label}: dimension {i} is {got}, the model's input {info.name!r} needs {want} "
                              f"(shape {list(info.shape)}, -1 = any size)")
    if arr.shape and arr.shape[0] == 0:
        raise TensorError(f"{label}: the batch dimension is 0; send at least one sample")
    want = info.dtype
    if arr.dtype == want:
        return np.ascontiguousarray(arr)
    if want.kind == "f" and arr.dtype.kind in "iuf":
        out = arr.astype(want)
        if not np.isfinite(out).all():
            raise TensorError(f"{label}: a value overflows the model's {info.datatype} input")
        return np.ascontiguousarray(out)
    if want.kind in "iu" and arr.dtype.kind in "iu":
        return np.ascontiguousarray(arr.astype(want))
    raise TensorError(f"{label}: datatype {_datatype_of(arr)} cannot feed the model's {info.datatype} input "
                      f"{info.name!r}")


def _datatype_of(arr: np.ndarray) -> str:
    return next((k for k, v in JSON_DATATYPES.items() if np.dtype(v) == arr.dtype), str(arr.dtype))


def check_finite(outputs: dict[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise TensorError(f"the model produced NaN or Infinity in output {name!r} for this input (inputs far "
                              "outside the training data?); JSON cannot carry those values")


# ---- request and response bodies --------------------------------------------------------------


class InferInput(BaseModel):
    name: str
    # Bounded here, before numpy sees it: a dimension past int64 (`[0, 1e20]`: no elements, so no
    # size check trips) made reshape raise outside the checks below, a 500.
    shape: list[Annotated[int, Field(le=MAX_DIMENSION)]] = Field(
        max_length=64, description=f"full shape, batch first; each dimension in 0..{MAX_DIMENSION}")
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = Field(None, description="row-major values, flat or nested to the shape (absent when the tensor "
                      "is sent as binary data: parameters.binary_data_size)")
    _array: np.ndarray | None = PrivateAttr(None)  # the tensor, when it came as binary data


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="accepted and ignored (none are standardised)")
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(None, description="the outputs to return; default all")

    def pack_numbers(self) -> None:
        """Tensor data as numpy arrays, for the trip back from a parsing child (service/bodies.py);
        to_array() makes of an array what it makes of the list."""
        for tensor in self.inputs:
            tensor.data = bodies.number_array(tensor.data)

    @property
    def rows(self) -> int:
        """The batch size the request declares: the largest first dimension of its inputs, where a
        BYTES tensor's every element is a row (a text)."""
        return max((math.prod(t.shape) if t.datatype == "BYTES" else t.shape[0] for t in self.inputs if t.shape),
                   default=0)


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


def attach_binary(body: InferRequest, blob: bytes, has_header: bool) -> None:
    """Give each input sent as binary data its tensor: numbers as an array, BYTES as strings."""
    offset = 0
    for tensor in body.inputs:
        label = f"input {tensor.name!r}"
        size = v2_binary.binary_size(tensor.parameters, label)
        if size is None:
            continue
        if not has_header:
            raise v2_binary.BinaryError(f"{label} has binary_data_size but the request has no "
                                        "Inference-Header-Content-Length header")
        if tensor.data is not None:
            raise v2_binary.BinaryError(f"{label} has both `data` and binary_data_size; send one")
        if any(d < 0 for d in tensor.shape):
            raise v2_binary.BinaryError(f"{label}: shape {tensor.shape} has a negative dimension")
        if offset + size > len(blob):
            raise v2_binary.BinaryError(f"{label}: binary_data_size {size} runs past the body's "
                                        f"{len(blob)} bytes of binary data")
        value = v2_binary.decode(blob[offset:offset + size], tensor.datatype, tensor.shape, label)
        offset += size
        if isinstance(value, list):
            tensor.data = value  # BYTES: text, as if it had come as JSON strings
        else:
            tensor._array = value
    if offset != len(blob):
        raise v2_binary.BinaryError(f"the body has {len(blob) - offset} bytes of binary data that no input's "
                                    "binary_data_size accounts for")


def json_response(content: Any) -> Response:
    """pydantic-core's serializer: ~10× faster than json.dumps on the long float lists of outputs."""
    return Response(pydantic_core.to_json(content), media_type="application/json")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def decode_inputs(request: InferRequest, model: LoadedModel) -> dict[str, np.ndarray]:
    expected = {t.name: t for t in model.inputs}
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        label = f"input {tensor.name!r}"
        if tensor.name not in expected:
            raise bad_request(f"{label}: the model has no such input; its inputs are {list(expected)}")
        if tensor.name in feeds:
            raise bad_request(f"{label} is given twice")
        if any(d < 0 for d in tensor.shape):
            raise bad_request(f"{label}: shape {tensor.shape} has a negative dimension")
        if tensor.data is None and tensor._array is None:
            raise bad_request(f"{label}: no `data` (and no parameters.binary_data_size for binary data)")
        try:
            if tensor._array is not None:
                arr = tensor._array
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise TensorError(f"{label}: data contains NaN or Infinity")
            else:
                arr = fit_shape(to_array(tensor.data, tensor.datatype, label), tensor.shape, label)
            feeds[tensor.name] = to_model_input(arr, expected[tensor.name], label)
        except TensorError as exc:
            raise bad_request(str(exc)) from None
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise bad_request(f"missing input(s) {missing}; the model's inputs are {list(expected)}")
    batches = {a.shape[0] for a in feeds.values()}
    if len(batches) > 1:
        raise bad_request(f"inputs have different batch sizes {sorted(batches)}")
    return feeds


def encode_output(name: str, value: np.ndarray, info: TensorInfo, binary: bool = False) -> dict:
    out = {"name": name, "shape": list(value.shape), "datatype": info.datatype}
    if binary:  # the bytes follow the JSON header (service/serving/v2_binary.py)
        out["parameters"] = {"binary_data_size": value.size * np.dtype(v2_binary.DTYPES[info.datatype]).itemsize}
    else:
        out["data"] = value.ravel().tolist()
    return out


def model_metadata(served: Served) -> dict:
    card = served.card
    inputs = text_serving.text_inputs_metadata(card) if card.is_text else [card.input.model_dump()]
    return {"name": served.name, "versions": served.versions, "platform": PLATFORM,
            "inputs": inputs, "outputs": [card.output.model_dump()]}


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
    return {"name": "kdserve", "version": request.app.version, "extensions": []}


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
    own = {o.name: o.parameters for o in body.outputs or []}
    binary = [n for n in names if v2_binary.wants_binary(body.parameters, own.get(n))]
    answer["outputs"] = [encode_output(n, outputs[n], info[n], binary=n in binary) for n in names]
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
