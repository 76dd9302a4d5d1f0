"""/v1/datasets: upload (parsed to the canonical npz at the door), get, list, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from kdserve.service import ingest, ingest_child, metrics, uploads
from kdserve.service.api.deps import (Context, add_read_routes, check_storage, delete_unused, get_ctx, principal,
                                      uploader)
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.forms import DATASET_FORM
from kdserve.service.schemas import DatasetOut
from kdserve.service.store.db import Dataset, Job, new_id

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def to_out(row: Dataset) -> DatasetOut:
    return DatasetOut(id=row.id, name=row.name, format=row.format, sha256=row.sha256, size_bytes=row.size_bytes,
                      num_rows=row.num_rows, feature_shape=row.feature_shape, labeled=row.labeled,
                      num_classes=row.num_classes, class_counts=row.class_counts, created_at=row.created_at,
                      details=row.details)


async def _parse(ctx: Context, upload: uploads.Upload, canonical) -> tuple[str, dict]:
    """(format, summary) of the upload, its canonical npz written to `canonical` by a bounded child
    process (service/ingest_child.py); ApiError for a bad form or a bad file."""
    form = upload.fields
    fmt = form.get("format") or None
    if fmt is not None and fmt not in ingest.FORMATS:
        raise ApiError(422, "unsupported_format", f"format must be one of {list(ingest.FORMATS)}", "format")
    await run_in_threadpool(uploads.check_archive, upload.path, ctx.settings)
    columns = {"label_column": form.get("label_column") or None, "text_column": form.get("text_column") or "text",
               "text_pair_column": form.get("text_pair_column") or "text_pair"}
    try:
        return await ingest_child.parse_upload(upload.path, canonical, ctx.settings, fmt=fmt, filename=upload.filename,
                                               columns=columns)
    except ingest.DatasetError as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.param)


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra=DATASET_FORM)
async def create_dataset(request: Request, ctx: Context = Depends(get_ctx), who: Principal = Depends(uploader)):
    upload = await uploads.receive(request, ctx.settings, ctx.blobs.temp_path)
    try:
        metrics.observe_upload("dataset", upload.size)
        canonical = ctx.blobs.temp_path(".npz")
        try:
            fmt, summary = await _parse(ctx, upload, canonical)
            stored = canonical.stat().st_size
            await run_in_threadpool(check_storage, ctx, who, stored)  # the quota charges what is stored (the canonical npz), not the upload
        except BaseException:
            canonical.unlink(missing_ok=True)
            raise
    finally:
        upload.discard()
    dataset_id = new_id("ds")
    blob_key = f"datasets/{dataset_id}/data.npz"
    await run_in_threadpool(ctx.blobs.put_file, blob_key, canonical, move=True)  # S3: an upload, not a rename
    name = (upload.fields.get("name") or "")[:255] or upload.filename or dataset_id
    row = Dataset(id=dataset_id, tenant=who.tenant, name=name, format=fmt, sha256=upload.sha256,
                  size_bytes=stored, blob_key=blob_key, **summary)
    with ctx.db.session() as s:
        s.add(row)
    return to_out(row)


add_read_routes(router, Dataset, "dataset", to_out, DatasetOut)


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    delete_unused(ctx, who, Dataset, dataset_id, "dataset",
                  (Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id)
                  | (Job.test_dataset_id == dataset_id))
    ctx.blobs.delete_prefix(f"datasets/{dataset_id}")
    return Response(status_code=204)
