"""A job's epochs as resources: the weights of its best few epochs and of its last are kept in the
blob store after the job ends (GET /v1/jobs/{id}/checkpoints lists every epoch and which have
weights), and what training did is summarised for the model card."""

from __future__ import annotations

import io

import torch
from sqlalchemy import select

from kdserve.service.store.blobs import BlobStore, epoch_weights_key
from kdserve.service.store.db import JobEvent
from kdserve.worker import trainer
from kdserve.worker.pipeline.common import JobFailed
from kdserve.worker.pipeline.inputs import Prepared
from kdserve.worker.pipeline.progress import RunContext

KEEP_BEST = 3  # epochs whose weights are kept, by validation score; the last epoch's are kept too


def keep_epoch_weights(blobs: BlobStore, job_id: str, arm: dict) -> None:
    """Store this epoch's weights (student and loss state) and drop those of an earlier epoch that
    is neither the last nor among the KEEP_BEST best."""
    history = [trainer.EpochMetrics(**m) for m in arm["history"]]
    epoch = arm["epoch"]
    buf = io.BytesIO()
    torch.save({"epoch": epoch, "student": arm["student"], "loss": arm["loss"]}, buf)
    blobs.put_bytes(epoch_weights_key(job_id, epoch), buf.getvalue())
    for gone in kept(history[:-1]) - kept(history):
        blobs.delete_prefix(epoch_weights_key(job_id, gone))


def kept(history: list[trainer.EpochMetrics]) -> set[int]:
    """The epochs whose weights are kept after these epochs: the KEEP_BEST best and the last."""
    best = sorted(history, key=trainer.rank_key, reverse=True)[:KEEP_BEST]
    return {m.epoch for m in best} | ({history[-1].epoch} if history else set())


def training_summary(result: trainer.TrainResult) -> dict:
    """The card's `training`: the learning rate trained at and how it was chosen, the epochs planned
    and run, the best epoch and the one whose weights were published."""
    return {"learning_rate": result.learning_rate, "learning_rate_source": result.learning_rate_source,
            "lr_search": result.lr_search, "epochs_planned": result.epochs_planned, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "published_epoch": result.published_epoch,
            "published_because": published_because(result), "stopped_early": result.stopped_early}


def published_because(result: trainer.TrainResult) -> str:
    """Why the card's weights are the published epoch's, in words."""
    if not result.published_epoch:
        return "no epoch was trained"
    if result.published_epoch == result.best_epoch:
        why = f"epoch {result.published_epoch} had the best validation score of the {result.epochs_run} run"
        return why + (" (training stopped early: no better score for `early_stopping_patience` epochs)"
                      if result.stopped_early else "")
    return f"epoch {result.published_epoch} is the last one run (training.publish: last)"


def from_checkpoint(ctx: RunContext, prep: Prepared, device: torch.device) -> trainer.TrainResult:
    """A job with `from_checkpoint`: the kept weights of another job's epoch instead of training."""
    ref = ctx.spec.from_checkpoint
    key = epoch_weights_key(ref.job_id, ref.epoch)
    if not ctx.blobs.exists(key):
        raise JobFailed("not_found", f"job {ref.job_id} no longer keeps weights for epoch {ref.epoch}")
    weights = torch.load(io.BytesIO(ctx.blobs.get_bytes(key)), map_location=device, weights_only=True)
    try:
        trainer.load_weights(prep.student, prep.loss_fn, prep.train, device, weights)
    except RuntimeError as exc:  # another student's weights (a spec that does not match its source job)
        raise JobFailed("invalid_request", f"the weights of job {ref.job_id} epoch {ref.epoch} do not fit this "
                        f"student: {exc}") from None
    with ctx.db.session() as s:
        events = s.scalars(select(JobEvent.data).where(JobEvent.job_id == ref.job_id, JobEvent.type == "metrics"))
        data = next((d for d in events if isinstance(d, dict) and d.get("epoch") == ref.epoch), None)
    history = [trainer.EpochMetrics(**data)] if data else []
    ctx.progress.event(f"published epoch {ref.epoch} of job {ref.job_id} (no training)", data={"from_checkpoint":
                                                                                              ref.model_dump()})
    return trainer.TrainResult(history=history, learning_rate=history[0].lr if history else 0.0,
                               learning_rate_source=f"from job {ref.job_id}", epochs_run=0,
                               published_epoch=ref.epoch)
