"""/v1/teachers: upload (probed in the teacher jail, here or on a worker, before 201), get, list, delete.

An ONNX teacher whose weights live in an external data file (what torch.onnx.export writes for
large models) is uploaded with the data file as a second part, `data`, or as a zip of both; it is
stored as one bundle (service/sandbox/model_files.py) and only ever loaded from a private folder holding
just those files."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from kdserve.service.sandbox import model_files
from kdserve.service.sandbox.jail import sandbox_problem
from kdserve.service.sandbox.probe import run_probe
from kdserve.service.sandbox.sniff import ModelFileError, sniff
from kdserve.service import metrics, uploads, vocab
from kdserve.service.forms import TEACHER_FORM
from kdserve.service.api.deps import (Context, add_read_routes, check_storage, delete_unused, get_ctx, parse_json_form,
                                      principal, uploader)
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.queue import PROBE_TEACHER, probe_queue
from kdserve.service.schemas import TeacherOut
from kdserve.service.settings import Settings
from kdserve.service.store.db import Job, Teacher, new_id
from kdserve.service.vocab import TEACHER_FORMATS

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])

FORMATS = tuple(TEACHER_FORMATS)  # what the loader runs (kdserve.service.vocab)
TASKS = tuple(vocab.TASKS)
_EXT = {"torchscript": ".pt", "onnx": ".onnx", "hf": ".zip"}
# Files the sniff recognises that are not teachers, and what to upload instead.
UNLOADABLE = {"safetensors": "a bare safetensors file holds weights without the model that runs them; upload a zip "
              "of the Hugging Face model folder (config.json, model.safetensors, tokenizer files) as format hf"}
PROBE_QUEUE_WAIT_S = 30.0  # KDSERVE_PROBE=worker: time for the task to reach a free worker, on top of the probe's


def to_out(row: Teacher) -> TeacherOut:
    return TeacherOut(id=row.id, name=row.name, format=row.format, sha256=row.sha256, size_bytes=row.size_bytes,
                      input_shape=row.input_shape, input_dtype=row.input_dtype, num_classes=row.num_classes,
                      num_parameters=row.num_parameters, outputs=row.outputs or [], created_at=row.created_at,
                      details=row.details)


def probe(ctx: Context, path: Path, fmt: str | None, input_shape, task: str | None = None) -> dict:
    """Load and run the file in the teacher jail: a hostile or crashing file cannot hurt the API.
    The sniff (pure Python, nothing unpickled or compiled: pickles and TorchScript operators) runs
    here first, so garbage and unsafe files are refused without starting a process. The jail runs
    next to the API, or on a worker when the API has no torch (KDSERVE_PROBE); the answer, and so
    every 422, is the same either way."""
    try:
        sniffed = sniff(path).format
    except ModelFileError as exc:
        raise ApiError(422, exc.code, exc.message, exc.param)
    if sniffed not in FORMATS:  # recognised, but nothing the loader runs
        raise ApiError(422, "unsupported_format", f"this is a {sniffed} file: {UNLOADABLE.get(sniffed, '')} (teacher "
                       f"formats: {list(FORMATS)})", "file")
    if probe_mode(ctx.settings) == "worker":
        result = probe_on_worker(ctx, path, fmt, input_shape, task)
    else:
        problem = sandbox_problem(ctx.settings.jail)
        if problem:
            raise ApiError(503, "sandbox_unavailable", f"teachers cannot be checked here: {problem}")
        jail = ctx.settings.teacher_jail(probe=True, scratch=ctx.blobs.scratch_dir)
        result = run_probe(path, fmt, input_shape, task, jail=jail)
    if not result["ok"]:
        status = 503 if result["code"] == "sandbox_unavailable" else 422
        raise ApiError(status, result["code"], result["message"], result.get("param"))
    return result


def canonical_file(ctx: Context, upload: uploads.Upload) -> None:
    """An ONNX model and its external data, sent as two parts or as a zip of both, become one
    bundle in place of the upload's file (sha256 and size are the bundle's)."""
    data = upload.extra.get("data")
    if data is None and not (model_files.is_zip(upload.path) and _sniffed(upload.path) == "onnx"):
        return
    bundle = ctx.blobs.temp_path()
    try:
        if data is not None:
            if data.size == 0 or not data.filename:
                raise ApiError(422, "invalid_request", "the `data` part must be the model's non-empty external data "
                               "file, sent with its file name", "data")
            if model_files.is_zip(upload.path) or _sniffed(upload.path) != "onnx":
                raise ApiError(422, "invalid_request", "a `data` part goes with an ONNX model file only", "data")
            model_files.write_onnx_bundle(upload.path, {data.filename: data.path}, bundle)
        else:
            model_files.rebundle_onnx_zip(upload.path, bundle)
    except ModelFileError as exc:
        bundle.unlink(missing_ok=True)
        raise ApiError(422, exc.code, exc.message, exc.param)
    except BaseException:
        bundle.unlink(missing_ok=True)
        raise
    upload.path.unlink(missing_ok=True)
    upload.path, upload.size = bundle, bundle.stat().st_size
    upload.sha256 = model_files.sha256_file(bundle)


def _sniffed(path: Path) -> str | None:
    try:
        return sniff(path).format
    except ModelFileError:
        return None


def probe_mode(settings: Settings) -> str:
    if settings.probe != "auto":
        return settings.probe
    return "local" if settings.python or importlib.util.find_spec("torch") is not None else "worker"


def probe_on_worker(ctx: Context, path: Path, fmt: str | None, input_shape, task: str | None) -> dict:
    """The probe as a Celery task (worker/tasks.py): the file goes through the blob store (the
    worker may be another machine), and the answer comes back through the result backend. The
    probe's own limit runs on the worker; the wait here adds time for the queue and the copy."""
    staged = f"tmp/probes/{uuid.uuid4().hex}"
    ctx.blobs.put_file(f"{staged}/{path.name}", path)
    queue = probe_queue(ctx.settings)
    wait_s = ctx.settings.probe_timeout_s + PROBE_QUEUE_WAIT_S
    try:
        # with S3, a presigned URL: the prober reads this one file without any credentials of its own
        url = ctx.blobs.fetch_url(f"{staged}/{path.name}", int(wait_s) + 60)
        pending = ctx.celery.send_task(PROBE_TEACHER, args=[f"{staged}/{path.name}", fmt, input_shape, task, url],
                                       queue=queue, retry=False, expires=wait_s)
        try:
            return pending.get(timeout=wait_s)
        except CeleryTimeout:
            raise ApiError(503, "unavailable", f"no worker probed the teacher within {wait_s:.0f} s: is a worker "
                           f"(`kdserve worker`) consuming queue {queue!r}?")
        except Exception as exc:
            raise ApiError(503, "unavailable", f"the worker could not probe the teacher: {type(exc).__name__}: {exc}")
        finally:
            pending.forget()
    finally:
        ctx.blobs.delete_prefix(staged)


@router.post("", status_code=201, response_model=TeacherOut, openapi_extra=TEACHER_FORM)
async def create_teacher(request: Request, ctx: Context = Depends(get_ctx), who: Principal = Depends(uploader)):
    upload = await uploads.receive(request, ctx.settings, ctx.blobs.temp_path, extra_files=("data",))
    try:
        form = upload.fields
        fmt = form.get("format") or None
        if fmt is not None and fmt not in FORMATS:
            raise ApiError(422, "invalid_request", f"format must be one of {list(FORMATS)}"
                           + (f"; {UNLOADABLE[fmt]}" if fmt in UNLOADABLE else ""), "format")
        shape = parse_json_form(form.get("input_shape"), "input_shape")
        if shape is not None and (not isinstance(shape, list) or not shape
                                  or not all(isinstance(d, int) and 0 < d <= 1 << 20 for d in shape)):
            raise ApiError(422, "invalid_request", "input_shape must be a JSON list of positive integers", "input_shape")
        task = form.get("task") or None
        if task is not None and task not in TASKS:
            raise ApiError(422, "invalid_request", f"task must be one of {list(TASKS)}", "task")
        metrics.observe_upload("teacher", upload.size)
        await run_in_threadpool(check_storage, ctx, who, upload.size)
        await run_in_threadpool(uploads.check_archive, upload.path, ctx.settings)
        await run_in_threadpool(canonical_file, ctx, upload)
        info = await ctx.probes.run(who.tenant, probe, ctx, upload.path, fmt, shape, task)  # 429/503 when busy
        teacher_id = new_id("tch")
        ext = ".onnx.zip" if info["format"] == "onnx" and model_files.is_zip(upload.path) else _EXT[info["format"]]
        blob_key = f"teachers/{teacher_id}/teacher{ext}"
        await run_in_threadpool(ctx.blobs.put_file, blob_key, upload.path, move=True)  # S3: an upload, not a rename
    finally:
        upload.discard()
    name = (form.get("name") or "")[:255] or upload.filename or teacher_id
    row = Teacher(id=teacher_id, tenant=who.tenant, name=name, format=info["format"],
                  sha256=upload.sha256, size_bytes=upload.size, input_shape=info["input_shape"],
                  input_dtype=info["input_dtype"], num_classes=info["num_classes"],
                  num_parameters=info["num_parameters"], outputs=info["outputs"], blob_key=blob_key,
                  details=info.get("details"))
    with ctx.db.session() as s:
        s.add(row)
    return to_out(row)


add_read_routes(router, Teacher, "teacher", to_out, TeacherOut)


@router.delete("/{teacher_id}", status_code=204)
def delete_teacher(teacher_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    delete_unused(ctx, who, Teacher, teacher_id, "teacher", Job.teacher_id == teacher_id)
    ctx.blobs.delete_prefix(f"teachers/{teacher_id}")
    ctx.blobs.delete_prefix(f"cache/teacher_outputs/{teacher_id}")  # its outputs kept for text jobs and searches
    return Response(status_code=204)
