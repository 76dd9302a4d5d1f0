"""`kdserve methods` and `kdserve architectures`: what a job can name, with every param's type,
default and description, as the service's catalogue (GET /v1/methods, /v1/architectures) says."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from kdserve.cli.render import out, print_json
from kdserve.cli.resources import JSON_OPTION, api_command, client


def param_lines(schema: dict[str, Any]) -> str:
    """One line per param of a JSON schema: name, type, default, description."""
    lines = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") or " | ".join(str(a.get("type", a.get("const", "?"))) for a in prop.get("anyOf", []))
        default = f" = {prop['default']!r}" if "default" in prop else ""
        about = f": {prop['description']}" if prop.get("description") else ""
        lines.append(f"{name} ({kind}){default}{about}")
    return "\n".join(lines) or "–"


def catalog_table(rows, title: str, facts) -> Table:
    table = Table("name", "", "description", "params", title=title, title_justify="left", show_lines=True)
    for r in rows:
        table.add_row(r.name, facts(r), r.description, param_lines(r.params))
    return table


def show_catalog(ctx: typer.Context, kind: str, facts, as_json: bool) -> None:
    with client(ctx) as kd:
        page = getattr(kd, kind).list()
    if as_json:
        return print_json(page)
    out.print(catalog_table(page.data, kind, facts))


def _method_facts(m) -> str:
    return ", ".join(f for f, on in (("needs a teacher", m.needs_teacher), ("needs labels", m.needs_labels)) if on) or "–"


def _architecture_facts(a) -> str:
    weights = ", from the teacher's weights" if getattr(a, "needs_teacher_weights", False) else ""
    return f"inputs: {getattr(a, 'inputs', '?')}{weights}"


@api_command
def methods(ctx: typer.Context, as_json: bool = JSON_OPTION):
    """Distillation methods a job can name (method.name), with their params and defaults."""
    show_catalog(ctx, "methods", _method_facts, as_json)


@api_command
def architectures(ctx: typer.Context, as_json: bool = JSON_OPTION):
    """Student architectures a job can name (student.architecture), with their params and defaults."""
    show_catalog(ctx, "architectures", _architecture_facts, as_json)
