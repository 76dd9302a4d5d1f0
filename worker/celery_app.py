"""The worker's Celery app: `celery -A worker.celery_app worker --pool solo` (what `kdserve worker` runs)."""

from celery.signals import worker_ready

from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)


@worker_ready.connect
def _start_reaper(**_) -> None:
    from worker import reaper
    from worker.pipeline import context

    db, _blobs = context()
    reaper.start(db, app, get_settings())
