"""Celery tasks: thin. They receive a job id, run the pipeline, and let the database say the rest."""

from __future__ import annotations

import logging
import os
import socket

from service.queue import RUN_JOB
from worker.celery_app import app
from worker.pipeline import run_job as run_pipeline

log = logging.getLogger("kdserve.worker")


@app.task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str) -> None:
    delivery = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
    log.info("job %s: picked up by %s", job_id, delivery)
    run_pipeline(job_id, delivery)
