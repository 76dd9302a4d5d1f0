"""`kdserve jobs …`: start, follow and cancel distillation jobs, with a live progress bar."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TaskProgressColumn, TextColumn
from rich.text import Text

from kdserve.cli.render import event_line, job_table, jobs_table, num, out, pct, print_json, print_page
from kdserve.cli.resources import (AFTER_OPTION, JSON_OPTION, LIMIT_OPTION, QUIET_OPTION, api_command, client,
                                   json_file, parse_pairs, print_events, show_command)
from kdserve.cli.schema_flags import JOB_FLAGS, field_help, merge_values, with_schema_flags
from kdserve.client import Client, job_body
from kdserve.service.schemas import EventOut, ExportSpec, JobOut, MethodSpec, StudentSpec

jobs_app = typer.Typer(help="Start, follow and cancel distillation jobs.", no_args_is_help=True)


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
            fields["loss"] = num(data.get("val_loss") if data.get("val_loss") is not None else data.get("train_loss"))
            acc = data.get("val_accuracy") if data.get("val_accuracy") is not None else data.get("val_agreement")
            fields["acc"] = pct(acc) or "–"
        if event.type == "stage" or time.monotonic() - self._read_at > 1.0:  # stages are few: always re-read
            self._read_at = time.monotonic()
            self.job = self.kd.jobs.get(self.job.id)
            fields.update(completed=self.job.progress, eta=self.job.estimated_finish)
        self.progress.update(self.task, **fields)

    def finish(self, job: JobOut) -> None:
        self.progress.update(self.task, completed=job.progress, stage=job.status, epoch=job.epoch, eta=None)


def follow_job(kd: Client, job: JobOut, as_json: bool) -> JobOut:
    """Wait for the job, with a live bar unless the output is JSON."""
    if as_json:
        return kd.jobs.wait(job.id)
    with JobProgress(kd, job, out) as bar:
        final = kd.jobs.wait(job.id, on_event=bar.on_event)
        bar.finish(final)
    return final


def job_outcome(job: JobOut, as_json: bool) -> None:
    """The ended job (JSON or a table); exit status 1 unless it succeeded."""
    if as_json:
        print_json(job)
    else:
        out.print(job_table(job))
        if job.model_id:
            out.print(f"model card: kdserve models show {job.model_id}")
    if job.status != "succeeded":
        raise typer.Exit(1)


def _merge_sections(body: dict[str, Any], student, student_param, method, param) -> None:
    """--student/--method name the architecture/method; their k=v params merge into the file's."""
    for key, name_field, name, pairs, option in (("student", "architecture", student, student_param, "--student-param"),
                                                 ("method", "name", method, param, "--param")):
        section = dict(body.get(key) or {})
        if name:
            section[name_field] = name
        extra = parse_pairs(pairs, option)
        if extra:
            section["params"] = {**section.get("params", {}), **extra}
        if section:
            body[key] = section


@jobs_app.command("create")
@api_command
@with_schema_flags(JOB_FLAGS)
def jobs_create(
    ctx: typer.Context,
    file: Optional[Path] = typer.Option(None, "--file", help="a job.json with the request body (flags override it)"),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="teacher id"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset id"),
    validation_dataset: Optional[str] = typer.Option(None, "--validation-dataset", help="dataset id for validation "
                                                     "(instead of --validation-split of the dataset)"),
    student: Optional[str] = typer.Option(None, "--student",
                                          help=field_help(StudentSpec, "architecture", accepts=False)),
    student_param: Optional[list[str]] = typer.Option(None, "--student-param", help="architecture param KEY=VALUE "
                                                      "(repeat; VALUE as JSON, e.g. hidden_sizes=[64])"),
    method: Optional[str] = typer.Option(None, "--method", help=field_help(MethodSpec, "name", accepts=False)),
    param: Optional[list[str]] = typer.Option(None, "--param", help="method param KEY=VALUE (repeat), e.g. temperature=4"),
    quantize: Optional[list[str]] = typer.Option(None, "--quantize", help=field_help(ExportSpec, "quantize")),
    metadata: Optional[list[str]] = typer.Option(None, "--metadata", help="KEY=VALUE kept with the job (repeat)"),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key", help="the same key and body return "
                                                  "the same job"),
    wait: bool = typer.Option(False, "--wait", help="follow the job with a live progress bar until it ends"),
    as_json: bool = JSON_OPTION,
    schema_values: Optional[dict] = None,  # the request body's flags, by section (with_schema_flags)
):
    """Start a distillation job from flags and/or --file job.json. With --wait, exit status 0
    means the job succeeded. The request body's fields (below) are described, with their
    defaults, as the API's schema describes them (GET /openapi.json, JobCreate)."""
    body = json_file(file)
    _merge_sections(body, student, student_param, method, param)
    if quantize:
        schema_values.setdefault("export", {})["quantize"] = quantize
    merge_values(body, schema_values)
    if metadata:
        body["metadata"] = {**body.get("metadata", {}), **{k: str(v) for k, v in parse_pairs(metadata, "--metadata").items()}}
    body = job_body(body, teacher_id=teacher, dataset_id=dataset, validation_dataset_id=validation_dataset)
    with client(ctx) as kd:
        job = kd.jobs.create(body, idempotency_key=idempotency_key)
        if not wait:
            if as_json:
                return print_json(job)
            out.print(f"queued {job.id}: follow it with `kdserve jobs logs -f {job.id}`")
            return
        if not as_json:
            out.print(f"queued {job.id}")
        final = follow_job(kd, job, as_json)
    job_outcome(final, as_json)


@jobs_app.command("wait")
@api_command
def jobs_wait(ctx: typer.Context, job_id: str, as_json: bool = JSON_OPTION):
    """Follow a job with a live progress bar until it ends; exit status 0 means it succeeded."""
    with client(ctx) as kd:
        final = follow_job(kd, kd.jobs.get(job_id), as_json)
    job_outcome(final, as_json)


@jobs_app.command("list")
@api_command
def jobs_list(ctx: typer.Context, status: Optional[str] = typer.Option(None, help="queued | running | succeeded | "
                                                                        "failed | cancelled"),
              limit: int = LIMIT_OPTION, after: Optional[str] = AFTER_OPTION, as_json: bool = JSON_OPTION,
              quiet: bool = QUIET_OPTION):
    """Jobs, newest first."""
    with client(ctx) as kd:
        page = kd.jobs.list(status=status, limit=limit, after=after)
    print_page(page, jobs_table, as_json, quiet)


show_command(jobs_app, "jobs", "job_id", lambda job: out.print(job_table(job)),
             "One job: status, stage, progress, metrics, error.")


@jobs_app.command("cancel")
@api_command
def jobs_cancel(ctx: typer.Context, job_id: str, as_json: bool = JSON_OPTION):
    """Cancel a job: a queued one at once, a running one within seconds."""
    with client(ctx) as kd:
        job = kd.jobs.cancel(job_id)
    if as_json:
        return print_json(job)
    out.print(f"{job.id}: {job.status}" + (" (stopping at the next batch)" if job.status == "running" else ""))


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
            out.print(event_line(e))

    with client(ctx) as kd:
        print_events(kd.jobs, job_id, follow, show)
