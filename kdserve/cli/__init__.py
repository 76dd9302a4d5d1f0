"""The `kdserve` command.

Run the service: `up`, `worker`, manage API keys: `keys`, and migrate the database schema: `db upgrade`
(these talk to the database directly; operator.py).
Use a running service: `teachers`, `datasets`, `jobs`, `models`, `webhooks`, `predict`, `demo` (these go
through the HTTP API with the SDK, kdserve.client, so they work against any kdserve, local or remote;
uploads.py, jobs.py, models.py, webhooks.py, with what they share in resources.py and render.py; the flags of
`jobs create`'s request body are made from the service's schema by schema_flags.py).

Every client command takes `--json` (machine-readable output only, on stdout) and reads the
service's address and API key from the global `--url` / `--api-key` options, else KDSERVE_URL /
KDSERVE_API_KEY, else `<KDSERVE_DATA_DIR or ./.kdserve>/api_key` (where `kdserve up` writes it).
An API error prints its code and message and exits with status 1.
"""

from __future__ import annotations

from typing import Optional

import typer

from kdserve.cli.catalog import architectures, methods
from kdserve.cli.jobs import jobs_app
from kdserve.cli.searches import searches_app
from kdserve.cli.models import models_app, predict
from kdserve.cli.operator import WORKER_QUEUES, db_app, demo, keys_app, up, worker
from kdserve.cli.uploads import datasets_app, teachers_app
from kdserve.cli.webhooks import webhooks_app

__all__ = ["WORKER_QUEUES", "app", "main"]

app = typer.Typer(help="kdserve: knowledge distillation as a service.", no_args_is_help=True)
# --help lists the commands in this order
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(teachers_app, name="teachers")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(searches_app, name="search")
app.add_typer(searches_app, name="searches", hidden=True)  # the plural, as the other groups are named
app.add_typer(models_app, name="models")
app.add_typer(webhooks_app, name="webhooks")
app.command()(methods)
app.command()(architectures)
app.command()(up)
app.command()(worker)
app.command()(predict)
app.command()(demo)


@app.callback()
def global_options(
    ctx: typer.Context,
    url: Optional[str] = typer.Option(None, "--url", help="kdserve address (default KDSERVE_URL or http://127.0.0.1:8000)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="API key (default KDSERVE_API_KEY or "
                                          "<KDSERVE_DATA_DIR or ./.kdserve>/api_key)"),
):
    ctx.obj = {"url": url, "api_key": api_key}


def main() -> None:
    app()
