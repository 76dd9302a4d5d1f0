"""`kdserve models …` (model cards, downloads) and `kdserve predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from kdserve.cli.render import models_table, out, print_json, print_model_card, size
from kdserve.cli.resources import (JSON_OPTION, api_command, client, delete_command, list_command, parse_json_option,
                                   show_command)
from kdserve.client import Client, DownloadResult
from kdserve.service.vocab import DEFAULT_PRECISION, PRECISIONS, choices

models_app = typer.Typer(help="Distilled students: model cards and downloads.", no_args_is_help=True)

list_command(models_app, "models", models_table, "Distilled students, newest first.")
show_command(models_app, "models", "model_id", print_model_card,
             "The model card: accuracy, agreement with the teacher, size and latency of each artifact.")
delete_command(models_app, "models", "model_id", "Delete a model and its files (it is no longer served).")


def download(kd: Client, model_id: str, output: Optional[Path], precision: str, format: str,
             as_json: bool) -> DownloadResult:
    """Download an artifact, with a progress bar unless the output is JSON."""
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
                    precision: str = typer.Option(DEFAULT_PRECISION, help=f"{choices(PRECISIONS)} (what the card lists)"),
                    format: str = typer.Option("onnx"),
                    as_json: bool = JSON_OPTION):
    """Download a student (resumes an interrupted download; checks its sha256)."""
    with client(ctx) as kd:
        result = download(kd, model_id, output, precision, format, as_json)
    if as_json:
        return print_json(result)
    resumed = f" (resumed after {size(result.resumed_from)})" if result.resumed_from else ""
    out.print(f"saved {result.path}  {size(result.size_bytes)}  sha256 {result.sha256}{resumed}")


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


@models_app.command("evaluate")
@api_command
def models_evaluate(ctx: typer.Context, model_id: str,
                    input: Optional[Path] = typer.Option(None, "--input", "-i", help="a test set file (CSV, npz, as "
                                                         "`datasets upload` takes): uploaded, scored, then deleted"),
                    dataset_id: Optional[str] = typer.Option(None, "--dataset-id", help="a dataset already uploaded"),
                    label_column: Optional[str] = typer.Option(None, "--label-column", help="--input CSV: the label "
                                                               "column (default: one named label/target/class/y)"),
                    precision: str = typer.Option(DEFAULT_PRECISION, help=f"which file to score: {choices(PRECISIONS)}"),
                    keep: bool = typer.Option(False, "--keep", help="--input: keep the uploaded dataset"),
                    as_json: bool = JSON_OPTION):
    """Score a student on rows of yours, e.g. a test set its teacher never saw
    (POST /v1/models/{id}/evaluate): accuracy on the labelled rows and the spread of predictions."""
    if (input is None) == (dataset_id is None):
        raise typer.BadParameter("give exactly one of --input FILE or --dataset-id ID")
    with client(ctx) as kd:
        uploaded = kd.datasets.create(input, label_column=label_column) if input is not None else None
        try:
            result = kd.models.evaluate(model_id, dataset_id or uploaded.id, precision=precision)
        finally:
            if uploaded is not None and not keep:
                kd.datasets.delete(uploaded.id)
    if as_json:
        return print_json(result)
    accuracy = f"{result.accuracy:.4f}" if result.accuracy is not None else "– (no labelled rows)"
    out.print(f"{model_id} ({result.precision}) on {result.rows:,} rows ({result.labelled:,} labelled): "
              f"accuracy {accuracy}")
    table = Table("predicted class", "rows")
    for name, count in sorted(result.predicted_counts.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{count:,}")
    out.print(table)


@api_command
def predict(ctx: typer.Context, model_id: str,
            input: Optional[Path] = typer.Option(None, "--input", "-i", help=".json, .npy, .npz (x) or .csv samples"),
            data: Optional[str] = typer.Option(None, "--data", help="samples as JSON, e.g. '[[0.1, 0.2, …]]'"),
            precision: str = typer.Option(DEFAULT_PRECISION, help=f"which artifact serves the request: {choices(PRECISIONS)}"),
            as_json: bool = JSON_OPTION):
    """Run a distilled student on a batch of samples (POST /v1/models/{id}/predict)."""
    if (input is None) == (data is None):
        raise typer.BadParameter("give exactly one of --input FILE or --data JSON")
    inputs = _read_inputs(input) if input is not None else parse_json_option(data, "--data")
    with client(ctx) as kd:
        result = kd.models.predict(model_id, inputs, precision=precision)
    if as_json:
        return print_json(result)
    table = Table("sample", "prediction", "top logit", "margin")
    names = result.labels or [None] * len(result.predictions)
    for i, (logits, label, name) in enumerate(zip(result.logits, result.predictions, names)):
        top = sorted(logits, reverse=True)
        table.add_row(str(i), f"{label} ({name})" if name else str(label), f"{top[0]:.3f}",
                      f"{top[0] - top[1]:.3f}" if len(top) > 1 else "")
    out.print(table)
