"""The worker's Celery app: `celery -A worker.celery_app worker --pool solo` (what `kdserve worker` runs)."""

from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)
