"""Command flags made from the request schema (kdserve.service.schemas, what the API validates
against and /openapi.json shows): one `--name VALUE` per scalar field of a body section, whose help
is the field's description, what it accepts and its default, and whose value is checked against
the field (the model's own validator) before anything is sent. A field added to the schema is a
flag at once, described as the API describes it; nothing about it is written here.

    @jobs_app.command("create")
    @with_schema_flags(JOB_FLAGS)
    def jobs_create(..., schema_values: dict):   # {"training": {"epochs": 6}, None: {"baseline": True}}

The same words describe the other options made from a schema: a repeated KEY=VALUE option whose
keys are a section's fields (`search create --target`, `pairs_help`) and an upload command's option
for a field of its multipart form (kdserve.service.forms, `form_field_help`).
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from kdserve.service.schemas import ExportSpec, JobCreate, SearchCreate, TextSpec, TrainingSpec

_SCALAR_TYPES = {"integer", "number", "string", "boolean", "null"}
_METAVARS = {"integer": "INT", "number": "FLOAT", "string": "TEXT", "boolean": "BOOL", "null": "null"}


def _shown(value: Any) -> str:
    """A value as it is typed on the command line: strings bare, the rest as JSON (null, true, 0.01)."""
    return value if isinstance(value, str) else json.dumps(value)


def _alternatives(schema: dict) -> list[dict]:
    return schema.get("anyOf") or [schema]


def _is_scalar(schema: dict) -> bool:
    """A flag's worth of field: scalars only (no section, list or map), and more than one value."""
    alternatives = _alternatives(schema)
    return (all("$ref" not in a and a.get("type") in _SCALAR_TYPES for a in alternatives)
            and not (len(alternatives) == 1 and "const" in schema))


def _accepts(schema: dict, repeat: bool = True) -> str:
    """What the field takes, from its JSON schema: `integer ≥ 1, ≤ 10000 | auto`. A list is a flag
    given once per item (`repeat`), else one JSON value (a KEY=VALUE option's)."""
    parts = []
    for a in _alternatives(schema):
        if a.get("type") == "array" and repeat:
            parts.append(f"{_accepts(a['items'])} (repeat the flag for more than one)")
        elif a.get("type") == "array":
            items = _accepts(a.get("items") or a["prefixItems"][0], repeat)  # a tuple's are alike: [low, high]
            bounds = ([f"{a['minItems']}"] if "minItems" in a and a["minItems"] == a.get("maxItems") else
                      [f"{sign} {a[key]}" for key, sign in (("minItems", "≥"), ("maxItems", "≤")) if key in a])
            parts.append(f"JSON list of {f'({items})' if ' ' in items else items}"
                         + (f", length {', '.join(bounds)}" if bounds else ""))
        elif "$ref" in a:  # a section: its schema's name in /openapi.json
            parts.append(a["$ref"].rsplit("/", 1)[-1])
        elif a.get("type") == "object":
            parts.append("JSON object")
        elif "const" in a or "enum" in a:
            parts.append(" | ".join(_shown(v) for v in a.get("enum", [a.get("const")])))
        else:
            kind = {"boolean": "true | false"}.get(a["type"], a["type"])
            bounds = [f"{sign} {_shown(a[key])}" for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                                    ("maximum", "≤"), ("exclusiveMaximum", "<"),
                                                                    ("maxLength", "length ≤"), ("pattern", "matching"))
                      if key in a]
            parts.append(f"{kind} {', '.join(bounds)}" if bounds else kind)
    return " | ".join(parts)


def _metavar(schema: dict) -> str:
    return "|".join("|".join(_shown(v) for v in a["enum"]) if "enum" in a else
                    _shown(a["const"]) if "const" in a else _METAVARS[a["type"]] for a in _alternatives(schema))


@functools.cache
def _properties(model: type[BaseModel]) -> dict[str, dict]:
    return model.model_json_schema()["properties"]


_REQUIRED = object()  # a field without a default


def _help_text(description: str | None, accepts: str | None, default: Any = _REQUIRED) -> str:
    """`description. accepts: …; default: …`, the parts there are (not yet escaped for rich)."""
    text = ". ".join(part for part in (description, f"accepts: {accepts}" if accepts else None) if part)
    if default is not _REQUIRED:
        text += ("; " if text else "") + f"default: {_shown(default)}"
    return text


def _field_text(model: type[BaseModel], name: str, accepts: bool = True, default: bool = False,
                repeat: bool = True) -> str:
    field = model.model_fields[name]
    return _help_text(field.description, _accepts(_properties(model)[name], repeat) if accepts else None,
                      field.get_default(call_default_factory=True) if default and not field.is_required()
                      else _REQUIRED)


def field_help(model: type[BaseModel], name: str, accepts: bool = True, default: bool = False) -> str:
    """The help of a flag for `model.name`: the field's description (if it has one), what it accepts
    and (`default`) its default."""
    return escape(_field_text(model, name, accepts, default))


def pairs_help(model: type[BaseModel], lead: str, skip: tuple[str, ...] = (),
               aliases: dict[str, str] | None = None) -> str:
    """The help of a repeated KEY=VALUE option whose keys are the fields of `model` (but `skip`):
    `lead`, then a paragraph per key with the field's description, what it accepts and its default."""
    keys = [f"{name}{f' (or {aliases[name]})' if name in (aliases or {}) else ''}: "
            f"{_field_text(model, name, default=True, repeat=False)}"
            for name in model.model_fields if name not in skip]
    return escape("\n\n".join([lead, *keys]))


def form_field_help(spec: dict, more: str | None = None) -> str:
    """The help of an upload option for a field of a multipart form (kdserve.service.forms, the
    OpenAPI schema of the field): its description (then `more`, what the CLI adds), what it accepts
    where that says more than its type (values, bounds) and its default."""
    accepts = _accepts(spec)
    return escape(_help_text("; ".join(part for part in (spec.get("description"), more) if part),
                             accepts if accepts != spec.get("type") else None, spec.get("default", _REQUIRED)))


@dataclass(frozen=True)
class SchemaFlag:
    """The flag for field `name` of `model`, the body's section `section` (None: the body itself)."""

    model: type[BaseModel]
    section: str | None
    name: str
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (f"--{self.name.replace('_', '-')}", *self.aliases)

    @property
    def param(self) -> str:
        """The command function's parameter (never one of its own names)."""
        return f"schema__{self.section or 'body'}__{self.name}"

    def option(self) -> Any:
        return typer.Option(None, *self.names, metavar=_metavar(_properties(self.model)[self.name]),
                            help=field_help(self.model, self.name, default=True),
                            rich_help_panel=f"Request body: {self.section}" if self.section else "Request body")

    def parse(self, raw: str) -> Any:
        """The value for the body: `raw` as the field takes it (`6`, `auto`), else as JSON (`null`)."""
        candidates = [raw]
        try:
            candidates.append(json.loads(raw))
        except json.JSONDecodeError:
            pass
        errors = []
        for candidate in candidates:
            checked = self.model.model_construct()
            try:
                self.model.__pydantic_validator__.validate_assignment(checked, self.name, candidate)
                return getattr(checked, self.name)
            except ValidationError as exc:
                errors += [e["msg"] for e in exc.errors()]
        raise typer.BadParameter("; ".join(dict.fromkeys(errors)), param_hint=self.names[0])


def schema_flags(model: type[BaseModel], section: str | None = None, skip: tuple[str, ...] = (),
                 aliases: dict[str, tuple[str, ...]] | None = None) -> Iterator[SchemaFlag]:
    """A flag for every scalar field of `model` but `skip`."""
    for name, schema in _properties(model).items():
        if name not in skip and _is_scalar(schema):
            yield SchemaFlag(model, section, name, (aliases or {}).get(name, ()))


# `jobs create`: every scalar of POST /v1/jobs but the ids, which have flags of their own (--teacher, …)
JOB_FLAGS: tuple[SchemaFlag, ...] = (
    *schema_flags(JobCreate, skip=("teacher_id", "dataset_id", "validation_dataset_id")),
    *schema_flags(TrainingSpec, "training", aliases={"learning_rate": ("--lr",)}),
    *schema_flags(ExportSpec, "export"),
    *schema_flags(TextSpec, "text"),
)

# `search create`: the scalars of POST /v1/searches but the ids (--teacher, …); its sections (targets,
# space, budget) are KEY=VALUE options (`pairs_help`)
SEARCH_FLAGS: tuple[SchemaFlag, ...] = tuple(
    schema_flags(SearchCreate, skip=("teacher_id", "dataset_id", "validation_dataset_id")))


def with_schema_flags(flags: tuple[SchemaFlag, ...]) -> Callable[[Callable], Callable]:
    """Add `flags` to a typer command. The command function takes `schema_values`: the values
    given, checked, by section ({"training": {"epochs": 6}, None: {"baseline": True}})."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values: dict[str | None, dict[str, Any]] = {}
            for flag in flags:
                raw = kwargs.pop(flag.param)
                if raw is not None:
                    values.setdefault(flag.section, {})[flag.name] = flag.parse(raw)
            return fn(*args, **kwargs, schema_values=values)

        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "schema_values"]
        added = [inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, default=flag.option(),
                                   annotation=Optional[str]) for flag in flags]
        command.__signature__ = inspect.Signature([*own, *added])  # what typer reads the options from
        command.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k != "schema_values"},
                                   **{flag.param: Optional[str] for flag in flags}}
        return command

    return decorate


def merge_values(body: dict[str, Any], values: dict[str | None, dict[str, Any]]) -> None:
    """Put the flags' values into a request body (e.g. a job.json), over what it has."""
    for section, fields in values.items():
        if section is None:
            body.update(fields)
        else:
            body[section] = {**body.get(section, {}), **fields}
