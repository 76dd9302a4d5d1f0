"""Celery tasks: thin. They receive ids (or blob keys), run the work, and let the database say the rest."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import httpx

from kdserve.service.sandbox.probe import refused, run_probe
from kdserve.service.queue import ADVANCE_SEARCH, DELIVER_WEBHOOKS, PROBE_TEACHER, RUN_JOB, enqueue_job
from kdserve.service.settings import get_settings
from kdserve.worker import search, webhooks
from kdserve.worker.celery_app import app
from kdserve.worker.pipeline import context
from kdserve.worker.pipeline import run_job as run_pipeline

log = logging.getLogger("kdserve.worker")


@app.task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str) -> None:
    delivery = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
    log.info("job %s: picked up by %s", job_id, delivery)
    queue = get_settings().queue
    run_pipeline(job_id, delivery, send=lambda next_id: enqueue_job(app, next_id, queue))


@app.task(name=ADVANCE_SEARCH)
def advance_search(search_id: str) -> None:
    """A search's next step (kdserve.worker.search): tell ended trials, queue new ones."""
    db, _blobs = context()
    settings = get_settings()
    search.advance(db, settings, search_id, lambda job_id: enqueue_job(app, job_id, settings.queue))


@app.task(name=DELIVER_WEBHOOKS)
def deliver_webhooks(delivery_ids: list[str]) -> None:
    """Webhook deliveries the API wrote: handed to this process's sender threads, which claim and
    send them beside whatever job comes next (the task returns at once)."""
    webhooks.sender().submit(list(delivery_ids))


@app.task(name=PROBE_TEACHER, ignore_result=False, acks_late=False)
def probe_teacher(blob_key: str, fmt: str | None, input_shape: list[int] | None, task: str | None,
                  url: str | None = None) -> dict:
    """An upload the API staged in the blob store, probed here for an API without torch
    (KDSERVE_PROBE=worker). Same checks, jail and answer as the API's own probe; the API deletes
    the staged file. With an S3 store the API sends a presigned `url` for the file, so a prober
    needs neither database nor bucket credentials. acks_late off: the API waits minutes at most
    for the answer, so a probe lost with its worker must not come back days later."""
    settings = get_settings()
    log.info("probing uploaded teacher %s", blob_key)
    if url is None:
        _db, blobs = context()
        return run_probe(blobs.local_path(blob_key), fmt, input_shape, task,
                         jail=settings.teacher_jail(probe=True, scratch=blobs.scratch_dir))
    scratch = settings.data_dir.resolve() / "probes"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / Path(blob_key).name
        try:
            download(url, path, settings.max_upload_bytes)
        except (httpx.HTTPError, ValueError) as exc:
            return refused("unsupported_format", f"the prober could not fetch the upload: {exc}", "file")
        return run_probe(path, fmt, input_shape, task, jail=settings.teacher_jail(probe=True, scratch=Path(tmp)))


def download(url: str, dest: Path, cap: int) -> None:
    with httpx.stream("GET", url, timeout=60, follow_redirects=False) as r, open(dest, "wb") as out:
        r.raise_for_status()
        got = 0
        for chunk in r.iter_bytes(1 << 20):
            got += len(chunk)
            if got > cap:
                raise ValueError(f"the staged upload is over {cap} bytes")
            out.write(chunk)
