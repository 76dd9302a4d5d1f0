"""The worker's Celery app: `celery -A kdserve.worker.celery_app worker --pool solo` (what `kdserve worker` runs)."""

import os
import resource

from celery.signals import worker_init, worker_ready

from kdserve.service import budgets
from kdserve.service.queue import make_celery
from kdserve.service.settings import get_settings

app = make_celery(get_settings())
app.conf.imports = ("kdserve.worker.tasks",)


@worker_init.connect
def _share_the_machine(**_) -> None:
    """Before any job: lower this process's priority (on Linux a thread's niceness is inherited by
    the threads it starts, torch's pool included) so that polls and inference in an API process on
    the same machine stay fast while training saturates the cores; and cap torch's threads."""
    settings = get_settings()
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    limit_memory(budgets.worker_memory_limit(settings.worker_max_memory_bytes))
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)


def limit_memory(limit: int) -> None:
    """One job cannot take the machine: past `limit` bytes an allocation fails inside the job
    (MemoryError, or torch's "can't allocate memory"), which ends it `out_of_memory` while the
    worker lives on, instead of the kernel's OOM killer ending this worker (the job would be
    redelivered to fail again) or a process beside it."""
    if limit:
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


@worker_ready.connect
def _start_reaper(**_) -> None:
    """Workers that take jobs watch over jobs and send webhooks; a prober alone (`--queues probe`) has no database to
    watch (it runs untrusted teachers, so it is given no secrets: see README "teacher jail")."""
    from kdserve.service.queue import probe_queue
    from kdserve.worker import reaper, webhooks
    from kdserve.worker.pipeline import context

    settings = get_settings()
    if set(app.amqp.queues.consume_from or {}) == {probe_queue(settings)}:
        return
    db, blobs = context()
    reaper.start(db, app, settings, blobs, webhooks.sender())


@worker_ready.connect
def _start_sweeper(**_) -> None:
    """Orphaned temporary files on this machine (service/sweep.py): with an S3 store a worker's
    scratch folder is its own machine's, which no API process sees."""
    from kdserve.service import sweep
    from kdserve.service.store.blobs import make_blob_store

    settings = get_settings()
    sweep.start_sweeper(settings, make_blob_store(settings))
