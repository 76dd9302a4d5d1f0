"""onnxruntime serving for the API process: a bounded session cache and dynamic batching.

Imports numpy and onnxruntime only, never torch: the API process must stay light and must not be
able to run model code other than an ONNX graph.

    cache = SessionCache(max_models=32, max_bytes=4 << 30, batching=BatchConfig(max_size=64, max_wait_s=0.001))
    model = cache.get("mdl_…:fp32:<sha256>", path)            # loads on first use (blocking: use a thread)
    outputs = await model.infer({"input": x}, ["logits"])      # batched with concurrent callers

Dynamic batching happens on the event loop of the callers: a request is appended to its model's
list and awaits a future. One drain task per model takes up to `max_size` rows at a time; when
the model is idle it first waits up to `max_wait_s` (from the oldest waiting request) for more,
and while `max_in_flight` runs are in progress new requests simply pile up for the next one, so
batches grow with the load. Each run is one session call in a worker thread (onnxruntime
releases the GIL): the event loop never blocks on a model for long, and the only thread hand-off
is one per batch, not one per request. A run expected to take less than that hand-off
(INLINE_BELOW_S, judged from the model's measured cost per row) is done on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

log = logging.getLogger("kdserve.runtime")

# onnxruntime type strings ↔ Open Inference Protocol datatypes ↔ numpy.
ORT_TO_V2 = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(int64)": "INT64",
    "tensor(int32)": "INT32", "tensor(int16)": "INT16", "tensor(int8)": "INT8", "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
V2_TO_NUMPY = {
    "FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
    "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "BOOL": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # Open Inference Protocol name: FP32, INT64, …
    shape: tuple[int, ...]  # -1 where the graph leaves the dimension free

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(V2_TO_NUMPY[self.datatype]) if self.datatype in V2_TO_NUMPY else np.dtype(object)

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _tensor_info(arg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorInfo(arg.name, ORT_TO_V2.get(arg.type, arg.type), shape)


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic batching knobs; `enabled=False` runs every request on its own."""

    enabled: bool = True
    max_size: int = 64
    max_wait_s: float = 0.001
    # Runs of one model handed to the inference threads at once: two keep both of a small machine's
    # cores busy, and a third waits in the executor's queue, so a thread that finishes a run starts
    # the next at once instead of idling until the event loop (busy with requests under load) gets
    # round to handing it one. More would make batches smaller without using the cores any better.
    max_in_flight: int = 3


# A run is done on the event loop, not in a worker thread, when it is expected to take less than
# this: handing a run to a thread and its answer back costs the event loop about 50-100 µs (a
# queue, a wake-up through the loop's self-pipe, two context switches), more than a small MLP's
# whole batch of 64 rows. The expectation is the model's smoothed seconds per row (over all its
# runs, one-row runs included, so it overestimates the per-row cost of a large batch) times the
# rows; until a model has run once, its runs go to a thread.
INLINE_BELOW_S = 0.0002
ROW_COST_SMOOTHING = 0.1  # weight of the newest run in the smoothed per-row cost


def rows_of(feeds: dict[str, np.ndarray]) -> int:
    """A request's batch size: the first dimension of its (first) input."""
    return len(next(iter(feeds.values())))


def model_size(path: Path) -> int:
    """Bytes of the .onnx file and any external-data file next to it (what the weights cost in
    memory, roughly: onnxruntime holds them once, plus arenas the cache cannot see)."""
    path = Path(path)
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def inference_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The threads session calls run in: one per core. More would only oversubscribe the CPU
    (each session call is multi-threaded itself); requests beyond that wait their turn."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                                              thread_name_prefix="kdserve-infer")
        return _EXECUTOR


class LoadedModel:
    """One onnxruntime session, its tensor metadata and, if batchable, its batcher."""

    def __init__(self, key: str, path: Path, *, threads: int = 0, batching: BatchConfig = BatchConfig(),
                 on_run: Callable[[str, int], None] | None = None):
        self.key, self.path = key, Path(path)
        self._on_run = on_run
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        # Idle intra-op threads sleep instead of spinning: they share the cores with the event loop
        # that feeds them, and a spinning thread took a core from it after every run.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts, providers=_providers())
        self.inputs = [_tensor_info(a) for a in self.session.get_inputs()]
        self.outputs = [_tensor_info(a) for a in self.session.get_outputs()]
        self.output_names = [o.name for o in self.outputs]
        self.size_bytes = model_size(self.path)
        self.providers = list(self.session.get_providers())
        # Rows of different requests can only be stacked when every tensor is batch-major.
        self.batchable = all(t.shape and t.shape[0] == -1 for t in [*self.inputs, *self.outputs])
        self.batcher = Batcher(self, batching) if batching.enabled and self.batchable else None
        self.row_seconds: float | None = None  # smoothed seconds per row of this model's runs (run_async)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session call, all outputs, in the calling thread."""
        rows = rows_of(feeds)
        t0 = time.perf_counter()
        values = self.session.run(self.output_names, feeds)
        per_row = (time.perf_counter() - t0) / max(rows, 1)
        self.row_seconds = per_row if self.row_seconds is None else \
            self.row_seconds + ROW_COST_SMOOTHING * (per_row - self.row_seconds)
        if self._on_run is not None:
            self._on_run(self.key, rows)
        return dict(zip(self.output_names, values))

    def runs_inline(self, rows: int) -> bool:
        """Whether a run of `rows` is expected to take less than handing it to a thread would
        (INLINE_BELOW_S): such a run is done on the event loop itself."""
        return self.row_seconds is not None and self.row_seconds * rows < INLINE_BELOW_S

    async def run_async(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """run() without blocking the event loop for longer than INLINE_BELOW_S: in a worker
        thread (onnxruntime releases the GIL), unless the run is cheaper than that hand-off."""
        if self.runs_inline(rows_of(feeds)):
            return self.run(feeds)
        return await asyncio.get_running_loop().run_in_executor(inference_executor(), self.run, feeds)

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run a request without blocking the event loop (batched with concurrent ones when
        batching is on); `outputs` selects which to return (default: all)."""
        if self.batcher is not None:
            result = await self.batcher.infer(feeds)
        else:
            result = await self.run_async(feeds)
        return {n: result[n] for n in (outputs or self.output_names)}


def _providers() -> list[str]:
    # CUDA when this API process has onnxruntime-gpu and a device; onnxruntime falls back to the CPU
    # by itself when the CUDA provider cannot start, and LoadedModel.providers says what it took.
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


@dataclass
class _Request:
    feeds: dict[str, np.ndarray]
    future: asyncio.Future
    rows: int
    signature: tuple  # requests with equal signatures can be concatenated
    arrived: float


@dataclass
class _Queue:
    """A model's waiting requests on one event loop."""

    pending: list[_Request] = field(default_factory=list)
    rows: int = 0
    full: asyncio.Event = field(default_factory=asyncio.Event)
    drain: asyncio.Task | None = None
    running: set[asyncio.Task] = field(default_factory=set)  # runs in progress
    slot: asyncio.Event = field(default_factory=asyncio.Event)  # set when a run ends


class Batcher:
    """Dynamic batching for one model (see the module docstring).

    A request of `max_size` rows or more runs alone, at once; requests whose per-sample shapes or dtypes differ
    from the first waiting one go in a later run. State is kept per event loop, so the same model
    serves callers on any loop (the API has one)."""

    def __init__(self, model: LoadedModel, config: BatchConfig):
        self.model, self.config = model, config
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = weakref.WeakKeyDictionary()
        self.batches = 0  # counters, for tests and the benchmark
        self.requests = 0

    async def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = rows_of(feeds)
        if rows >= self.config.max_size:  # a full batch on its own: nothing to wait for or to join
            result = await self.model.run_async(feeds)
            self.batches += 1
            self.requests += 1
            return result
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        signature = tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items()))
        request = _Request(feeds, loop.create_future(), rows, signature, loop.time())
        queue.pending.append(request)
        queue.rows += rows
        if queue.rows >= self.config.max_size:
            queue.full.set()
        if queue.drain is None or queue.drain.done():
            queue.drain = loop.create_task(self._drain(queue))
        return await request.future

    async def _drain(self, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.pending:
                if len(queue.running) >= self.config.max_in_flight:
                    queue.slot.clear()
                    await queue.slot.wait()
                    continue
                wait = queue.pending[0].arrived + self.config.max_wait_s - loop.time()
                if queue.rows < self.config.max_size and wait > 0:
                    queue.full.clear()
                    try:
                        await asyncio.wait_for(queue.full.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                run = loop.create_task(self._run(self._take(queue)))
                queue.running.add(run)
                run.add_done_callback(lambda task: (queue.running.discard(task), queue.slot.set()))
        except BaseException as exc:  # a bug or a cancelled loop: no request may wait forever
            for r in queue.pending:
                if not r.future.done():
                    r.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("batcher stopped"))
            queue.pending.clear()
            queue.rows = 0
            raise

    def _take(self, queue: _Queue) -> list[_Request]:
        first = queue.pending[0]
        batch, rest, rows = [], [], 0
        for r in queue.pending:
            if r.signature == first.signature and (not batch or rows + r.rows <= self.config.max_size):
                batch.append(r)
                rows += r.rows
            else:
                rest.append(r)
        queue.pending[:] = rest
        queue.rows -= rows
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]  # a caller that went away was cancelled
        if not live:
            return
        feeds = live[0].feeds if len(live) == 1 else {
            name: np.concatenate([r.feeds[name] for r in live]) for name in live[0].feeds}
        try:
            out = await self.model.run_async(feeds)
        except Exception as exc:  # a failing run fails its requests, never the batcher
            for r in live:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        start = 0
        for r in live:
            if not r.future.done():
                r.future.set_result({n: v[start : start + r.rows] for n, v in out.items()})
            start += r.rows
        self.batches += 1
        self.requests += len(live)


@dataclass
class _Slot:
    """A cache entry being loaded (so concurrent first requests load a file once)."""

    ready: threading.Event = field(default_factory=threading.Event)
    model: LoadedModel | None = None
    error: BaseException | None = None


class SessionCache:
    """Loaded models, least recently used dropped first once there are more than `max_models` or
    their files exceed `max_bytes` together. A model bigger than `max_bytes` on its own is still
    loaded (it must be served); it then is the only one kept.

    Keys are opaque to the cache; the API uses `<model id>:<precision>:<sha256>` so a key never
    names two different files."""

    def __init__(self, max_models: int = 32, max_bytes: int = 4 * 1024**3, *, threads: int = 0,
                 batching: BatchConfig = BatchConfig(), on_run: Callable[[str, int], None] | None = None):
        """on_run(key, rows) is called after every session run (one per dynamic batch): a hook for
        metrics that keeps this module free of the service's imports."""
        self.max_models, self.max_bytes = max_models, max_bytes
        self.threads, self.batching, self.on_run = threads, batching, on_run
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, key: str, path: Path) -> LoadedModel:
        """The loaded model for key, loading `path` on a miss (blocking: call it from a thread)."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            slot = self._loading.get(key)
            owner = slot is None
            if owner:
                slot = self._loading[key] = _Slot()
        if not owner:
            slot.ready.wait()
            if slot.error is not None:
                raise slot.error
            return slot.model  # type: ignore[return-value]
        try:
            slot.model = LoadedModel(key, path, threads=self.threads, batching=self.batching, on_run=self.on_run)
            self.loads += 1
            log.info("loaded %s (%d bytes, %s)", key, slot.model.size_bytes, slot.model.providers[0])
        except BaseException as exc:
            slot.error = exc
            raise
        finally:
            with self._lock:
                self._loading.pop(key, None)
                if slot.model is not None:
                    self._models[key] = slot.model
                    self._evict_over_budget()
            slot.ready.set()
        return slot.model

    def peek(self, key: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(key)

    def _evict_over_budget(self) -> None:
        while len(self._models) > 1 and (len(self._models) > self.max_models or self.total_bytes > self.max_bytes):
            key, _ = self._models.popitem(last=False)
            log.info("evicted %s", key)

    @property
    def total_bytes(self) -> int:
        return sum(m.size_bytes for m in self._models.values())

    def evict(self, prefix: str) -> int:
        """Drop every entry whose key starts with prefix (e.g. a deleted model's id)."""
        with self._lock:
            keys = [k for k in self._models if k.startswith(prefix)]
            for k in keys:
                del self._models[k]
        return len(keys)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def close(self) -> None:
        """Forget every model (requests already holding one finish normally)."""
        with self._lock:
            self._models.clear()
