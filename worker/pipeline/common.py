"""What every stage of a job shares: its failures, the stages' shares of the progress bar, the
worker's database and blob store, and how a job ends."""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from sqlalchemy import update

from kdserve.service.settings import get_settings
from kdserve.service.store.blobs import BlobStore, make_blob_store
from kdserve.service.store.db import Database, Job, JobEvent, now

log = logging.getLogger("kdserve.worker")

# Share of the progress bar each stage gets; training's share is spread over its epochs.
STAGES = {
    "validating": 0.02, "refining_teacher": 0.10, "caching_teacher": 0.04, "training": 0.70, "evaluating": 0.02,
    "exporting": 0.05, "verifying": 0.04, "quantizing": 0.02, "publishing": 0.01,
}

LEASE_LOST = "lease_lost"


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Cancelled(Exception):
    pass


@lru_cache
def context() -> tuple[Database, BlobStore]:
    settings = get_settings()
    db = Database(settings.resolved_database_url)
    db.migrate()
    return db, make_blob_store(settings)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise JobFailed("invalid_request", f"training.device is {requested!r} but this worker has no CUDA device")
    return torch.device(requested)


def finish(db: Database, blobs: BlobStore, job_id: str, status: str, message: str, **fields) -> None:
    # The final status and its event in one transaction: a reader that sees the job ended (the
    # SSE stream, say) also sees the event that says so.
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=now(), estimated_finish=None,
                                                             **fields))
        s.add(JobEvent(job_id=job_id, message=message, type="stage", level="info" if status != "failed" else "error",
                       data={"status": status}))
    blobs.delete_prefix(f"checkpoints/{job_id}")  # a finished job never resumes


def fail(db: Database, blobs: BlobStore, job_id: str, code: str, message: str) -> None:
    log.warning("job %s failed: %s: %s", job_id, code, message)
    finish(db, blobs, job_id, "failed", f"failed: {message}", error={"code": code, "message": message, "param": None})
