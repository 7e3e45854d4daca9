"""``ragloop ask | serve | replay | logs``: answering questions and the record of each answer (stage 3,
logic in ``ragloop.generation``; the server in ``ragloop.serve``)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ragloop.cli.common import HomeOpt, console, err, home_settings


def ask(
    question: Annotated[str, typer.Argument()],
    model: Annotated[str | None, typer.Option(help="Model version or alias.")] = None,
    collection: Annotated[
        list[str] | None, typer.Option(help="Restrict retrieval to these collections.")
    ] = None,
    k: Annotated[int | None, typer.Option(help="Passages to show the model.")] = None,
    max_tokens: Annotated[int | None, typer.Option()] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they come.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the recorded result as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Answer one question with citations, recorded like an API call."""
    from ragloop.generation.assistant import AnswerRequest, AnswerResult, Assistant, answer_record

    settings = home_settings(home)
    assistant = Assistant(settings)
    req = AnswerRequest(
        messages=[{"role": "user", "content": question}],
        model=model,
        k=k,
        max_tokens=max_tokens,
        collections=collection or None,
        source="cli",
    )
    result: AnswerResult | None = None
    if stream and not as_json:
        for item in assistant.stream(req):
            if isinstance(item, AnswerResult):
                result = item
            else:
                console.print(item, end="", markup=False, highlight=False)
        console.print()
    else:
        result = assistant.answer(req)
        if not as_json:
            console.print(result.answer, markup=False, highlight=False)
    assert result is not None
    if as_json:
        print(json.dumps({"answer": result.answer, **answer_record(result)}, ensure_ascii=False, indent=2))
        return
    _print_sources(result)


def _print_sources(result) -> None:  # type: ignore[no-untyped-def]
    cited = {c["n"] for c in result.citations if c.get("valid")}
    for i, h in enumerate(result.passages, 1):
        mark = "[bold green]cited[/]" if i in cited else "[dim]shown[/]"
        where = f"{h.source_path}" + (f" › {h.section}" if h.section else "")
        console.print(f"  [{i}] {mark} {where}", highlight=False)
    console.print(
        f"[dim]interaction {result.interaction_id} · model {result.model_version} · KB v{result.kb_version} · "
        f"{result.latency['total_ms']:.0f} ms[/]"
    )


def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (auth turns on by default off loopback).")
    ] = None,
    port: Annotated[int | None, typer.Option()] = None,
    auth: Annotated[str | None, typer.Option(help="auto | on | off")] = None,
    home: HomeOpt = None,
) -> None:
    """Run the OpenAI-compatible API and the web UI."""
    from ragloop.serve.app import run_server

    settings = home_settings(home)
    if auth:
        settings.server.auth = auth
    run_server(settings, host or settings.server.host, port or settings.server.port)


def replay(
    interaction_id: Annotated[str, typer.Argument()],
    show: Annotated[bool, typer.Option(help="Print the rebuilt prompt.")] = False,
    home: HomeOpt = None,
) -> None:
    """Rebuild the exact prompt of a recorded interaction and check it is byte-identical."""
    from ragloop.generation.replay import replay as do_replay

    result = do_replay(home_settings(home), interaction_id)
    if show:
        for m in result.prompt:
            console.rule(m["role"])
            console.print(m["content"], markup=False, highlight=False)
    for problem in result.problems:
        err.print(f"[red]{problem}[/]")
    if result.identical:
        console.print(f"[green]identical[/] prompt sha256 {result.sha256}")
    else:
        err.print(f"[red]differs[/]: rebuilt {result.sha256}, recorded {result.recorded_sha256}")
        raise typer.Exit(code=1)


def _date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date like 2026-11-25 or 2026-11-25T14:00") from None


def logs(
    since: Annotated[str | None, typer.Option(help="From this date/time (ISO, UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this date/time (ISO, UTC).")] = None,
    model: Annotated[str | None, typer.Option(help="Model version or alias.")] = None,
    text: Annotated[str | None, typer.Option(help="Text in the question or answer.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.")] = None,
    export: Annotated[
        Path | None, typer.Option(help="Write full records as JSONL to this file ('-' for stdout).")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """List, filter and export recorded interactions."""
    from ragloop.store.queries import iter_interactions

    settings = home_settings(home)
    filters = dict(
        since=_date(since), until=_date(until), model=model, text=text, conversation_id=conversation
    )
    rows = iter_interactions(settings.db_url, limit=limit, **filters)
    if export is not None:
        out = sys.stdout if str(export) == "-" else export.open("w", encoding="utf-8")
        n = 0
        try:
            for interaction in rows:
                out.write(json.dumps(interaction.to_dict(), ensure_ascii=False, default=str) + "\n")
                n += 1
        finally:
            if out is not sys.stdout:
                out.close()
        if out is not sys.stdout:
            err.print(f"exported {n} interactions to {export}")
        return
    table = Table("id", "when", "model", "question", "answer", "cites", "ms")
    for i in rows:
        question = i.messages[-1]["content"] if i.messages else ""
        table.add_row(
            i.id[:12],
            i.created_at.isoformat(timespec="seconds"),
            i.model_alias or i.model_version,
            question[:60],
            i.answer[:60].replace("\n", " "),
            str(sum(1 for c in i.citations if c.get("valid"))),
            f"{i.latency_total_ms:.0f}",
        )
    console.print(table)
