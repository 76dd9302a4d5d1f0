"""`kdserve search …`: start a search for the best student within targets, follow its trials in a
live table, read its recommendation and Pareto front, cancel it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live

from kdserve.cli.render import (event_line, out, print_json, print_page, print_table, search_card, searches_table,
                                trials_table, whole_ids)
from kdserve.cli.resources import (AFTER_OPTION, JSON_OPTION, LIMIT_OPTION, QUIET_OPTION, api_command, client,
                                   json_file, parse_pairs, print_events, show_command)
from kdserve.cli.schema_flags import SEARCH_FLAGS, field_help, merge_values, pairs_help, with_schema_flags
from kdserve.client import Client, search_body
from kdserve.service.schemas import EventOut, SearchBudget, SearchOut, SearchSpace, SearchTargets

searches_app = typer.Typer(help="Search for the best student within targets (latency, size, accuracy).",
                           no_args_is_help=True)


def follow_search(kd: Client, search: SearchOut, as_json: bool) -> SearchOut:
    """Wait for the search; unless the output is JSON, a live table of its trials (re-read as
    trials start and end, at most once a second)."""
    if as_json:
        return kd.searches.wait(search.id)
    read_at = 0.0

    def draw() -> object:
        s = kd.searches.get(search.id)
        title = (f"search {s.id}: {s.status}, {s.trials.started}/{s.budget.get('trials')} trials started, "
                 f"{s.trials.succeeded} succeeded, {s.trials.pruned} pruned")
        return whole_ids(trials_table(kd.searches.trials(search.id).data, title=title))

    with Live(draw(), console=out, refresh_per_second=2) as live:
        def on_event(event: EventOut) -> None:
            nonlocal read_at
            if time.monotonic() - read_at > 1.0 or event.type == "stage":
                read_at = time.monotonic()
                live.update(draw())

        final = kd.searches.wait(search.id, on_event=on_event)
        live.update(draw())
    return final


def search_outcome(search: SearchOut, as_json: bool) -> None:
    """The ended search (JSON or its card); exit status 1 unless it succeeded with a recommendation."""
    if as_json:
        print_json(search)
    else:
        out.print(search_card(search))
        if search.result.recommended:
            r = search.result.recommended
            out.print(f"download it: kdserve models download {r.model_id} --precision {r.precision}")
    if search.status != "succeeded" or not search.result.meets_targets:
        raise typer.Exit(1)


# `--target accuracy=0.97` is short for the floor min_accuracy
TARGET_ALIASES = {"min_accuracy": "accuracy", "min_agreement": "agreement"}


@searches_app.command("create")
@api_command
@with_schema_flags(SEARCH_FLAGS)
def search_create(
    ctx: typer.Context,
    file: Optional[Path] = typer.Option(None, "--file", help="a search.json with the request body (flags override it)"),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="teacher id"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset id"),
    validation_dataset: Optional[str] = typer.Option(None, "--validation-dataset", help="dataset id for validation "
                                                     "(instead of --validation-split of the dataset)"),
    target: Optional[list[str]] = typer.Option(
        None, "--target", rich_help_panel="Request body: targets",
        help=pairs_help(SearchTargets, "KEY=VALUE (repeat; VALUE as JSON), e.g. latency_ms=2 accuracy=0.97; a "
                        "target left out is none. Keys:", aliases=TARGET_ALIASES)),
    budget: Optional[list[str]] = typer.Option(
        None, "--budget", rich_help_panel="Request body: budget",
        help=pairs_help(SearchBudget, "KEY=VALUE (repeat; VALUE as JSON), e.g. trials=40. Keys:")),
    method: Optional[list[str]] = typer.Option(
        None, "--method", rich_help_panel="Request body: space",
        help=field_help(SearchSpace, "methods", accepts=False) + " (repeat the flag for more than one)"),
    space: Optional[list[str]] = typer.Option(
        None, "--space", rich_help_panel="Request body: space",
        help=pairs_help(SearchSpace, "KEY=VALUE (repeat; VALUE as JSON), e.g. learning_rate=[1e-4,1e-2] "
                        "precisions='[\"fp32\",\"int8\"]'. Keys:")),
    wait: bool = typer.Option(False, "--wait", help="follow the trials in a live table until the search ends"),
    as_json: bool = JSON_OPTION,
    schema_values: Optional[dict] = None,  # the request body's scalar flags (with_schema_flags)
):
    """Start a search: trials (jobs) chosen by Optuna within the targets; the result is the
    cheapest file that meets every target. With --wait, exit status 0 means one did. The request
    body's fields (below; the sections' as KEY=VALUE) are described, with their defaults, as the
    API's schema describes them (GET /openapi.json, SearchCreate)."""
    body = json_file(file)
    merge_values(body, schema_values)
    targets = parse_pairs(target, "--target")
    for name, short in TARGET_ALIASES.items():  # --target accuracy=0.97 is a floor
        if short in targets:
            targets[name] = targets.pop(short)
    if targets:
        body["targets"] = {**body.get("targets", {}), **targets}
    if budget:
        body["budget"] = {**body.get("budget", {}), **parse_pairs(budget, "--budget")}
    space_fields = parse_pairs(space, "--space")
    if method:
        space_fields["methods"] = method
    if space_fields:
        body["space"] = {**body.get("space", {}), **space_fields}
    body = search_body(body, teacher_id=teacher, dataset_id=dataset, validation_dataset_id=validation_dataset)
    with client(ctx) as kd:
        search = kd.searches.create(body)
        if not wait:
            if as_json:
                return print_json(search)
            out.print(f"queued {search.id}: {len(search.space['methods'])} methods × {len(search.space['students'])} "
                      f"students, {search.budget['trials']} trials; follow it with `kdserve search wait {search.id}`")
            return
        if not as_json:
            out.print(f"queued {search.id}")
        final = follow_search(kd, search, as_json)
    search_outcome(final, as_json)


@searches_app.command("wait")
@api_command
def search_wait(ctx: typer.Context, search_id: str, as_json: bool = JSON_OPTION):
    """Follow a search's trials in a live table until it ends."""
    with client(ctx) as kd:
        final = follow_search(kd, kd.searches.get(search_id), as_json)
    search_outcome(final, as_json)


@searches_app.command("list")
@api_command
def search_list(ctx: typer.Context, limit: int = LIMIT_OPTION, after: Optional[str] = AFTER_OPTION,
                as_json: bool = JSON_OPTION, quiet: bool = QUIET_OPTION):
    """Searches, newest first."""
    with client(ctx) as kd:
        page = kd.searches.list(limit=limit, after=after)
    print_page(page, searches_table, as_json, quiet)


show_command(searches_app, "searches", "search_id", lambda s: out.print(search_card(s)),
             "One search: targets, trials, the recommendation and the Pareto front.")


@searches_app.command("trials")
@api_command
def search_trials(ctx: typer.Context, search_id: str, as_json: bool = JSON_OPTION):
    """Every trial: the optimizer's choice, its status and best file."""
    with client(ctx) as kd:
        page = kd.searches.trials(search_id)
    if as_json:
        return print_json(page)
    print_table(trials_table(page.data))


@searches_app.command("cancel")
@api_command
def search_cancel(ctx: typer.Context, search_id: str, as_json: bool = JSON_OPTION):
    """Cancel a search: queued trials at once, running ones at their next batch."""
    with client(ctx) as kd:
        search = kd.searches.cancel(search_id)
    if as_json:
        return print_json(search)
    out.print(f"{search.id}: {search.status}")


@searches_app.command("logs")
@api_command
def search_logs(ctx: typer.Context, search_id: str,
                follow: bool = typer.Option(False, "--follow", "-f", help="keep printing events until it ends")):
    """A search's events (trials queued and ended, the result); -f follows them live."""
    with client(ctx) as kd:
        print_events(kd.searches, search_id, follow, lambda e: out.print(event_line(e)))
