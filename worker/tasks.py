"""Celery tasks: thin. They receive ids (or blob keys), run the work, and let the database say the rest."""

from __future__ import annotations

import logging
import os
import socket

from models.probe import run_probe
from service.queue import PROBE_TEACHER, RUN_JOB
from service.settings import get_settings
from worker.celery_app import app
from worker.pipeline import context
from worker.pipeline import run_job as run_pipeline

log = logging.getLogger("kdserve.worker")


@app.task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str) -> None:
    delivery = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
    log.info("job %s: picked up by %s", job_id, delivery)
    run_pipeline(job_id, delivery)


@app.task(name=PROBE_TEACHER, ignore_result=False, acks_late=False)
def probe_teacher(blob_key: str, fmt: str | None, input_shape: list[int] | None, task: str | None) -> dict:
    """An upload the API staged in the blob store, probed here for an API without torch
    (KDSERVE_PROBE=worker). Same child process and answer as the API's own probe; the API
    deletes the staged file. acks_late off: the API waits minutes at most for the answer, so a
    probe lost with its worker must not come back days later (the visibility timeout)."""
    settings = get_settings()
    _db, blobs = context()
    log.info("probing uploaded teacher %s", blob_key)
    return run_probe(blobs.local_path(blob_key), fmt, input_shape, task,
                     jail=settings.teacher_jail(probe=True, scratch=blobs.scratch_dir))
