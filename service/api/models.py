"""/v1/models: the distilled students, their cards, and downloads (ETag = sha256, Range → 206)."""

from __future__ import annotations

import math
import os
import re
import time

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from starlette.concurrency import run_in_threadpool

from kdserve.service.serving import text as text_serving
from kdserve.service.api.deps import (Context, add_read_routes, body_openapi, get_ctx, get_owned, json_body, key_check,
                                      principal, serving)
from kdserve.service import metrics
from kdserve.service.bodies import check_rows
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError, not_found
from kdserve.service.filenames import content_disposition, safe_basename
from kdserve.service.model_card import ModelCard, StoredArtifact, StoredBundle
from kdserve.service.schemas import EvaluationOut, ModelEvaluate, ModelOut, ModelPatch, PredictIn, PredictOut
from kdserve.service.serving.v2 import Serving, TensorError, check_finite, to_array, to_model_input
from kdserve.service.serving import evaluate as evaluation
from kdserve.service.store.datasets import TextParsed, load_canonical
from kdserve.service.store.db import Dataset, Model
from kdserve.service.usage import snippets

router = APIRouter(prefix="/v1/models", tags=["models"])


def to_out(row: Model) -> ModelOut:
    card = ModelCard.of(row.card)
    return ModelOut(id=row.id, name=row.name, job_id=row.job_id, created_at=row.created_at,
                    usage=snippets(row.id, row.name, card), **card.served())


add_read_routes(router, Model, "model", to_out, ModelOut)


# At most 19 digits: any byte offset fits, and a value of thousands of digits is refused before
# Python's int() (which gives up past 4300 digits) or the file system sees it.
_RANGE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")
# A download in progress asks whether its key still works at most this often (deps.key_check).
KEY_CHECK_EVERY_S = 0.25


@router.get("/{model_id}/download")
def download_model(request: Request, model_id: str, format: str = Query("onnx"), precision: str = Query("fp32"),
                   ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        row = get_owned(s, Model, model_id, who, "model")
    # `bundles`: text students' zips (model.onnx + tokenizer/), one per precision (format=zip)
    files = ModelCard.of(row.card).files()
    artifact = next((a for a in files if a.format == format and a.precision == precision), None)
    if artifact is None:
        have = [f"{a.format}/{a.precision}" for a in files]
        raise ApiError(404, "not_found", f"model {model_id} has no {format}/{precision} artifact; it has {have}", "precision")
    # Served from blobs.local_path() for every store (FastAPI publishes a route's docstring, so this
    # note is a comment): with S3 it is this machine's cached copy, downloaded once and checked
    # against the bucket's ETag on each call, so Range and If-None-Match behave the same and the
    # bucket needs no public or presigned URLs. The file is opened here, before any header is
    # sent: one removed since the card was read is a 404, and one removed while it streams is
    # still read to the end (the open descriptor keeps it).
    f = _open_artifact(ctx, artifact, model_id)
    try:
        return _file_response(request, ctx, f, artifact, f"{safe_basename(row.name) or row.id}.{precision}."
                              f"{'zip' if format == 'zip' else 'onnx'}")
    except BaseException:
        f.close()
        raise


def _open_artifact(ctx: Context, artifact: StoredArtifact | StoredBundle, model_id: str):
    try:
        return open(ctx.blobs.local_path(artifact.blob_key), "rb")
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"the {artifact.format}/{artifact.precision} file of model {model_id} "
                       "is gone from the blob store", "model_id") from None


def _file_response(request: Request, ctx: Context, f, artifact: StoredArtifact | StoredBundle,
                   filename: str) -> Response:
    """200 with the whole file, 206 with the Range asked for, 304 or 416; `f` is closed by the
    response (or here, when no body follows)."""
    size, etag = os.fstat(f.fileno()).st_size, f'"{artifact.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Disposition": content_disposition(filename)}
    if request.headers.get("if-none-match") == etag:
        f.close()
        return Response(status_code=304, headers=headers)
    start, end, status = 0, size - 1, 200
    range_header = request.headers.get("range")
    if range_header and request.headers.get("if-range", etag) == etag:
        match = _RANGE.match(range_header.strip())
        if not match or match.groups() == ("", ""):
            raise ApiError(416, "invalid_range", "unsupported Range header; use bytes=START-[END] (one range, at "
                           "most 19 digits each)")
        start_s, end_s = match.groups()
        if start_s:
            start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
        else:  # suffix range: the last N bytes
            start = max(size - int(end_s), 0)
        if start >= size or start > end:
            f.close()
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(_file_range(f, start, end, key_check(request, ctx)), status_code=status,
                             media_type="application/octet-stream", headers=headers)


def _file_range(f, start: int, end: int, still_valid):
    """Bytes start..end of the open file `f`, then close it. Stops early when the caller's key is
    revoked: the client sees the body end before Content-Length, an incomplete download."""
    with f:
        f.seek(start)
        left, checked = end - start + 1, time.monotonic()
        while left > 0:
            if time.monotonic() - checked > KEY_CHECK_EVERY_S:
                if not still_valid():
                    return
                checked = time.monotonic()
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


@router.post("/{model_id}/predict", response_model=PredictOut, openapi_extra=body_openapi(PredictIn))
async def predict(request: Request, model_id: str, body: PredictIn = Depends(json_body(PredictIn)),
                  precision: str = Query("fp32"), ctx: Context = Depends(get_ctx), who: Principal = Depends(principal),
                  srv: Serving = Depends(serving)):
    """Logits and predicted classes for a batch of samples, each of the model's input shape (or
    flattened to its number of features). Runs in the same batched onnxruntime sessions as /v2."""
    check_rows(len(body.inputs), ctx.settings.max_request_rows, "inputs")
    served = await srv.served(ctx, who, model_id, precision)
    if served.model_id != model_id:  # /v1 names models by id only (resolve also takes names)
        raise not_found("model", model_id)
    t0 = time.perf_counter()
    loaded = await srv.load(served)
    if served.card.is_text:
        return await _predict_text(request, ctx, served, loaded, body, t0)
    info = loaded.inputs[0]
    sample = list(info.shape[1:])
    try:
        x = to_array(body.inputs, "FP64", "inputs")
        if x.ndim == 2 and -1 not in sample and x.shape[1] == math.prod(sample) and len(sample) != 1:
            x = x.reshape(len(x), *sample)  # flattened samples of an image-shaped input
        x = to_model_input(x, info, "inputs")
        outputs = await loaded.infer({info.name: x}, [loaded.output_names[0]])
        check_finite(outputs)
    except TensorError as exc:
        metrics.observe_inference(model_id, protocol="v1", batch_size=0, seconds=0.0, outcome="error")
        raise ApiError(422, "invalid_request", f"{exc}; send a list of samples, each of shape {sample}", "inputs")
    logits = outputs[loaded.output_names[0]]
    answer = classified(logits, served.card.class_names)
    metrics.observe_inference(model_id, protocol="v1", batch_size=len(x), seconds=time.perf_counter() - t0)
    return answer


@router.post("/{model_id}/evaluate", response_model=EvaluationOut, openapi_extra=body_openapi(ModelEvaluate))
async def evaluate_model(model_id: str, body: ModelEvaluate = Depends(json_body(ModelEvaluate)),
                         ctx: Context = Depends(get_ctx), who: Principal = Depends(principal),
                         srv: Serving = Depends(serving)):
    """The student scored on a stored dataset of yours (e.g. a held-out test set): accuracy on its
    labelled rows and the spread of predictions, from the same onnxruntime session /v2 serves."""
    served = await srv.served(ctx, who, model_id, body.precision)
    if served.model_id != model_id:
        raise not_found("model", model_id)
    if served.card.is_text:
        raise ApiError(422, "invalid_request", "text students are scored by their job's card only, for now "
                       "(POST …/predict with texts to check rows of yours)", "model_id")
    with ctx.db.session() as s:
        dataset = get_owned(s, Dataset, body.dataset_id, who, "dataset", "dataset_id")
        blob_key, classes = dataset.blob_key, (dataset.details or {}).get("class_names")
    data = await run_in_threadpool(load_canonical, ctx.blobs.local_path(blob_key))
    if isinstance(data, TextParsed):
        raise ApiError(422, "invalid_request", "a text dataset cannot score a tensor student", "dataset_id")
    y = evaluation.labels_for(served.card, data.y, classes)
    loaded = await srv.load(served)
    try:
        result = await run_in_threadpool(evaluation.evaluate, loaded, served.card, data.x, y)
    except TensorError as exc:
        raise ApiError(422, "invalid_request", str(exc), "dataset_id")
    return EvaluationOut(model_id=model_id, dataset_id=body.dataset_id, precision=served.precision, **result)


def classified(logits, class_names: list[str] | None) -> PredictOut:
    predictions = logits.argmax(axis=1).tolist()
    names = [class_names[i] for i in predictions] if class_names and len(class_names) == logits.shape[1] else None
    return PredictOut(logits=logits.tolist(), predictions=predictions, labels=names)


async def _predict_text(request: Request, ctx: Context, served, loaded, body: PredictIn, t0: float):
    """A text student: `inputs` are strings (and `text_pairs` their second texts), tokenised here
    with the student's tokenizer. Classification → logits and predictions; embeddings → embeddings."""
    try:
        texts = text_serving.strings(body.inputs, "inputs")
        pairs = text_serving.strings(body.text_pairs, "text_pairs") if body.text_pairs is not None else None
        tok = await run_in_threadpool(request.app.state.serving.tokenizers.get, ctx.blobs, served.model_id, served.card)
        feeds = await run_in_threadpool(text_serving.text_feeds, tok, texts, pairs, ctx.settings.max_request_text_chars)
        name = loaded.output_names[0]
        outputs = await loaded.infer(feeds, [name])
        check_finite(outputs)
    except (text_serving.TextInputError, TensorError) as exc:
        metrics.observe_inference(served.model_id, protocol="v1", batch_size=0, seconds=0.0, outcome="error")
        raise ApiError(422, "invalid_request", f"{exc}; send a list of strings", "inputs")
    out = outputs[name]
    if served.card.text.task == "embedding":
        answer = PredictOut(logits=[], predictions=[], embeddings=out.tolist())
    else:
        answer = classified(out, served.card.class_names)
    metrics.observe_inference(served.model_id, protocol="v1", batch_size=len(texts), seconds=time.perf_counter() - t0)
    return answer


@router.patch("/{model_id}", response_model=ModelOut, openapi_extra=body_openapi(ModelPatch))
def rename_model(model_id: str, request: Request, body: ModelPatch = Depends(json_body(ModelPatch)),
                 ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """Rename a model; /v2/models/{name} answers with it from now on (names are not ids: a name
    that looks like a model id would be read as one, so mdl_… is refused)."""
    if body.name.startswith("mdl_"):
        raise ApiError(422, "invalid_request", "a model name cannot start with mdl_ (that is how ids start)", "name")
    with ctx.db.session() as s:
        row = get_owned(s, Model, model_id, who, "model")
        row.name = body.name
        out = to_out(row)
    request.app.state.serving.forget(model_id)  # its old name stops resolving here at once
    return out


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, request: Request, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        s.delete(get_owned(s, Model, model_id, who, "model"))
    request.app.state.serving.forget(model_id)  # stop serving it from memory too (sessions, tokenizer)
    metrics.forget_model(model_id)  # and listing its series on /metrics
    ctx.blobs.delete_prefix(f"models/{model_id}")
    return Response(status_code=204)
