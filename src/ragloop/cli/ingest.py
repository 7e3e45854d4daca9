"""``ragloop init | ingest | remove | kb``: the project home and its knowledge base (stage 1, logic in
``ragloop.ingest``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ragloop.cli.common import HomeOpt, console, err, home_settings
from ragloop.config import init_home, load_settings

kb_app = typer.Typer(no_args_is_help=True, help="Knowledge-base versions.")


def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the home in.")] = Path("."),
) -> None:
    """Create a project home: ragloop.toml and data/."""
    home = init_home(directory)
    load_settings(home)
    console.print(f"Project home ready at [bold]{home}[/] (edit {home / 'ragloop.toml'}).")


def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders (.txt .md .html .pdf .json .jsonl .xml).")
    ],
    collection: Annotated[str | None, typer.Option(help="Collection the documents belong to.")] = None,
    home: HomeOpt = None,
) -> None:
    """Add or update documents; unchanged files are skipped; every change is a new KB version."""
    from ragloop.ingest.pipeline import ingest_paths

    settings = home_settings(home)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("ingesting", total=None)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, description=f"ingesting {name[-40:]}", completed=done, total=total)

        report = ingest_paths(settings, paths, collection=collection, progress=progress)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(code=1)


def _print_report(report) -> None:  # type: ignore[no-untyped-def]
    for label, items in (
        ("added", report.added),
        ("replaced", report.replaced),
        ("unchanged", report.unchanged),
        ("removed", report.removed),
    ):
        if items:
            console.print(f"{label}: {len(items)}")
    for source, message in report.errors:
        err.print(f"[red]failed[/] {source}: {message}")
    if report.kb_version is not None:
        console.print(f"knowledge base version {report.kb_version} ({report.n_chunks} chunks)")


def remove(
    documents: Annotated[list[str], typer.Argument(help="Document ids or source paths.")],
    collection: Annotated[str | None, typer.Option()] = None,
    home: HomeOpt = None,
) -> None:
    """Delete documents from the knowledge base (a new KB version)."""
    from ragloop.ingest.pipeline import remove_documents

    report = remove_documents(home_settings(home), documents, collection=collection)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(code=1)


@kb_app.command("versions")
def kb_versions(home: HomeOpt = None) -> None:
    """List knowledge-base versions and what changed in each."""
    from ragloop.ingest.pipeline import kb_versions as recorded_versions

    table = Table("version", "created", "chunks", "added", "replaced", "removed", "embedders", "tag")
    for v in recorded_versions(home_settings(home).db_url):
        c = v.change or {}
        # a re-embedding names its embedder; an ingest, the tuned embedders that filled their columns too
        embedders = f"reembed {c['reembed']}" if c.get("reembed") else ", ".join(c.get("embedders", []))
        table.add_row(
            str(v.version),
            v.created_at.isoformat(timespec="seconds"),
            str(v.n_chunks),
            str(len(c.get("added", []))),
            str(len(c.get("replaced", []))),
            str(len(c.get("removed", []))),
            embedders,
            v.tag or "",
        )
    console.print(table)


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument()],
    k: Annotated[int, typer.Option(help="How many passages.")] = 10,
    collection: Annotated[list[str] | None, typer.Option(help="Only these collections (repeat).")] = None,
    mode: Annotated[str, typer.Option(help="hybrid, dense or fulltext.")] = "hybrid",
    version: Annotated[int | None, typer.Option(help="Search the KB as it was at this version.")] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Embedder version for the dense search (default: the base one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Search the knowledge base without answering: see what the retriever finds, and find the chunk id of
    the passage that supports a correction (`ragloop feedback ID --evidence CHUNK_ID`)."""
    from ragloop.ingest.embed import embedder_id
    from ragloop.retrieval.search import Retriever

    hits = Retriever(home_settings(home)).search(
        query, k, collections=collection, mode=mode, version=version, embedder=embedder_id(embedder)
    )
    if as_json:
        keys = ("chunk_id", "collection", "source_path", "title", "section", "score", "text")
        print(
            json.dumps([{key: getattr(h, key) for key in keys} for h in hits], ensure_ascii=False, indent=2)
        )
        return
    table = Table("rank", "chunk id", "score", "where", "text", show_lines=True)
    for rank, h in enumerate(hits, 1):
        where = h.source_path + (f" › {h.section}" if h.section else "")
        snippet = " ".join(h.text.split())
        table.add_row(
            str(rank),
            h.chunk_id,
            f"{h.score:.4f}",
            where,
            snippet[:240] + ("…" if len(snippet) > 240 else ""),
        )
    console.print(table if hits else "no passage found")


@kb_app.command("reembed")
def kb_reembed(
    embedder: Annotated[str, typer.Option("--embedder", help="Embedder version id to embed the KB with.")],
    batch_size: Annotated[int | None, typer.Option(help="Texts per model batch.")] = None,
    home: HomeOpt = None,
) -> None:
    """Embed every chunk with a tuned embedder version into its own column: a new KB version (older ones
    stay as they were and keep serving the base embedder). Run again to fill chunks ingested while the
    embedder was not served."""
    from ragloop.ingest.reembed import reembed

    settings = home_settings(home)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task(f"embedding with {embedder}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = reembed(settings, embedder, batch_size=batch_size, progress=progress)
    if not report.created:
        console.print(f"every chunk already has vectors of {report.embedder}: KB version {report.kb_version}")
        return
    rate = report.n_embedded / report.embed_s if report.embed_s else 0.0
    console.print(
        f"knowledge base version {report.kb_version}: {report.n_embedded} chunks embedded with "
        f"{report.embedder} (dim {report.dim}, {rate:.0f} chunks/s); versions up to {report.previous_version} "
        "have no vectors of it",
        highlight=False,
    )


@kb_app.command("compact")
def kb_compact(home: HomeOpt = None) -> None:
    """Compact the table and delete old versions, except those tagged because a record refers to them."""
    from ragloop.ingest.kb import KnowledgeBase

    KnowledgeBase(home_settings(home)).compact()
    console.print("compacted")
