"""/v1/models: the distilled students, their cards, and downloads (ETag = sha256, Range → 206)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from service.api.deps import Context, get_ctx, get_owned, paginate, principal
from service.auth import Principal
from service.errors import ApiError
from service.schemas import ListOut, ModelOut
from service.store.db import Model

router = APIRouter(prefix="/v1/models", tags=["models"])


def to_out(row: Model) -> ModelOut:
    card = row.card
    artifacts = [{k: v for k, v in a.items() if k != "blob_key"} for a in card["artifacts"]]
    return ModelOut(id=row.id, name=row.name, job_id=row.job_id, created_at=row.created_at,
                    **{**card, "artifacts": artifacts})


@router.get("", response_model=ListOut)
def list_models(limit: int = Query(20, ge=1, le=100), after: str | None = None,
                ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        rows, more = paginate(s, Model, who, limit, after)
        return ListOut(data=[to_out(r) for r in rows], has_more=more)


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        return to_out(get_owned(s, Model, model_id, who, "model"))


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@router.get("/{model_id}/download")
def download_model(request: Request, model_id: str, format: str = Query("onnx"), precision: str = Query("fp32"),
                   ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        row = get_owned(s, Model, model_id, who, "model")
    artifact = next((a for a in row.card["artifacts"] if a["format"] == format and a["precision"] == precision), None)
    if artifact is None:
        have = [f"{a['format']}/{a['precision']}" for a in row.card["artifacts"]]
        raise ApiError(404, "not_found", f"model {model_id} has no {format}/{precision} artifact; it has {have}", "precision")
    path = ctx.blobs.local_path(artifact["blob_key"])
    size, etag = path.stat().st_size, f'"{artifact["sha256"]}"'
    filename = f"{row.name}.{precision}.onnx"
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{filename}"'}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if range_header and request.headers.get("if-range", etag) == etag:
        match = _RANGE.match(range_header.strip())
        if not match or match.groups() == ("", ""):
            raise ApiError(416, "invalid_range", f"unsupported Range {range_header!r}; use bytes=START-[END]")
        start_s, end_s = match.groups()
        if start_s:
            start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
        else:  # suffix range: the last N bytes
            start, end = max(size - int(end_s), 0), size - 1
        if start >= size or start > end:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        return StreamingResponse(_file_range(path, start, end), status_code=206, media_type="application/octet-stream",
                                 headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}",
                                          "Content-Length": str(end - start + 1)})
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


def _file_range(path, start: int, end: int):
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start + 1
        while left > 0:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        s.delete(get_owned(s, Model, model_id, who, "model"))
    ctx.blobs.delete_prefix(f"models/{model_id}")
    return Response(status_code=204)
