"""`kdserve webhooks …`: endpoints that get the service's events (job and search status changes,
models published, variants withheld) as signed POSTs, their deliveries, replays and a test event."""

from __future__ import annotations

from typing import Optional

import typer

from kdserve.cli.render import deliveries_table, out, print_json, print_one, print_page, webhook_card, webhooks_table
from kdserve.cli.resources import (AFTER_OPTION, JSON_OPTION, LIMIT_OPTION, QUIET_OPTION, api_command, client,
                                   delete_command, list_command, show_command)
from kdserve.service.vocab import WEBHOOK_EVENTS, choices

webhooks_app = typer.Typer(help="Webhooks: the service POSTs its events to your endpoints, signed (Standard "
                           "Webhooks).", no_args_is_help=True)

EVENTS_HELP = f"an event type to send (repeat for more; default: every one): {choices(WEBHOOK_EVENTS)}"


@webhooks_app.command("create")
@api_command
def webhooks_create(ctx: typer.Context, url: str = typer.Argument(..., help="http(s) URL the events are POSTed to"),
                    event: Optional[list[str]] = typer.Option(None, "--event", "-e", help=EVENTS_HELP),
                    description: Optional[str] = typer.Option(None, "--description", help="what it is for"),
                    secret: Optional[str] = typer.Option(None, "--secret", help="the signing secret (\"whsec_\" + "
                                                         "base64 of 24-64 bytes); default: one is made"),
                    as_json: bool = JSON_OPTION):
    """Add an endpoint. Its signing secret is printed: verify each delivery's webhook-signature with it."""
    with client(ctx) as kd:
        hook = kd.webhooks.create(url, events=event or None, description=description, secret=secret)
    print_one(hook, lambda w: out.print(webhook_card(w)), as_json)


list_command(webhooks_app, "webhooks", webhooks_table, "Webhook endpoints, newest first (secrets not shown).")
show_command(webhooks_app, "webhooks", "webhook_id", lambda w: out.print(webhook_card(w)),
             "One endpoint, with its signing secret.")
delete_command(webhooks_app, "webhooks", "webhook_id", "Delete an endpoint and its deliveries.")


@webhooks_app.command("update")
@api_command
def webhooks_update(ctx: typer.Context, webhook_id: str,
                    url: Optional[str] = typer.Option(None, "--url", help="a new URL (checked like a new one)"),
                    event: Optional[list[str]] = typer.Option(None, "--event", "-e", help=EVENTS_HELP),
                    description: Optional[str] = typer.Option(None, "--description"),
                    enabled: Optional[bool] = typer.Option(None, "--enable/--disable", help="disabled: nothing is "
                                                           "sent, pending deliveries included"),
                    as_json: bool = JSON_OPTION):
    """Change an endpoint's URL, events, description, or switch it on or off."""
    with client(ctx) as kd:
        hook = kd.webhooks.update(webhook_id, url=url, events=event or None, description=description, enabled=enabled)
    print_one(hook, lambda w: out.print(webhook_card(w)), as_json)


@webhooks_app.command("deliveries")
@api_command
def webhooks_deliveries(ctx: typer.Context, webhook_id: str,
                        status: Optional[str] = typer.Option(None, help="pending | succeeded | failed"),
                        limit: int = LIMIT_OPTION, after: Optional[str] = AFTER_OPTION, as_json: bool = JSON_OPTION,
                        quiet: bool = QUIET_OPTION):
    """An endpoint's deliveries, newest first: each attempt's answer or error (--json: every attempt)."""
    with client(ctx) as kd:
        page = kd.webhooks.deliveries(webhook_id, status=status, limit=limit, after=after)
    print_page(page, deliveries_table, as_json, quiet)


@webhooks_app.command("replay")
@api_command
def webhooks_replay(ctx: typer.Context, webhook_id: str, delivery_id: str, as_json: bool = JSON_OPTION):
    """Send a delivery's message again (a new delivery with the same webhook-id)."""
    with client(ctx) as kd:
        delivery = kd.webhooks.replay(webhook_id, delivery_id)
    if as_json:
        return print_json(delivery)
    out.print(f"{delivery.id}: {delivery.event_type} queued again (message {delivery.message_id})")


@webhooks_app.command("test")
@api_command
def webhooks_test(ctx: typer.Context, webhook_id: str, as_json: bool = JSON_OPTION):
    """Send a webhook.test event; see how it went with `kdserve webhooks deliveries`."""
    with client(ctx) as kd:
        delivery = kd.webhooks.test(webhook_id)
    if as_json:
        return print_json(delivery)
    out.print(f"{delivery.id}: webhook.test queued; `kdserve webhooks deliveries {webhook_id}` shows its attempts")
