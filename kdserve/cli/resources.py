"""What the resource commands share (teachers, datasets, jobs, models, predict, demo): they call
the HTTP API through the SDK, so they work against any kdserve, local or remote. An API error
prints its code and message (or, with --json, the API's error object) and exits with status 1.

`upload` is the body of `teachers upload` and `datasets upload`; `list_command`, `show_command`
and `delete_command` make the commands that are the same for several resources (e.g. `teachers
list` and `datasets list`)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from kdserve.cli.render import err, out, print_json, print_one, print_page, print_table
from kdserve.client import Client, KdserveError, resolve_api_key

JSON_OPTION = typer.Option(False, "--json", help="print machine-readable JSON only")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="print only the ids, one per line")
LIMIT_OPTION = typer.Option(20, help="1..100")
AFTER_OPTION = typer.Option(None, help="the last id of the previous page")


def client(ctx: typer.Context) -> Client:
    """A client for the global --url / --api-key (else the SDK's defaults)."""
    opts = ctx.obj or {}
    return Client(opts.get("url"), opts.get("api_key"))


def key_source(ctx: typer.Context | None) -> str:
    """Where the API key the CLI sent came from, in the order it looks (for a 401)."""
    if ctx is not None and (ctx.obj or {}).get("api_key"):
        return "the --api-key option"
    if os.environ.get("KDSERVE_API_KEY"):
        return "KDSERVE_API_KEY"
    key_file = Path(os.environ.get("KDSERVE_DATA_DIR") or ".kdserve") / "api_key"
    if resolve_api_key() is not None:
        return f"{key_file.resolve()}"
    return (f"nowhere: no --api-key, no KDSERVE_API_KEY and no {key_file.resolve()} (`kdserve up` writes it; "
            "`kdserve keys create --tenant NAME` makes one)")


def fail(exc: KdserveError, as_json: bool, ctx: typer.Context | None = None) -> None:
    if as_json:
        print(json.dumps(exc.to_dict()))
    else:
        where = f" (param: {exc.param})" if exc.param else ""
        status = f"{exc.status} " if exc.status else ""
        err.print(f"[red]error[/] {status}[bold]{exc.code}[/]: {exc.message}{where}", highlight=False)
        if exc.status == 401:
            err.print(f"the API key was taken from {key_source(ctx)}", highlight=False)
    raise typer.Exit(1)


def api_command(fn: Callable) -> Callable:
    """Turn an API error (or an unreachable service) into its code and message and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KdserveError as exc:
            fail(exc, kwargs.get("as_json", False), kwargs.get("ctx") or (args[0] if args else None))

    return wrapper


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
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


def json_file(file: Optional[Path]) -> dict[str, Any]:
    """The request body in --file (job.json, search.json); an empty one without it."""
    if file is None:
        return {}
    try:
        body = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"{file}: {exc}", param_hint="--file")
    if not isinstance(body, dict):
        raise typer.BadParameter(f"{file} must hold a JSON object", param_hint="--file")
    return body


def print_events(resource, id: str, follow: bool, show: Callable[[Any], None]) -> None:
    """`<jobs|search> logs`: the events of a job or search (`resource`: kd.jobs or kd.searches),
    every page; with `follow`, live until it ends."""
    if follow:
        resource.wait(id, on_event=show)
        return
    after = 0
    while True:
        page = resource.events(id, after=after, limit=1000)
        for e in page.data:
            show(e)
        if not page.has_more:
            return
        after = page.data[-1].id


def parse_json_option(raw: str | None, option: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise typer.BadParameter(f"not JSON: {raw!r}", param_hint=option)


def upload(ctx: typer.Context, kind: str, path, table: Callable, as_json: bool, **fields: Any) -> None:
    """`<kind> upload`: send the file, then print what the service made of it (a one-row table)."""
    with client(ctx) as kd:
        made = getattr(kd, kind).create(path, **fields)
    print_one(made, lambda value: print_table(table([value])), as_json)


def list_command(group: typer.Typer, kind: str, table: Callable, doc: str) -> None:
    """`<kind> list`: one page of `kind` (teachers, datasets, models), newest first."""

    @group.command("list", help=doc)
    @api_command
    def list_page(ctx: typer.Context, limit: int = LIMIT_OPTION, after: Optional[str] = AFTER_OPTION,
                  as_json: bool = JSON_OPTION, quiet: bool = QUIET_OPTION):
        with client(ctx) as kd:
            page = getattr(kd, kind).list(limit=limit, after=after)
        print_page(page, table, as_json, quiet)


def show_command(group: typer.Typer, kind: str, id_name: str, render: Callable[[Any], None], doc: str) -> None:
    """`<kind> show <id_name>`: one resource, drawn by `render` (or its JSON)."""

    @group.command("show", help=doc)
    @api_command
    def show(ctx: typer.Context, id: str = typer.Argument(..., metavar=id_name), as_json: bool = JSON_OPTION):
        with client(ctx) as kd:
            value = getattr(kd, kind).get(id)
        print_one(value, render, as_json)


def delete_command(group: typer.Typer, kind: str, id_name: str, doc: str) -> None:
    """`<kind> delete <id_name>`."""

    @group.command("delete", help=doc)
    @api_command
    def delete(ctx: typer.Context, id: str = typer.Argument(..., metavar=id_name), as_json: bool = JSON_OPTION):
        with client(ctx) as kd:
            getattr(kd, kind).delete(id)
        if as_json:
            return print_json({"id": id, "deleted": True})
        out.print(f"deleted {id}")
