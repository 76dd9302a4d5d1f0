"""Orphaned temporary files, swept: at start and every KDSERVE_TEMP_SWEEP_INTERVAL_S.

A request or a job that dies at the wrong moment (SIGKILL, a lost machine, the OOM killer) leaves
what it was writing: an upload's temp file or a worker's export folder in the blob store's scratch
folder, a teacher staged for a worker's probe under `tmp/probes/` in the store, a Hugging Face zip
unpacked by a probe in the system's temp folder. Nothing else ever removes them, and uploads of
gigabytes fill a disk quickly. Whatever nothing has modified for KDSERVE_TEMP_MAX_AGE_S (6 h: far
longer than any upload, probe or export takes) is an orphan.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

from kdserve.service.settings import Settings
from kdserve.service.store.blobs import BlobStore, remove_stale

log = logging.getLogger("kdserve.sweep")

STAGED_PROBES = "tmp/probes"       # service/api/teachers.py stages a teacher here for a worker's probe
HF_SCRATCH_GLOB = "kdserve-hf-*"   # models/teachers.py unpacks a Hugging Face zip in such a folder


def sweep(settings: Settings, blobs: BlobStore) -> int:
    """Remove the orphans; returns how many files or folders went."""
    age = settings.temp_max_age_s
    removed = (remove_stale(blobs.scratch_dir, age) + blobs.delete_older_than(STAGED_PROBES, age)
               + remove_stale(Path(tempfile.gettempdir()), age, HF_SCRATCH_GLOB))
    if removed:
        log.info("removed %d orphaned temporary file(s) or folder(s) older than %.0f s", removed, age)
    return removed


def start_sweeper(settings: Settings, blobs: BlobStore) -> threading.Event:
    """sweep() now and every temp_sweep_interval_s, in a daemon thread, until the returned event is
    set. A failed sweep is logged and tried again next time: the service goes on either way. The
    API runs one (it shares the scratch folder with a local worker); so does each worker, whose
    scratch folder is its own machine's with an S3 store."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                sweep(settings, blobs)
            except Exception as exc:
                log.warning("sweeping temporary files failed: %s: %s", type(exc).__name__, exc)
            stop.wait(settings.temp_sweep_interval_s)

    threading.Thread(target=loop, name="kdserve-sweep", daemon=True).start()
    return stop
