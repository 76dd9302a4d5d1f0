"""Celery tasks: thin. They receive a job id, run the pipeline, and let the database say the rest."""

from __future__ import annotations

import logging

from service.queue import RUN_JOB
from worker.celery_app import app
from worker.pipeline import run_job as run_pipeline

log = logging.getLogger("kdserve.worker")


@app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    log.info("job %s: picked up", job_id)
    run_pipeline(job_id)
