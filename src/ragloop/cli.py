"""The command-line door: ``ragloop init | ingest | ask | serve | replay | logs | keys | models | kb``.

Each command parses its arguments, calls one stage function, and prints; no logic lives here.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ragloop.config import Settings, init_home, load_settings
from ragloop.errors import RagloopError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ragloop: a RAG assistant that trains on its own traffic.")
kb_app = typer.Typer(no_args_is_help=True, help="Knowledge-base versions.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed).")
models_app = typer.Typer(no_args_is_help=True, help="Model versions and aliases.")
app.add_typer(kb_app, name="kb")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")

console = Console()
err = Console(stderr=True)
HomeOpt = Annotated[Path | None, typer.Option("--home", help="Project home (default: RAGLOOP_HOME or the nearest ragloop.toml).")]


def _settings(home: Path | None) -> Settings:
    return load_settings(home)


def _fail(exc: RagloopError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)


def main() -> None:  # pragma: no cover - console script
    try:
        app()
    except RagloopError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Folder to create the home in.")] = Path(".")) -> None:
    """Create a project home: ragloop.toml and data/."""
    home = init_home(directory)
    load_settings(home)
    console.print(f"Project home ready at [bold]{home}[/] (edit {home / 'ragloop.toml'}).")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.txt .md .html .pdf .json .jsonl .xml).")],
    collection: Annotated[str | None, typer.Option(help="Collection the documents belong to.")] = None,
    home: HomeOpt = None,
) -> None:
    """Add or update documents; unchanged files are skipped; every change is a new KB version."""
    from ragloop.ingest.pipeline import ingest_paths

    settings = _settings(home)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("ingesting", total=None)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, description=f"ingesting {name[-40:]}", completed=done, total=total)

        report = ingest_paths(settings, paths, collection=collection, progress=progress)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(code=1)


def _print_report(report) -> None:  # type: ignore[no-untyped-def]
    for label, items in (("added", report.added), ("replaced", report.replaced), ("unchanged", report.unchanged), ("removed", report.removed)):
        if items:
            console.print(f"{label}: {len(items)}")
    for source, message in report.errors:
        err.print(f"[red]failed[/] {source}: {message}")
    if report.kb_version is not None:
        console.print(f"knowledge base version {report.kb_version} ({report.n_chunks} chunks)")


@app.command()
def remove(
    documents: Annotated[list[str], typer.Argument(help="Document ids or source paths.")],
    collection: Annotated[str | None, typer.Option()] = None,
    home: HomeOpt = None,
) -> None:
    """Delete documents from the knowledge base (a new KB version)."""
    from ragloop.ingest.pipeline import remove_documents

    report = remove_documents(_settings(home), documents, collection=collection)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(code=1)


@kb_app.command("versions")
def kb_versions(home: HomeOpt = None) -> None:
    """List knowledge-base versions and what changed in each."""
    from sqlalchemy import select

    from ragloop.store.db import session_scope
    from ragloop.store.models import KBVersion

    settings = _settings(home)
    table = Table("version", "created", "chunks", "added", "replaced", "removed", "tag")
    with session_scope(settings.db_url) as s:
        for v in s.scalars(select(KBVersion).order_by(KBVersion.version)):
            c = v.change or {}
            table.add_row(str(v.version), v.created_at.isoformat(timespec="seconds"), str(v.n_chunks),
                          str(len(c.get("added", []))), str(len(c.get("replaced", []))), str(len(c.get("removed", []))), v.tag or "")
    console.print(table)


@kb_app.command("compact")
def kb_compact(home: HomeOpt = None) -> None:
    """Compact the table and delete old versions, except those tagged because a record refers to them."""
    from ragloop.ingest.kb import KnowledgeBase

    KnowledgeBase(_settings(home)).compact()
    console.print("compacted")


@app.command()
def ask(
    question: Annotated[str, typer.Argument()],
    model: Annotated[str | None, typer.Option(help="Model version or alias.")] = None,
    collection: Annotated[list[str] | None, typer.Option(help="Restrict retrieval to these collections.")] = None,
    k: Annotated[int | None, typer.Option(help="Passages to show the model.")] = None,
    max_tokens: Annotated[int | None, typer.Option()] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they come.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the recorded result as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Answer one question with citations, recorded like an API call."""
    from ragloop.generation.assistant import AnswerRequest, AnswerResult, Assistant

    settings = _settings(home)
    assistant = Assistant(settings)
    req = AnswerRequest(messages=[{"role": "user", "content": question}], model=model, k=k, max_tokens=max_tokens,
                        collections=collection or None, source="cli")
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
        print(json.dumps(_result_json(result), ensure_ascii=False, indent=2))
        return
    _print_sources(result)


def _result_json(result) -> dict:  # type: ignore[no-untyped-def]
    return {
        "interaction_id": result.interaction_id,
        "answer": result.answer,
        "citations": result.citations,
        "model_version": result.model_version,
        "kb_version": result.kb_version,
        "passages": [{"rank": i, "passage_id": h.chunk_id, "source_path": h.source_path, "title": h.title, "section": h.section, "score": h.score}
                     for i, h in enumerate(result.passages, 1)],
        "latency_ms": result.latency,
    }


def _print_sources(result) -> None:  # type: ignore[no-untyped-def]
    cited = {c["n"] for c in result.citations if c.get("valid")}
    for i, h in enumerate(result.passages, 1):
        mark = "[bold green]cited[/]" if i in cited else "[dim]shown[/]"
        where = f"{h.source_path}" + (f" › {h.section}" if h.section else "")
        console.print(f"  [{i}] {mark} {where}", highlight=False)
    console.print(f"[dim]interaction {result.interaction_id} · model {result.model_version} · KB v{result.kb_version} · "
                  f"{result.latency['total_ms']:.0f} ms[/]")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (auth turns on by default off loopback).")] = None,
    port: Annotated[int | None, typer.Option()] = None,
    auth: Annotated[str | None, typer.Option(help="auto | on | off")] = None,
    home: HomeOpt = None,
) -> None:
    """Run the OpenAI-compatible API and the web UI."""
    from ragloop.serve.app import run_server

    settings = _settings(home)
    if auth:
        settings.server.auth = auth
    run_server(settings, host or settings.server.host, port or settings.server.port)


@app.command()
def replay(
    interaction_id: Annotated[str, typer.Argument()],
    show: Annotated[bool, typer.Option(help="Print the rebuilt prompt.")] = False,
    home: HomeOpt = None,
) -> None:
    """Rebuild the exact prompt of a recorded interaction and check it is byte-identical."""
    from ragloop.generation.replay import replay as do_replay

    result = do_replay(_settings(home), interaction_id)
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


@app.command()
def logs(
    since: Annotated[str | None, typer.Option(help="From this date/time (ISO, UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this date/time (ISO, UTC).")] = None,
    model: Annotated[str | None, typer.Option(help="Model version or alias.")] = None,
    text: Annotated[str | None, typer.Option(help="Text in the question or answer.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.")] = None,
    export: Annotated[Path | None, typer.Option(help="Write full records as JSONL to this file ('-' for stdout).")] = None,
    home: HomeOpt = None,
) -> None:
    """List, filter and export recorded interactions."""
    from ragloop.store.db import session_scope
    from ragloop.store.queries import iter_interactions

    settings = _settings(home)
    filters = dict(since=_date(since), until=_date(until), model=model, text=text, conversation_id=conversation)
    with session_scope(settings.db_url) as s:
        rows = iter_interactions(s, limit=limit, **filters)
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
            table.add_row(i.id[:12], i.created_at.isoformat(timespec="seconds"), i.model_alias or i.model_version,
                          question[:60], i.answer[:60].replace("\n", " "), str(sum(1 for c in i.citations if c.get("valid"))),
                          f"{i.latency_total_ms:.0f}")
        console.print(table)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument()],
    admin: Annotated[bool, typer.Option(help="May ingest and administer.")] = False,
    collection: Annotated[list[str] | None, typer.Option(help="Scope to these collections (repeat); default all.")] = None,
    home: HomeOpt = None,
) -> None:
    """Create an API key; the secret is printed once and stored only hashed."""
    from ragloop.store.db import session_scope
    from ragloop.store.keys import create_key

    with session_scope(_settings(home).db_url) as s:
        key, secret = create_key(s, name, admin=admin, collections=collection or None)
    err.print(f"key {key.id} ({'admin' if admin else 'user'}; collections: {', '.join(collection) if collection else 'all'}) — store it now, it is not shown again:")
    print(secret)


@keys_app.command("list")
def keys_list(home: HomeOpt = None) -> None:
    """List keys (never their secrets)."""
    from ragloop.store.db import session_scope
    from ragloop.store.keys import list_keys

    table = Table("id", "name", "prefix", "admin", "collections", "created", "revoked")
    with session_scope(_settings(home).db_url) as s:
        for k in list_keys(s):
            table.add_row(k.id, k.name, k.prefix + "…", "yes" if k.admin else "", ", ".join(k.collections or []) or "all",
                          k.created_at.isoformat(timespec="seconds"), k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id or prefix.")], home: HomeOpt = None) -> None:
    """Revoke a key: it stops working on the next request."""
    from ragloop.store.db import session_scope
    from ragloop.store.keys import revoke_key

    with session_scope(_settings(home).db_url) as s:
        key = revoke_key(s, key_id)
    console.print(f"revoked {key.id}")


@models_app.command("list")
def models_list(home: HomeOpt = None) -> None:
    """Model versions with their aliases."""
    from ragloop.store.db import session_scope
    from ragloop.store.registry import list_models

    table = Table("version", "aliases", "base", "adapter", "created")
    with session_scope(_settings(home).db_url) as s:
        for mv, aliases in list_models(s):
            table.add_row(mv.id, ", ".join(aliases), mv.base_model, mv.adapter_path or "", mv.created_at.isoformat(timespec="seconds"))
    console.print(table)


@models_app.command("alias")
def models_alias(name: Annotated[str, typer.Argument()], version: Annotated[str, typer.Argument()], home: HomeOpt = None) -> None:
    """Point an alias (production, candidate, ...) at a model version."""
    from ragloop.store.db import session_scope
    from ragloop.store.registry import set_alias

    with session_scope(_settings(home).db_url) as s:
        set_alias(s, name, version)
    console.print(f"{name} → {version}")
