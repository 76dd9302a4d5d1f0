"""The worker's Celery app: `celery -A worker.celery_app worker --pool solo` (what `kdserve worker` runs)."""

import os

from celery.signals import worker_init, worker_ready

from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)


@worker_init.connect
def _share_the_machine(**_) -> None:
    """Before any job: lower this process's priority (on Linux a thread's niceness is inherited by
    the threads it starts, torch's pool included) so that polls and inference in an API process on
    the same machine stay fast while training saturates the cores; and cap torch's threads."""
    settings = get_settings()
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)


@worker_ready.connect
def _start_reaper(**_) -> None:
    from worker import reaper
    from worker.pipeline import context

    db, _blobs = context()
    reaper.start(db, app, get_settings())


@worker_ready.connect
def _start_sweeper(**_) -> None:
    """Orphaned temporary files on this machine (service/sweep.py): with an S3 store a worker's
    scratch folder is its own machine's, which no API process sees."""
    from service import sweep
    from service.store.blobs import make_blob_store

    settings = get_settings()
    sweep.start_sweeper(settings, make_blob_store(settings))
