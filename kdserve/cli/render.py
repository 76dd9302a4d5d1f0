"""How the CLI prints: the two consoles, JSON, tables and the small formatters they use."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kdserve.service.schemas import EventOut, JobOut, ModelOut

err = Console(stderr=True)
out = Console(highlight=False)


def print_json(value: Any) -> None:
    """Pydantic models, lists of them and plain data, as one JSON document on stdout."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    print(json.dumps(value, indent=2, default=str))


def print_one(value: Any, render: Callable[[Any], None], as_json: bool) -> None:
    """One resource: its JSON, or `render(value)`."""
    if as_json:
        return print_json(value)
    render(value)


def print_page(page, table: Callable[[list], Table], as_json: bool, quiet: bool = False) -> None:
    """One page of a list: JSON as the API sent it, only the ids (`quiet`, one per line, for
    scripts), or a table and how to ask for the next page."""
    if as_json:
        return print_json(page)
    if quiet:
        for row in page.data:
            print(row.id)
        return
    print_table(table(page.data))
    if page.has_more:
        out.print(f"more: --after {page.data[-1].id}")


NARROW = 80  # terminal columns: below this, a list is printed as blocks of `key: value` lines


def print_table(table: Table, console: Console | None = None) -> None:
    """A list: a table, or on a terminal narrower than NARROW one block of `column: value` lines
    per row (empty values left out), where a squashed table would wrap or cut every cell. Ids are
    whole either way (`whole_ids`; a block's lines are never wrapped by rich, only by the terminal)."""
    console = console or out
    if console.width >= NARROW:
        console.print(whole_ids(table))
        return
    if table.title:
        console.print(table.title, style="bold")
    headers = [str(column.header) for column in table.columns]
    for number, row in enumerate(zip(*(column._cells for column in table.columns))):
        if number:
            console.print()
        for header, cell in zip(headers, row):
            if str(cell):
                console.print(Text.assemble((f"{header}: ", "bold"), cell), soft_wrap=True)


def whole_ids(table: Table) -> Table:
    """Columns of ids ("id", "job", …: cells like `job_<24 hex>`) are never cut or wrapped, however
    narrow the terminal: the other columns give way. An id is what the user copies next."""
    for column in table.columns:
        cells = [str(c) for c in column._cells]
        if cells and all(re.fullmatch(r"[a-z]+_[0-9a-f]{24}", c) for c in cells):
            column.no_wrap, column.overflow, column.min_width = True, "fold", max(len(c) for c in cells)
    return table


def when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, fmt: str = ".4f") -> str:
    return "" if x is None else format(x, fmt)


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        if value not in (None, "", [], {}):
            table.add_row(key, value if isinstance(value, Text) else str(value))
    return table


# -- teachers and datasets


def teacher_table(rows) -> Table:
    table = Table("id", "name", "format", "input", "classes", "parameters", "size", "created")
    for t in rows:
        table.add_row(t.id, t.name, t.format, str(t.input_shape), str(t.num_classes), f"{t.num_parameters:,}",
                      size(t.size_bytes), when(t.created_at))
    return table


def teacher_card(t) -> Table:
    outputs = ", ".join(f"{o.get('name')} {o.get('shape')}" + (" (logits)" if o.get("is_logits") else "")
                        for o in t.outputs)
    return kv_table(f"teacher {t.id}", [
        ("name", t.name), ("format", t.format), ("input", f"{t.input_shape} {t.input_dtype}"),
        ("classes", t.num_classes), ("parameters", f"{t.num_parameters:,}"), ("outputs", outputs),
        ("size", size(t.size_bytes)), ("sha256", t.sha256), ("created", when(t.created_at))])


def dataset_table(rows) -> Table:
    table = Table("id", "name", "format", "rows", "features", "labelled", "classes", "size", "created")
    for d in rows:
        table.add_row(d.id, d.name, d.format, f"{d.num_rows:,}", str(d.feature_shape), "yes" if d.labeled else "no",
                      str(d.num_classes or ""), size(d.size_bytes), when(d.created_at))
    return table


def dataset_card(d) -> Table:
    counts = ", ".join(f"{k}: {v}" for k, v in sorted((d.class_counts or {}).items(), key=lambda kv: int(kv[0])))
    return kv_table(f"dataset {d.id}", [
        ("name", d.name), ("format", d.format), ("rows", f"{d.num_rows:,}"), ("features", d.feature_shape),
        ("labelled", "yes" if d.labeled else "no"), ("classes", d.num_classes), ("class counts", counts),
        ("size", size(d.size_bytes)), ("sha256", d.sha256), ("created", when(d.created_at))])


# -- jobs

_STATUS_STYLE = {"queued": "cyan", "running": "yellow", "succeeded": "green", "failed": "red", "cancelled": "magenta"}


def status_text(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def jobs_table(rows) -> Table:
    table = Table("id", "status", "stage", "progress", "epoch", "method", "student", "accuracy", "created")
    for j in rows:
        table.add_row(j.id, status_text(j.status), j.stage or "", pct(j.progress), f"{j.epoch}/{j.epochs}",
                      j.method.get("name", ""), j.student.get("architecture", ""), pct(j.metrics.student_accuracy),
                      when(j.created_at))
    return table


def job_table(j: JobOut) -> Table:
    m = j.metrics
    error = f"{j.error.code}: {j.error.message}" if j.error else None
    return kv_table(f"job {j.id}", [
        ("status", status_text(j.status)), ("stage", j.stage), ("progress", pct(j.progress)),
        ("epoch", f"{j.epoch}/{j.epochs}"), ("teacher", j.teacher_id), ("dataset", j.dataset_id),
        ("student", json.dumps(j.student)), ("method", json.dumps(j.method)), ("training", json.dumps(j.training)),
        ("student accuracy", pct(m.student_accuracy)), ("teacher accuracy", pct(m.teacher_accuracy)),
        ("agreement", pct(m.agreement)), ("train loss", num(m.train_loss)), ("val loss", num(m.val_loss)),
        ("model", j.model_id), ("error", error), ("attempts", j.attempts), ("created", when(j.created_at)),
        ("started", when(j.started_at)), ("finished", when(j.finished_at)),
        ("estimated finish", when(j.estimated_finish)), ("metadata", json.dumps(j.metadata) if j.metadata else None),
        ("warnings", Text("\n".join(f"{w.code}: {w.message}" for w in j.warnings), style="yellow")
         if j.warnings else None)])


def event_line(e: EventOut) -> Text:
    style = {"error": "red", "warning": "yellow"}.get(e.level, "")
    return Text.assemble((when(e.created_at), "dim"), " ", (f"{e.type:<8}", "cyan"), " ", (e.message, style))


# -- models


def models_table(rows) -> Table:
    table = Table("id", "name", "method", "student", "parameters", "compression", "accuracy", "agreement", "created")
    for m in rows:
        table.add_row(m.id, m.name, m.method.get("name", ""), m.student.get("architecture", ""),
                      f"{m.num_parameters:,}", f"{m.compression_ratio:.1f}×" if m.compression_ratio else "",
                      pct(m.metrics.get("student_accuracy")), pct(m.metrics.get("agreement")), when(m.created_at))
    return table


def print_model_card(card: ModelOut, console: Console = out) -> None:
    """The model card as two tables: the model, then one row per artifact (precision)."""
    metrics = card.metrics
    console.print(kv_table(f"model {card.id}", [
        ("name", card.name), ("job", card.job_id), ("teacher", card.teacher_id), ("dataset", card.dataset_id),
        ("method", json.dumps(card.method)), ("student", json.dumps(card.student)),
        ("parameters", f"{card.num_parameters:,}"),
        ("teacher parameters", f"{card.teacher_num_parameters:,}" if card.teacher_num_parameters else None),
        ("compression", f"{card.compression_ratio:.1f}×" if card.compression_ratio else None),
        ("student accuracy", pct(metrics.get("student_accuracy"))),
        ("teacher accuracy", pct(metrics.get("teacher_accuracy"))), ("agreement", pct(metrics.get("agreement"))),
        ("input", f"{card.input.name} {card.input.shape} {card.input.datatype}"),
        ("output", f"{card.output.name} {card.output.shape} {card.output.datatype}"),
        ("created", when(card.created_at))]))
    table = Table("format", "precision", "size", "accuracy", "Δ accuracy", "max |Δ| vs PyTorch", "argmax agreement",
                  "latency b=1", "latency b=64", "sha256", title="artifacts", title_justify="left")
    for a in card.artifacts:
        table.add_row(a.format, a.precision, size(a.size_bytes), pct(a.accuracy),
                      "" if a.accuracy_delta is None else f"{100 * a.accuracy_delta:+.2f} pt",
                      num(a.max_abs_diff, ".2e"), pct(a.argmax_agreement),
                      "" if a.latency_ms_batch1 is None else f"{a.latency_ms_batch1:.3f} ms",
                      "" if a.latency_ms_batch64 is None else f"{a.latency_ms_batch64:.3f} ms", a.sha256[:12] + "…")
    console.print(table)


# -- searches


def _file(c) -> str:
    """A search candidate in one cell: trial, precision, accuracy, latency, size."""
    if c is None:
        return ""
    return (f"trial {c.trial} {c.precision}: accuracy {pct(c.accuracy)}, {num(c.latency_ms)} ms, "
            f"{size(c.size_bytes)}, {c.num_parameters:,} params (model {c.model_id})")


def searches_table(rows) -> Table:
    table = Table("id", "status", "trials", "succeeded", "pruned", "best accuracy", "recommended", "created")
    for s in rows:
        best = s.result.leaderboard[0].accuracy if s.result.leaderboard else None
        rec = s.result.recommended
        table.add_row(s.id, status_text(s.status), f"{s.trials.started}/{s.budget.get('trials')}",
                      str(s.trials.succeeded), str(s.trials.pruned), pct(best),
                      f"trial {rec.trial} {rec.precision}" if rec else "", when(s.created_at))
    return table


def search_card(s) -> Table:
    r = s.result
    targets = ", ".join(f"{k}={v}" for k, v in s.targets.items() if v is not None and k != "batch_size") or "none"
    missing = ", ".join(f"{k} by {v:.1%}" for k, v in r.closest.violations.items()) if r.closest else None
    return kv_table(f"search {s.id}", [
        ("status", status_text(s.status)), ("teacher", s.teacher_id), ("dataset", s.dataset_id),
        ("targets", targets), ("methods", ", ".join(s.space.get("methods") or [])),
        ("students", "; ".join(f"{x['architecture']} {json.dumps(x.get('params', {}))}"
                               for x in s.space.get("students") or [])),
        ("trials", f"{s.trials.started} of {s.budget.get('trials')} started: {s.trials.succeeded} succeeded, "
                   f"{s.trials.pruned} pruned, {s.trials.failed} failed, {s.trials.running} running"),
        ("recommended", _file(r.recommended)), ("closest (misses a target)", _file(r.closest)),
        ("misses", missing), ("Pareto front", "\n".join(_file(c) for c in r.pareto)),
        ("error", f"{s.error.code}: {s.error.message}" if s.error else None),
        ("created", when(s.created_at)), ("finished", when(s.finished_at))])


def trials_table(rows, title: str | None = None) -> Table:
    table = Table("trial", "status", "method", "student", "lr", "T", "epochs", "val score", "best file",
                  "latency ms", "size", "job", title=title, title_justify="left")
    for t in rows:
        p = t.params
        student = p.get("student", {})
        shape = student.get("params", {}).get("hidden_sizes") or student.get("params", {}).get("channels") or ""
        best = max(t.candidates, key=lambda c: (c.accuracy or 0, -(c.latency_ms or 0)), default=None)
        table.add_row(str(t.number), status_text(t.status), p.get("method", ""),
                      f"{student.get('architecture', '')} {shape}", num(p.get("learning_rate"), ".1e"),
                      num(p.get("temperature"), ".1f"), str(t.epochs_run or ""), num(t.value),
                      f"{best.precision} {pct(best.accuracy)}" if best else "", num(best.latency_ms) if best else "",
                      size(best.size_bytes) if best else "", t.job_id)
    return table


# -- webhooks


def webhooks_table(rows) -> Table:
    table = Table("id", "url", "events", "enabled", "description", "created")
    for w in rows:
        table.add_row(w.id, w.url, ", ".join(w.events), "yes" if w.enabled else "no", w.description or "",
                      when(w.created_at))
    return table


def webhook_card(w) -> Table:
    return kv_table(f"webhook {w.id}", [
        ("url", w.url), ("events", ", ".join(w.events)), ("enabled", "yes" if w.enabled else "no"),
        ("description", w.description), ("secret", w.secret), ("created", when(w.created_at)),
        ("updated", when(w.updated_at))])


_DELIVERY_STYLE = {"pending": "cyan", "succeeded": "green", "failed": "red"}


def deliveries_table(rows) -> Table:
    table = Table("id", "event", "status", "attempts", "last attempt", "next attempt", "message", "created")
    for d in rows:
        last = d.attempts[-1] if d.attempts else None
        said = "" if last is None else (str(last.status_code) if last.status_code is not None else "") + (
            f" {last.error}" if last.error else "") + f" ({last.duration_ms:.0f} ms)"
        table.add_row(d.id, d.event_type, Text(d.status, style=_DELIVERY_STYLE.get(d.status, "")), str(len(d.attempts)),
                      said.strip(), when(int(d.next_attempt_at)) if d.next_attempt_at else "", d.message_id,
                      when(d.created_at))
    return table
