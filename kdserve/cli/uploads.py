"""`kdserve teachers …` and `kdserve datasets …`: the two resources that are uploaded files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kdserve.cli.render import dataset_card, dataset_table, out, teacher_card, teacher_table
from kdserve.cli.resources import (JSON_OPTION, api_command, delete_command, list_command, parse_json_option,
                                   show_command, upload)
from kdserve.cli.schema_flags import form_field_help
from kdserve.service.forms import DATASET_FIELDS, TEACHER_FIELDS
from kdserve.service.vocab import DATASET_FORMATS, TEACHER_FORMATS, choices, describe

teachers_app = typer.Typer(help=f"Upload and manage teachers ({choices(TEACHER_FORMATS)}).", no_args_is_help=True)
datasets_app = typer.Typer(help=f"Upload and manage datasets ({choices(DATASET_FORMATS)}).", no_args_is_help=True)


def form_option(fields: dict[str, dict], name: str, more: str | None = None):
    """The option for form field `name` (kdserve.service.forms: what the API documents and /openapi.json
    shows): its help is the field's description, values and default, then `more`, what only the CLI adds."""
    return typer.Option(None, help=form_field_help(fields[name], more))


NAME_MORE = "a name (default: the file name)"  # the form documents only its length


@teachers_app.command("upload")
@api_command
def teachers_upload(ctx: typer.Context, path: Path = typer.Argument(..., help=describe(TEACHER_FORMATS)),
                    data: Optional[Path] = form_option(TEACHER_FIELDS, "data", "or upload a zip of both as PATH"),
                    name: Optional[str] = form_option(TEACHER_FIELDS, "name", NAME_MORE),
                    format: Optional[str] = form_option(TEACHER_FIELDS, "format"),
                    input_shape: Optional[str] = form_option(TEACHER_FIELDS, "input_shape", "e.g. '[64]', when the "
                                                             "file cannot tell"),
                    task: Optional[str] = form_option(TEACHER_FIELDS, "task"),
                    as_json: bool = JSON_OPTION):
    """Upload a teacher; the service loads and test-runs it before accepting it."""
    shape = parse_json_option(input_shape, "--input-shape")
    upload(ctx, "teachers", path, teacher_table, as_json, data=data, name=name, format=format, input_shape=shape,
           task=task)


@datasets_app.command("upload")
@api_command
def datasets_upload(ctx: typer.Context, path: Path = typer.Argument(..., help=describe(DATASET_FORMATS)),
                    label_column: Optional[str] = form_option(DATASET_FIELDS, "label_column"),
                    text_column: Optional[str] = form_option(DATASET_FIELDS, "text_column"),
                    text_pair_column: Optional[str] = form_option(DATASET_FIELDS, "text_pair_column"),
                    name: Optional[str] = form_option(DATASET_FIELDS, "name", NAME_MORE),
                    format: Optional[str] = form_option(DATASET_FIELDS, "format", "detected when omitted"),
                    as_json: bool = JSON_OPTION):
    """Upload a dataset; it is parsed and checked at the door."""
    upload(ctx, "datasets", path, dataset_table, as_json, label_column=label_column, text_column=text_column,
           text_pair_column=text_pair_column, name=name, format=format)


def _list_show_delete(group: typer.Typer, kind: str, id_name: str, table, card, docs: tuple[str, str, str]) -> None:
    """The commands that are the same for teachers and datasets (after `upload` in --help)."""
    list_command(group, kind, table, docs[0])
    show_command(group, kind, id_name, lambda value: out.print(card(value)), docs[1])
    delete_command(group, kind, id_name, docs[2])


_list_show_delete(teachers_app, "teachers", "teacher_id", teacher_table, teacher_card, (
    "Teachers, newest first.", "One teacher, with its outputs.", "Delete a teacher (refused while a job uses it)."))
_list_show_delete(datasets_app, "datasets", "dataset_id", dataset_table, dataset_card, (
    "Datasets, newest first.", "One dataset, with its class counts.",
    "Delete a dataset (refused while a job uses it)."))
