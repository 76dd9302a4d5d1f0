"""A run's lease on its job: the heartbeat that keeps it, and the cancel request and time limit
that end it (checked by a thread beside the run, read by the training loop as a flag)."""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager

from kdserve.service.settings import get_settings
from kdserve.service.store.blobs import BlobStore
from kdserve.service.store.db import TERMINAL, Database, Job
from kdserve.worker.pipeline.common import LEASE_LOST, fail, finish, log


class Lease:
    def __init__(self, db: Database, blobs: BlobStore, job_id: str, delivery: str, limit_s: float | None,
                 t_start: float):
        self.db, self.blobs, self.job_id, self.delivery = db, blobs, job_id, delivery
        self.limit_s, self.t_start = limit_s, t_start
        self.stop_reason: str | None = None

    def should_stop(self) -> str | None:
        return self.stop_reason

    @contextmanager
    def watch(self):
        """A thread beside the run: it renews the job's lease (heartbeat), and polls the row once a
        second for a cancel request and the time limit, so the training loop checks a flag, not the
        database, between batches. A run that does not stop within cancel_grace_s of a cancel or of
        its time limit (stuck in one step: a teacher forward over the dataset, a huge batch) is
        ended the hard way: the job is marked cancelled (or failed with `timeout`) and this worker
        process exits; its supervisor (kdserve up, systemd, k8s) starts a fresh one."""
        done = threading.Event()
        thread = threading.Thread(target=self._poll, args=(done,), name=f"watch-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)

    def _poll(self, done: threading.Event) -> None:
        settings = get_settings()
        last_beat, stop_seen = 0.0, None
        while not done.wait(1.0):
            if time.time() - last_beat >= settings.heartbeat_s:
                last_beat = time.time()
                if not self.db.heartbeat(self.job_id, self.delivery):
                    self.stop_reason = LEASE_LOST
            row = self.db.get_job(self.job_id)
            if row is None or row.cancel_requested:
                self.stop_reason = self.stop_reason or "cancelled"
            elif self.limit_s and time.time() - self.t_start > self.limit_s:
                self.stop_reason = self.stop_reason or f"the job ran past training.max_duration_s = {self.limit_s} s"
            if self.stop_reason in (None, LEASE_LOST):
                continue
            stop_seen = stop_seen or time.time()
            if time.time() - stop_seen > settings.cancel_grace_s and not done.is_set():
                self._terminate(row, settings.cancel_grace_s)

    def _terminate(self, row: Job | None, grace: float) -> None:
        """The run ignored its stop request for `grace` seconds: record the outcome, exit the process."""
        reason = self.stop_reason
        log.error("job %s did not stop within %.0f s of %r: terminating this worker", self.job_id, grace, reason)
        if row is not None and row.status not in TERMINAL:
            note = f"the worker was stuck for {grace:.0f} s and was terminated"
            if reason == "cancelled":
                finish(self.db, self.blobs, self.job_id, "cancelled", f"cancelled; {note}")
            else:
                fail(self.db, self.blobs, self.job_id, "timeout", f"{reason}; {note}")
        logging.shutdown()
        os._exit(70)
