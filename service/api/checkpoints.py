"""/v1/jobs/{id}/checkpoints: a job's epochs with their validation metrics and whether their
weights are kept (the best three and the last), and publishing a chosen epoch's weights as a model
(a new job that skips training: it evaluates, exports, verifies and publishes those weights)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from kdserve.service.api.deps import Context, get_ctx, get_owned, principal
from kdserve.service.api.job_rows import check_active_jobs, enqueue_or_undo, to_out
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.model_card import ModelCard
from kdserve.service.schemas import CheckpointOut, JobOut, ListOut
from kdserve.service.store.blobs import epoch_weights_key
from kdserve.service.store.db import Job, JobEvent, Model, new_id, now

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def epoch_metrics(s, job_id: str) -> dict[int, dict]:
    """Each epoch's metrics event data, by epoch (the last written wins: a resumed run may repeat one)."""
    rows = s.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
                     .order_by(JobEvent.id))
    return {int(d["epoch"]): d for d in rows if isinstance(d, dict) and isinstance(d.get("epoch"), int)}


@router.get("/{job_id}/checkpoints", response_model=ListOut)
def list_checkpoints(job_id: str, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    with ctx.db.session() as s:
        job = get_owned(s, Job, job_id, who, "job")
        epochs = epoch_metrics(s, job.id)
        model = s.scalar(select(Model).where(Model.job_id == job.id))
        published = (ModelCard.of(model.card).training or {}).get("published_epoch") if model is not None else None
    best = (job.metrics or {}).get("best_epoch")
    out = [CheckpointOut(epoch=e, train_loss=d.get("train_loss"), val_loss=d.get("val_loss"),
                         val_accuracy=d.get("val_accuracy"), val_agreement=d.get("val_agreement"),
                         val_cosine=d.get("val_cosine"), val_kl=d.get("val_kl"), val_score=d.get("val_score"),
                         lr=d.get("lr"),
                         best=e == best, published=e == published,
                         weights=ctx.blobs.exists(epoch_weights_key(job.id, e)))
           for e, d in sorted(epochs.items())]
    return ListOut(data=out, has_more=False)


@router.post("/{job_id}/checkpoints/{epoch}/publish", status_code=202, response_model=JobOut)
def publish_checkpoint(job_id: str, epoch: int, ctx: Context = Depends(get_ctx), who: Principal = Depends(principal)):
    """A new job with the source job's spec that publishes this epoch's weights instead of training."""
    with ctx.db.locked_session() as s:
        source = get_owned(s, Job, job_id, who, "job")
        if source.spec.get("from_checkpoint"):
            raise ApiError(409, "conflict", f"job {source.id} published a checkpoint; publish from the job that trained")
        if not ctx.blobs.exists(epoch_weights_key(source.id, epoch)):
            kept = sorted(e for e in epoch_metrics(s, source.id) if ctx.blobs.exists(epoch_weights_key(source.id, e)))
            raise ApiError(404, "not_found", f"job {source.id} kept no weights for epoch {epoch}; epochs with weights: "
                           f"{kept}", "epoch")
        check_active_jobs(ctx, s, who)
        spec = {**source.spec, "from_checkpoint": {"job_id": source.id, "epoch": epoch}}
        spec["metadata"] = {k: v for k, v in spec.get("metadata", {}).items() if k != "name"}
        job = Job(id=new_id("job"), tenant=who.tenant, status="queued", teacher_id=source.teacher_id,
                  dataset_id=source.dataset_id, validation_dataset_id=source.validation_dataset_id,
                  test_dataset_id=source.test_dataset_id, spec=spec,
                  metrics={}, dispatched_at=now())
        s.add(job)
        s.add(JobEvent(job_id=job.id, message=f"queued: publish epoch {epoch} of job {source.id}", type="stage",
                       data={"status": "queued", "from_checkpoint": spec["from_checkpoint"]}))
    enqueue_or_undo(ctx, job.id)
    return to_out(job)
