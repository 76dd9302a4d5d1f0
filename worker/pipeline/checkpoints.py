"""A job's epochs as resources: the weights of its best few epochs and of its last are kept in the
blob store after the job ends (GET /v1/jobs/{id}/checkpoints lists every epoch and which have
weights), and what training did is summarised for the model card."""

from __future__ import annotations

import io

import torch

from kdserve.service.store.blobs import BlobStore
from kdserve.worker import trainer

KEEP_BEST = 3  # epochs whose weights are kept, by validation score; the last epoch's are kept too


def epoch_weights_key(job_id: str, epoch: int) -> str:
    return f"jobs/{job_id}/epochs/{epoch}.pt"


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
            "stopped_early": result.stopped_early}
