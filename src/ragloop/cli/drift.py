"""``ragloop drift`` and ``ragloop alerts``: is the served model still fit for the questions it gets and the
knowledge base it reads, and what the unattended checks raised (logic in ``ragloop.monitoring.drift`` and
``ragloop.monitoring.alerts``; the same functions answer ``/api/drift`` and ``/api/alerts``)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from ragloop.cli.common import HomeOpt, JsonOpt, console, home_settings

DEFAULT_ALIAS = "production"  # the store's default alias, named here so `ragloop --help` imports no store
DRIFT_EXIT = 3  # 1 is an error and 2 a usage error (Typer's): a scheduler can tell drift from a failure

_SEVERITY_STYLE = {"critical": "bold red", "warn": "yellow", "info": "cyan"}
_VERDICT_STYLE = {"ok": "green", "warn": "yellow", "drift": "bold red", "not enough data": "dim"}


def parse_window(text: str) -> dict[str, Any]:
    """``7d`` or ``36h``: that many days or hours back from now; ``500``: the last 500 records."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dh]?)\s*", text.lower())
    if found is None or float(found.group(1)) <= 0:
        raise typer.BadParameter(f"--window takes 7d (days), 36h (hours) or 500 (records), got {text!r}")
    number, unit = float(found.group(1)), found.group(2)
    if unit == "d":
        return {"window_days": number}
    if unit == "h":
        return {"window_days": number / 24}
    if not number.is_integer():
        raise typer.BadParameter(f"--window in records takes a whole number, got {text!r}")
    return {"last_n": int(number)}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _verdict(verdict: str) -> str:
    style = _VERDICT_STYLE.get(verdict, "")
    return f"[{style}]{verdict}[/]" if style else verdict


def drift(
    model: Annotated[
        str, typer.Option("--model", help="The alias (or version id) whose served version is checked.")
    ] = DEFAULT_ALIAS,
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="Live records to compare: 7d (days back), 36h (hours back) or 500 (the last 500 "
            "records). Default: drift.window_days (or drift.window_n).",
        ),
    ] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Is the served version drifting? Live questions, scores, feedback and KB against its training.

    Compares the version's live questions, dense retrieval scores, feedback and answers with its training
    data, and its knowledge base now with the one it was trained on. Each signal has its statistic,
    threshold and verdict (ok, warn, drift, not enough data); the report is stored and, for warn or drift,
    raises an alert. Exit code: 3 when the verdict is drift; 0 when it is ok, warn or not enough data; 1 on
    an error. See docs/drift.md."""
    from ragloop.monitoring import alerts
    from ragloop.monitoring.drift import run_drift

    options = parse_window(window) if window else {}
    report = run_drift(home_settings(home), model_version=model, source="cli", **options)
    alerts.wait_for_deliveries(30.0)  # a webhook post under way finishes before the process ends
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)
    if report.get("verdict") == "drift":
        raise typer.Exit(code=DRIFT_EXIT)


def _print_report(report: dict[str, Any]) -> None:
    w = report.get("window") or {}
    ref = report.get("reference") or {}
    console.print(
        f"[bold]{report.get('model_version')}[/]"
        + (f" ({report['alias']})" if report.get("alias") else "")
        + f" · embedder {report.get('embedder')} · KB trained {report.get('kb_version_trained') or '–'}, "
        f"now {report.get('kb_version_now') or '–'}",
        highlight=False,
    )
    console.print(
        f"window: {w.get('n', 0)} records, {w.get('since') or '…'} → {w.get('until') or 'now'}"
        + (f" (last {w['last_n']})" if w.get("last_n") else "")
        + f" · reference: {ref.get('n_questions', 0)} questions"
        + (f" of dataset {ref['dataset_id']}" if ref.get("dataset_id") else "")
        + (f" ({ref['note']})" if ref.get("note") else ""),
        highlight=False,
    )
    # Numbers and verdicts whole. The statistic goes under the signal's name, where it wraps: a column of
    # its own was squeezed to nothing in an 80-column terminal by the five columns that must not wrap.
    whole = {"no_wrap": True}
    table = Table(
        Column("signal · statistic", min_width=22, ratio=1), Column("value", **whole),
        Column("threshold", **whole), Column("verdict", **whole), Column("n ref / cur", **whole),
    )  # fmt: skip
    for sig in report.get("signals") or []:
        table.add_row(
            f"{sig['name']}\n[dim]{escape(sig.get('statistic', ''))}[/]",
            _fmt(sig.get("value")),
            _fmt(sig.get("threshold")),
            _verdict(sig.get("verdict", "")),
            f"{sig.get('n_reference', 0)} / {sig.get('n_current', 0)}",
        )
    console.print(table)

    topics = (report.get("coverage") or {}).get("topics") or []
    if topics:
        console.print("[bold]questions the knowledge base does not cover, by topic[/]")
        for t in topics[:10]:
            console.print(f"  {t.get('label')} ({t.get('n')})", highlight=False)

    kb = report.get("kb_changes") or {}
    if kb:
        console.print(
            f"[bold]knowledge base since training[/] (version {_fmt(kb.get('kb_version_trained'))} → "
            f"{_fmt(kb.get('kb_version_now'))}): documents {kb.get('added', 0)} added, {kb.get('replaced', 0)} "
            f"replaced, {kb.get('removed', 0)} removed ({kb.get('chunks_added', 0)} passages added, "
            f"{kb.get('chunks_removed', 0)} removed); of {kb.get('training_examples', 0)} training examples, "
            f"{kb.get('gold_changed', 0)} have a changed and {kb.get('gold_deleted', 0)} a deleted gold passage "
            f"(share {_fmt(kb.get('share'))})",
            highlight=False,
        )
        if kb.get("note"):
            console.print(f"  {kb['note']}", highlight=False)
        docs = kb.get("changed_documents") or []
        for d in docs[:10]:
            gold = f", gold of {d['gold_examples']} training examples" if d.get("gold_examples") else ""
            console.print(
                f"  {d.get('change')}: {d.get('source_path') or d.get('doc_id')}{gold}", highlight=False
            )
        more = (kb.get("n_changed_documents") or len(docs)) - min(len(docs), 10)
        if more > 0:
            console.print(f"  … and {more} more documents")

    console.print(f"verdict: {_verdict(report.get('verdict', ''))}")
    rec = report.get("recommendation") or {}
    if rec.get("retrain"):
        console.print("[bold red]retrain recommended[/]")
        for reason in rec.get("reasons") or []:
            console.print(f"  - {reason}", highlight=False)
        for command in rec.get("commands") or []:
            console.print(f"  $ {command}", highlight=False, soft_wrap=True)
    elif rec.get("reasons"):
        for reason in rec["reasons"]:
            console.print(f"  - {reason}", highlight=False)


def alerts(
    ack: Annotated[int | None, typer.Option("--ack", help="Acknowledge the alert with this id.")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only unacknowledged alerts.")] = False,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only alerts of this kind (drift, guardrail).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Alerts raised by the unattended checks (drift, guardrail rollbacks); --ack ID acknowledges one.

    Newest first, with their webhook delivery. An acknowledged alert leaves the open list, and the same
    condition may then raise a new one."""
    from ragloop.monitoring import alerts as alerting

    settings = home_settings(home)
    if ack is not None:
        done = alerting.acknowledge(settings, ack)
        if as_json:
            print(json.dumps(done, indent=2))
        else:
            console.print(f"alert {done['id']} acknowledged at {done['acknowledged_at']}", highlight=False)
        return
    rows = alerting.list_alerts(settings, limit=max(1, limit), kind=kind, unacknowledged=open_only)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no alerts")
    for a in rows:
        style = _SEVERITY_STYLE.get(a["severity"], "")
        webhook = a["delivery_error"] or ("webhook delivered" if a["delivered_at"] else "")
        state = f"acknowledged {a['acknowledged_at'][:16]}" if a["acknowledged_at"] else "[bold]open[/]"
        head = [f"[{style}]{a['severity']}[/]", a["kind"], a["subject"], state, webhook]
        console.print(
            f"#{a['id']} {a['created_at'][:16]} " + " · ".join(p for p in head if p), highlight=False
        )
        console.print(f"    {a['message']}", highlight=False)
        if a["link"]:
            console.print(f"    {a['link']}", highlight=False)
