"""The Open Inference Protocol v2 without HTTP: which published file a request means (`resolve`),
the session cache with two short-lived memos (`Serving`, `Memo`), JSON and binary tensors to model
inputs and back, and the request body's types. The routes are in service/api/inference_v2.py;
predict (service/api/models.py) uses the same tensors and cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Hashable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kdserve.service import bodies, metrics
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.model_card import ModelCard
from kdserve.service.serving import text as text_serving
from kdserve.service.serving import v2_binary
from kdserve.service.serving.runtime import BatchConfig, LoadedModel, SessionCache, TensorInfo
from kdserve.service.settings import Settings
from kdserve.service.store.db import Model

if TYPE_CHECKING:
    from kdserve.service.api.deps import Context

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


def classification_output(name: str, value: np.ndarray, k: Any, class_names: list[str] | None) -> dict:
    """Triton's classification extension (an output requested with parameters {"classification":
    k}): each row's k highest classes, best first, as BYTES "score:index" — "score:index:label"
    when the model has class names (the card's class_names)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise bad_request(f"output {name!r}: parameters.classification must be a positive integer, not {k!r}")
    if value.ndim != 2:
        raise bad_request(f"output {name!r} is not a [batch, classes] tensor: it cannot be classified")
    k = min(k, value.shape[1])
    top = np.argsort(-value, axis=1, kind="stable")[:, :k]
    names = class_names if class_names and len(class_names) == value.shape[1] else None
    data = [f"{value[r, i]:g}:{i}" + (f":{names[i]}" if names else "") for r in range(len(value)) for i in top[r]]
    return {"name": name, "shape": [len(value), k], "datatype": "BYTES", "data": data}


def model_metadata(served: Served) -> dict:
    card = served.card
    inputs = text_serving.text_inputs_metadata(card) if card.is_text else [card.input.model_dump()]
    return {"name": served.name, "versions": served.versions, "platform": PLATFORM,
            "inputs": inputs, "outputs": [card.output.model_dump()]}
