"""/v1/datasets: upload (parsed to the canonical npz at the door), get, list, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service import ingest
from service.api.deps import Context, get_ctx, get_owned, paginate, principal, save_upload
from service.auth import Principal
from service.errors import ApiError
from service.schemas import DatasetOut, ListOut
from service.store.db import Dataset, Job, new_id

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def to_out(row: Dataset) -> DatasetOut:
    return DatasetOut(id=row.id, name=row.name, format=row.format, sha256=row.sha256, size_bytes=row.size_bytes,
                      num_rows=row.num_rows, feature_shape=row.feature_shape, labeled=row.labeled,
                      num_classes=row.num_classes, class_counts=row.class_counts, created_at=row.created_at)


def _ingest(ctx: Context, tmp, fmt: str | None, filename: str | None, label_column: str):
    if fmt is None:
        with open(tmp, "rb") as f:
            fmt = ingest.detect_format(filename, f.read(4096))
    parsed = ingest.parse(tmp, fmt, label_column)
    canonical = ctx.blobs.temp_path(".npz")
    parsed.save(canonical)
    return fmt, parsed.summary(), canonical


@router.post("", status_code=201, response_model=DatasetOut)
async def create_dataset(
    file: Annotated[UploadFile, File(description="npz (x, optional y) or CSV with a header row")],
    name: Annotated[str | None, Form(max_length=255)] = None,
    format: Annotated[str | None, Form()] = None,
    label_column: Annotated[str, Form(max_length=255)] = "label",
    ctx: Context = Depends(get_ctx),
    who: Principal = Depends(principal),
):
    if format is not None and format not in ingest.FORMATS:
        raise ApiError(422, "unsupported_format", f"format must be one of {list(ingest.FORMATS)}", "format")
    tmp, sha, size = await save_upload(file, ctx)
    try:
        fmt, summary, canonical = await run_in_threadpool(_ingest, ctx, tmp, format, file.filename, label_column)
    except ingest.DatasetError as exc:
        raise ApiError(422, exc.code, exc.message, exc.param)
    finally:
        tmp.unlink(missing_ok=True)
    dataset_id = new_id("ds")
    blob_key = f"datasets/{dataset_id}/data.npz"
    ctx.blobs.put_file(blob_key, canonical, move=True)
    row = Dataset(id=dataset_id, tenant=who.tenant, name=name or file.filename or dataset_id, format=fmt, sha256=sha,
                  size_bytes=size, blob_key=blob_key, **summary)
    with ctx.db.session() as s:
        s.add(row)
    return to_out(row)


@router.get("", response_model=ListOut)
def list_datasets(limit: int = Query(20, ge=1, le=100), after: str | None = None,
                  ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        rows, more = paginate(s, Dataset, who, limit, after)
        return ListOut(data=[to_out(r) for r in rows], has_more=more)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        return to_out(get_owned(s, Dataset, dataset_id, who, "dataset"))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        row = get_owned(s, Dataset, dataset_id, who, "dataset")
        busy = s.query(Job.id).filter(
            (Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id),
            Job.status.in_(("queued", "running")),
        ).first()
        if busy:
            raise ApiError(409, "conflict", f"job {busy[0]} is using this dataset; cancel it or wait for it to end")
        s.delete(row)
    ctx.blobs.delete_prefix(f"datasets/{dataset_id}")
    return Response(status_code=204)
