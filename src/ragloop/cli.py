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

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="ragloop: a RAG assistant that trains on its own traffic.",
)
kb_app = typer.Typer(no_args_is_help=True, help="Knowledge-base versions.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed).")
models_app = typer.Typer(no_args_is_help=True, help="Model versions and aliases.")
app.add_typer(kb_app, name="kb")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")

console = Console()
err = Console(stderr=True)
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Project home (default: RAGLOOP_HOME or the nearest ragloop.toml)."),
]


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
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the home in.")] = Path("."),
) -> None:
    """Create a project home: ragloop.toml and data/."""
    home = init_home(directory)
    load_settings(home)
    console.print(f"Project home ready at [bold]{home}[/] (edit {home / 'ragloop.toml'}).")


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders (.txt .md .html .pdf .json .jsonl .xml).")
    ],
    collection: Annotated[str | None, typer.Option(help="Collection the documents belong to.")] = None,
    home: HomeOpt = None,
) -> None:
    """Add or update documents; unchanged files are skipped; every change is a new KB version."""
    from ragloop.ingest.pipeline import ingest_paths

    settings = _settings(home)
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
            table.add_row(
                str(v.version),
                v.created_at.isoformat(timespec="seconds"),
                str(v.n_chunks),
                str(len(c.get("added", []))),
                str(len(c.get("replaced", []))),
                str(len(c.get("removed", []))),
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Search the knowledge base without answering: see what the retriever finds, and find the chunk id of
    the passage that supports a correction (`ragloop feedback ID --evidence CHUNK_ID`)."""
    from ragloop.retrieval.search import Retriever

    hits = Retriever(_settings(home)).search(query, k, collections=collection, mode=mode, version=version)
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
    from ragloop.generation.assistant import AnswerRequest, AnswerResult, Assistant

    settings = _settings(home)
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
        "passages": [
            {
                "rank": i,
                "passage_id": h.chunk_id,
                "source_path": h.source_path,
                "title": h.title,
                "section": h.section,
                "score": h.score,
            }
            for i, h in enumerate(result.passages, 1)
        ],
        "latency_ms": result.latency,
    }


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


@app.command()
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
    export: Annotated[
        Path | None, typer.Option(help="Write full records as JSONL to this file ('-' for stdout).")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """List, filter and export recorded interactions."""
    from ragloop.store.db import session_scope
    from ragloop.store.queries import iter_interactions

    settings = _settings(home)
    filters = dict(
        since=_date(since), until=_date(until), model=model, text=text, conversation_id=conversation
    )
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


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument()],
    admin: Annotated[bool, typer.Option(help="May ingest and administer.")] = False,
    collection: Annotated[
        list[str] | None, typer.Option(help="Scope to these collections (repeat); default all.")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Create an API key; the secret is printed once and stored only hashed."""
    from ragloop.store.db import session_scope
    from ragloop.store.keys import create_key

    with session_scope(_settings(home).db_url) as s:
        key, secret = create_key(s, name, admin=admin, collections=collection or None)
    err.print(
        f"key {key.id} ({'admin' if admin else 'user'}; collections: {', '.join(collection) if collection else 'all'}) — store it now, it is not shown again:"
    )
    print(secret)


@keys_app.command("list")
def keys_list(home: HomeOpt = None) -> None:
    """List keys (never their secrets)."""
    from ragloop.store.db import session_scope
    from ragloop.store.keys import list_keys

    table = Table("id", "name", "prefix", "admin", "collections", "created", "revoked")
    with session_scope(_settings(home).db_url) as s:
        for k in list_keys(s):
            table.add_row(
                k.id,
                k.name,
                k.prefix + "…",
                "yes" if k.admin else "",
                ", ".join(k.collections or []) or "all",
                k.created_at.isoformat(timespec="seconds"),
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
            )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id or prefix.")], home: HomeOpt = None
) -> None:
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
            table.add_row(
                mv.id,
                ", ".join(aliases),
                mv.base_model,
                mv.adapter_path or "",
                mv.created_at.isoformat(timespec="seconds"),
            )
    console.print(table)


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument()], version: Annotated[str, typer.Argument()], home: HomeOpt = None
) -> None:
    """Point an alias (production, candidate, ...) at a model version."""
    from ragloop.generation.release import set_alias

    moved = set_alias(_settings(home), name, version, note="cli")
    console.print(f"{name} → {moved.model_version}")


# ---- Feedback, review, datasets (stages 4-6) ---------------------------------------------------------
dataset_app = typer.Typer(no_args_is_help=True, help="Curated, versioned training datasets.")
review_app = typer.Typer(no_args_is_help=True, help="The expert review queue.")
app.add_typer(dataset_app, name="dataset")
app.add_typer(review_app, name="review")


@app.command()
def feedback(
    interaction_id: Annotated[str, typer.Argument()],
    thumbs: Annotated[str | None, typer.Option(help="up or down")] = None,
    rating: Annotated[int | None, typer.Option(help="1-5")] = None,
    comment: Annotated[str | None, typer.Option()] = None,
    correction: Annotated[
        str | None, typer.Option(help="The corrected answer (cite passages as [n]).")
    ] = None,
    gold: Annotated[
        list[int] | None, typer.Option(help="Shown passage number that answers the question (repeat).")
    ] = None,
    irrelevant: Annotated[
        list[int] | None, typer.Option(help="Shown passage number that is irrelevant (repeat).")
    ] = None,
    evidence: Annotated[
        list[str] | None,
        typer.Option(
            help="Chunk id of a knowledge-base passage the retriever did not show that supports the answer "
            "(repeat; find ids with `ragloop kb search --version V`, V the answer's KB version). It becomes the "
            "gold passage of the training example."
        ),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag (repeat).")] = None,
    reviewer: Annotated[str, typer.Option(help="Reviewer id; several reviewers are kept apart.")] = "cli",
    home: HomeOpt = None,
) -> None:
    """Rate, correct or mark the gold passages of a recorded answer."""
    from ragloop.feedback.service import add_feedback
    from ragloop.ingest.kb import KnowledgeBase
    from ragloop.store.db import session_scope

    data = {
        k: v
        for k, v in dict(
            thumbs=thumbs,
            rating=rating,
            comment=comment,
            corrected_answer=correction,
            gold=gold,
            irrelevant=irrelevant,
            evidence=evidence,
            tags=tag,
            reviewer_id=reviewer,
        ).items()
        if v is not None
    }
    settings = _settings(home)
    with session_scope(settings.db_url) as s:
        fb = add_feedback(s, interaction_id, data, kb=KnowledgeBase(settings) if evidence else None)
    console.print(f"feedback {fb.id} recorded for {interaction_id} by {fb.reviewer_id}")


@review_app.command("sample")
def review_sample(
    n: Annotated[int, typer.Option(help="How many to add.")] = 20,
    queue: Annotated[str, typer.Option()] = "default",
    seed: Annotated[int, typer.Option()] = 0,
    home: HomeOpt = None,
) -> None:
    """Add interactions to the review queue: thumbs-down first, then low retrieval scores, then random."""
    from ragloop.feedback.review import review_url, sample_queue
    from ragloop.store.db import session_scope

    settings = _settings(home)
    with session_scope(settings.db_url) as s:
        r = sample_queue(s, n, queue=queue, seed=seed)
    console.print(
        f"queued {r.total}: {r.thumbs_down} thumbs-down, {r.low_score} low score, {r.random} random "
        f"— review them at {review_url(settings.server, queue)}"
    )


@app.command()
def synth(
    n: Annotated[int, typer.Option(help="Questions to generate.")] = 50,
    out: Annotated[Path, typer.Option(help="Generic QA JSONL to write.")] = Path("synth.jsonl"),
    method: Annotated[
        str, typer.Option(help="llm (the generator or --teacher-url) or extractive (no model).")
    ] = "llm",
    teacher_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL of a teacher model.")
    ] = None,
    teacher_model: Annotated[str | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    home: HomeOpt = None,
) -> None:
    """Generate question/answer pairs from the knowledge base (training data before there is traffic)."""
    from ragloop.datasets.synth import synthesize

    settings = _settings(home)
    with Progress(
        TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    ) as bar:
        task = bar.add_task("synth", total=n)
        counts = synthesize(
            settings,
            n,
            out,
            method=method,
            teacher_url=teacher_url,
            teacher_model=teacher_model,
            seed=seed,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    console.print(
        f"wrote {counts['written']} to {out} (unparsed {counts['unparsed']}, unsupported {counts['unsupported']})"
    )


@dataset_app.command("build")
def dataset_build(
    name: Annotated[str, typer.Option(help="Dataset name.")] = "dataset",
    policy: Annotated[
        Path | None, typer.Option(help="Curation policy file (YAML/JSON); default policy otherwise.")
    ] = None,
    interactions: Annotated[bool, typer.Option(help="Use recorded interactions.")] = True,
    import_: Annotated[
        list[str] | None,
        typer.Option(
            "--import", help="[FORMAT:]FILE of QA data (hotpotqa, squad, pubmedqa, apibench, generic)."
        ),
    ] = None,
    eval_set: Annotated[
        list[Path] | None, typer.Option(help="Evaluation set to decontaminate against (repeat).")
    ] = None,
    shared_documents: Annotated[
        bool,
        typer.Option(
            help="Keep training questions whose gold passage an --eval-set question also uses (RAFT's open "
            "book: new questions on the same documents, as Gorilla's API split). Same question + same "
            "answer is still dropped."
        ),
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    min_examples: Annotated[int, typer.Option(help="Fail if fewer examples pass.")] = 0,
    home: HomeOpt = None,
) -> None:
    """Curate, anonymise, split and RAFT-format a dataset version (same inputs + seed = same hash)."""
    import shlex

    from ragloop.curation.policy import load_policy
    from ragloop.datasets.build import build_dataset

    settings = _settings(home)
    imports = []
    for spec in import_ or []:
        fmt, _, path = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else ("", "", spec)
        imports.append((fmt or "auto", Path(path)))
    command = (
        "ragloop " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["dataset"] else ""
    )
    report = build_dataset(
        settings,
        load_policy(policy),
        name=name,
        from_interactions=interactions,
        imports=imports,
        eval_sets=list(eval_set or []),
        shared_documents=shared_documents,
        seed=seed,
        min_examples=min_examples,
        command=command,
    )
    _print_counts(report.counts)
    console.print(
        f"{'built' if report.created else 'unchanged (identical version exists)'}: [bold]{report.dataset_id}[/]"
    )


def _print_counts(counts: dict) -> None:
    for source, n in counts.get("sources", {}).items():
        console.print(f"source {source}: {n}")
    for f in counts.get("filters", []):
        reasons = ", ".join(f"{k} {v}" for k, v in f["reasons"].items())
        console.print(f"  filter {f['filter']:<20} dropped {f['dropped']:>4} of {f['before']:<4} {reasons}")
    if counts.get("decontamination"):
        console.print(f"decontamination dropped: {counts['decontamination']}")
    if counts.get("pii"):
        console.print(f"PII replaced: {counts['pii']}")
    if counts.get("examples"):
        console.print("examples: " + ", ".join(f"{k} {v}" for k, v in counts["examples"].items()))


@dataset_app.command("list")
def dataset_list(home: HomeOpt = None) -> None:
    """Dataset versions, newest first."""
    from sqlalchemy import select

    from ragloop.store.db import session_scope
    from ragloop.store.models import DatasetVersion

    table = Table("id", "name", "created", "source", "train", "val", "test", "erased")
    with session_scope(_settings(home).db_url) as s:
        for dv in s.scalars(select(DatasetVersion).order_by(DatasetVersion.created_at.desc())):
            ex = (dv.counts or {}).get("examples", {})
            table.add_row(
                dv.id,
                dv.name,
                dv.created_at.isoformat(timespec="seconds"),
                dv.source,
                *(str(ex.get(k, 0)) for k in ("train", "val", "test")),
                "yes" if dv.contains_erased else "",
            )
    console.print(table)


@dataset_app.command("show")
def dataset_show(
    dataset_id: Annotated[str, typer.Argument()],
    examples: Annotated[int, typer.Option(help="Print N examples.")] = 1,
    home: HomeOpt = None,
) -> None:
    """A dataset version: hash, policy, sources, filter report, and sample examples."""
    from ragloop.datasets.build import load_examples
    from ragloop.errors import NotFound
    from ragloop.store.db import session_scope
    from ragloop.store.models import DatasetVersion

    settings = _settings(home)
    with session_scope(settings.db_url) as s:
        dv = s.get(DatasetVersion, dataset_id)
        if dv is None:
            raise NotFound(f"No dataset version {dataset_id!r}; see `ragloop dataset list`.")
        console.print(
            f"[bold]{dv.id}[/] {dv.name} · hash {dv.content_hash} · seed {dv.seed} · KB v{dv.kb_version} · source {dv.source}"
        )
        console.print(
            f"policy {dv.policy.get('name')} v{dv.policy.get('version')}: raft {dv.policy.get('raft')}"
        )
        if dv.contains_erased:
            console.print(f"[red]contains erased data[/]: {dv.erased_note}")
        _print_counts(dv.counts or {})
    for ex in load_examples(settings, dataset_id, "train")["train"][:examples]:
        console.rule(f"example {ex['id']} (oracle {'kept' if ex['has_oracle'] else 'removed'})")
        console.print(ex["prompt"][-1]["content"], markup=False, highlight=False)
        console.rule("target")
        console.print(ex["completion"], markup=False, highlight=False)


@dataset_app.command("diff")
def dataset_diff(
    a: Annotated[str, typer.Argument()], b: Annotated[str, typer.Argument()], home: HomeOpt = None
) -> None:
    """What changed between two dataset versions: examples added/removed per split, policy differences."""
    from ragloop.datasets.build import load_examples

    settings = _settings(home)
    ea, eb = load_examples(settings, a), load_examples(settings, b)
    for split in ea:
        ids_a, ids_b = {e["id"] for e in ea[split]}, {e["id"] for e in eb[split]}
        console.print(f"{split}: {len(ids_a)} → {len(ids_b)} (+{len(ids_b - ids_a)} −{len(ids_a - ids_b)})")


@dataset_app.command("export")
def dataset_export(
    dataset_id: Annotated[str, typer.Argument()],
    fmt: Annotated[
        str, typer.Option("--format", help="trl-prompt-completion | trl-conversational | openai | hf | dpo")
    ] = "trl-prompt-completion",
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    home: HomeOpt = None,
) -> None:
    """Export a dataset version for a trainer."""
    from ragloop.datasets.export import export_dataset

    settings = _settings(home)
    out = out or settings.data_dir / "exports" / f"{dataset_id}-{fmt}"
    rows = export_dataset(settings, dataset_id, fmt, out)
    console.print(f"exported to {out}: " + ", ".join(f"{k} {v}" for k, v in rows.items()))


@app.command()
def forget(
    conversation: Annotated[str | None, typer.Option(help="Conversation id.")] = None,
    user: Annotated[str | None, typer.Option(help="User id (the API's `user` field).")] = None,
    text: Annotated[str | None, typer.Option(help="Text in the question or answer.")] = None,
    older_than: Annotated[
        int | None, typer.Option(help="Days: expire records older than this (retention).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be deleted.")] = False,
    home: HomeOpt = None,
) -> None:
    """Erase records (GDPR Art. 17) and mark datasets and models built from them."""
    from ragloop.curation.erasure import forget as do_forget

    settings = _settings(home)
    if (
        older_than is None
        and not any([conversation, user, text])
        and settings.records.retention_days is not None
    ):
        older_than = settings.records.retention_days  # plain `ragloop forget` applies the retention setting
    r = do_forget(
        settings,
        conversation_id=conversation,
        user_id=user,
        text=text,
        older_than_days=older_than,
        dry_run=dry_run,
    )
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {r.interactions} interactions and {r.feedback} feedback entries")
    for ds in r.datasets:
        console.print(f"dataset {ds} marked as containing erased data; rebuild: {r.rebuild.get(ds)}")
    for mv in r.models:
        console.print(f"model {mv} marked as trained on erased data")


# ---- Training jobs and the model registry (stage 7; logic in ragloop.training) -------------------------
train_app = typer.Typer(no_args_is_help=True, help="Fine-tune the generator on a dataset version.")
jobs_app = typer.Typer(no_args_is_help=True, help="Background training jobs.")
app.add_typer(train_app, name="train")
app.add_typer(jobs_app, name="jobs")

DatasetOpt = Annotated[
    str, typer.Option("--dataset", help="Dataset version id (see `ragloop dataset list`).")
]
BaseOpt = Annotated[
    str | None,
    typer.Option("--base", help="Base model: 'packaged', a HF folder or .gguf (default: the generator's)."),
]
TrainConfigOpt = Annotated[Path | None, typer.Option("--config", help="Training config (train.yaml).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override one training setting: KEY=VALUE (repeat).")
]
ForegroundOpt = Annotated[
    bool,
    typer.Option("--foreground", help="Train in this process with a progress bar, not in the background."),
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Name the version NAME-vN instead of KIND-DATE-HASH.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _overrides(pairs: list[str] | None) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set {pair!r}: write KEY=VALUE, e.g. --set learning_rate=1e-4")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _train(kind: str, home: Path | None, foreground: bool, **options) -> None:  # type: ignore[no-untyped-def]
    from ragloop.training import jobs

    settings = _settings(home)
    config = {k: v for k, v in options.items() if v is not None and v != {}}
    job = None
    try:
        if not foreground:
            job = jobs.submit(settings, kind, config)
            pid = jobs.ensure_worker(settings)
            started = f"worker started (pid {pid})" if pid else "a worker is already running"
            console.print(f"job [bold]{job.id}[/] queued ({kind} on {config['dataset']}); {started}")
            console.print(f"follow it: ragloop jobs logs {job.id} -f")
            return
        job = jobs.submit(settings, kind, config, foreground=True)
        job = _run_with_bar(settings, job)
    except RagloopError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err.print("interrupted" + (f"; continue later with: ragloop jobs resume {job.id}" if job else ""))
        raise typer.Exit(code=130) from None
    if job.status != "succeeded":
        err.print(f"[bold red]{job.status}[/]: {job.error or ''}")
        raise typer.Exit(code=1)
    console.print(f"job {job.id} succeeded: model version [bold]{job.result.get('model_version')}[/]")
    console.print(f"serve it: ragloop models promote {job.result.get('model_version')}")


def _fmt(value, spec: str) -> str:  # type: ignore[no-untyped-def]
    return format(value, spec) if isinstance(value, int | float) else "–"


def _run_with_bar(settings: Settings, job):  # type: ignore[no-untyped-def]
    from rich.progress import TimeElapsedColumn

    from ragloop.training import jobs

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(f"{job.kind} {job.id[:8]}", total=None, loss="–", tps="–")

        def progress(p: dict) -> None:
            tps = p.get("tokens_per_s", p.get("tokens_per_second", p.get("train_tokens_per_second")))
            bar.update(task, completed=p.get("step") or 0, total=p.get("total") or None,
                       loss=_fmt(p.get("loss"), ".4f"), tps=_fmt(tps, ".0f"))  # fmt: skip

        return jobs.run_job(settings, job.id, progress=progress)


@train_app.command("sft")
def train_sft_command(
    dataset: DatasetOpt,
    base: BaseOpt = None,
    config: TrainConfigOpt = None,
    set_: SetOpt = None,
    name: NameOpt = None,
    foreground: ForegroundOpt = False,
    home: HomeOpt = None,
) -> None:
    """Supervised fine-tuning (LoRA) on a dataset version; the adapter is registered as a model version."""
    _train("sft", home, foreground, dataset=dataset, base=base, name=name,
           config_path=str(config) if config else None, train=_overrides(set_))  # fmt: skip


@train_app.command("dpo")
def train_dpo_command(
    dataset: DatasetOpt,
    from_: Annotated[str, typer.Option("--from", help="Model version (or alias) to start from.")],
    base: BaseOpt = None,
    config: TrainConfigOpt = None,
    set_: SetOpt = None,
    name: NameOpt = None,
    foreground: ForegroundOpt = False,
    home: HomeOpt = None,
) -> None:
    """Preference tuning (DPO) of a trained version on a dataset version's preference pairs."""
    _train("dpo", home, foreground, dataset=dataset, base=base, name=name, **{"from": from_},
           config_path=str(config) if config else None, train=_overrides(set_))  # fmt: skip


@train_app.command("register")
def train_register_command(
    run: Annotated[Path, typer.Argument(help="Folder of a finished run (--out of ragloop.training.run).")],
    base: BaseOpt = None,
    name: NameOpt = None,
    home: HomeOpt = None,
) -> None:
    """Register an SFT run trained outside the job queue (`accelerate launch`, another machine with a GPU).

    The run's dataset version must be in this home; its recorded fingerprint is checked against this home's
    data, base model and the run's settings before anything is registered."""
    from ragloop.store.db import session_scope
    from ragloop.training.registry import register_model, registered_as
    from ragloop.training.sft import completed_run

    settings = _settings(home)
    try:
        result = completed_run(settings, run, base=base)
        with session_scope(settings.db_url) as s:
            existing = registered_as(s, result.adapter_dir)
        if existing:
            console.print(f"already registered as model version [bold]{existing}[/]; nothing to do")
            return
        mv = register_model(settings, result, kind="sft", dataset_id=result.metrics["dataset"],
                            train_config=result.metrics["config"], base=base, name=name)  # fmt: skip
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(
        f"registered model version [bold]{mv.id}[/] ({result.steps} steps on {result.metrics['dataset']})"
    )
    console.print(f"serve it: ragloop models promote {mv.id}")


def _job_row(job) -> list[str]:  # type: ignore[no-untyped-def]
    p = job.progress or {}
    step = f"{p.get('step')}/{p.get('total')}" if p.get("step") is not None else ""
    return [job.id[:12], job.kind, job.status, (job.config or {}).get("dataset", ""), step, _fmt(p.get("loss"), ".4f"),
            job.created_at.isoformat(timespec="seconds"), (job.result or {}).get("model_version") or ""]  # fmt: skip


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Jobs, newest first. A job whose worker died (crash, reboot) is marked interrupted here."""
    from ragloop.training import jobs

    settings = _settings(home)
    rows = jobs.list_jobs(settings, limit=limit, status=status)
    if as_json:
        print(json.dumps([jobs.job_dict(j) for j in rows], indent=2, default=str))
        return
    table = Table()
    for column in ("id", "kind", "status", "dataset", "step", "loss", "created", "model"):
        # ids (a prefix is enough for every jobs command) and statuses must survive a narrow terminal
        table.add_column(column, no_wrap=column in ("id", "status"), min_width=12 if column == "id" else None)
    for job in rows:
        table.add_row(*_job_row(job))
    console.print(table)
    pid = jobs.worker_pid(settings)
    console.print(f"[dim]worker: {'running, pid ' + str(pid) if pid else 'not running'}[/]")


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument()], as_json: JsonOpt = False, home: HomeOpt = None
) -> None:
    """One job: status, config, progress, result, error."""
    from ragloop.training import jobs

    settings = _settings(home)
    try:
        jobs.recover(settings)
        data = jobs.job_dict(jobs.get_job(settings, job_id))
    except RagloopError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for key in ("id", "kind", "status", "created_at", "started_at", "finished_at", "heartbeat_at", "pid",
                "output_dir", "log_path", "error"):  # fmt: skip
        if data[key] is not None:
            console.print(f"[bold]{key}[/]: {data[key]}", highlight=False)
    for key in ("config", "progress", "result"):
        if data[key]:
            console.print(f"[bold]{key}[/]: {json.dumps(data[key], indent=2, default=str)}", highlight=False)


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument()],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N bytes.")] = None,
    home: HomeOpt = None,
) -> None:
    """Print a job's log (trainer output, progress lines, errors)."""
    import time

    from ragloop.training import jobs

    settings = _settings(home)
    try:
        job = jobs.get_job(settings, job_id)
        text, offset = jobs.read_log(job, tail=tail)
        sys.stdout.write(text)
        while follow and job.status in jobs.ACTIVE:
            time.sleep(1.0)
            jobs.recover(settings)
            job = jobs.get_job(settings, job.id)
            text, offset = jobs.read_log(job, offset=offset)
            sys.stdout.write(text)
            sys.stdout.flush()
    except RagloopError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        return
    if follow:
        err.print(f"job {job.id} {job.status}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument()], home: HomeOpt = None) -> None:
    """Cancel a job: queued at once, running at its next training step. Nothing is registered."""
    from ragloop.training import jobs

    try:
        job = jobs.cancel(_settings(home), job_id)
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(f"job {job.id}: {'cancel requested' if job.status == 'running' else job.status}")


@jobs_app.command("resume")
def jobs_resume(job_id: Annotated[str, typer.Argument()], home: HomeOpt = None) -> None:
    """Queue an interrupted (or failed, cancelled) job again; it continues from its last checkpoint."""
    from ragloop.training import jobs

    settings = _settings(home)
    try:
        job = jobs.resume(settings, job_id)
        pid = jobs.ensure_worker(settings)
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(
        f"job {job.id} queued to resume; " + (f"worker started (pid {pid})" if pid else "worker running")
    )


@jobs_app.command("worker")
def jobs_worker(
    once: Annotated[bool, typer.Option(help="Run the queued jobs, then exit.")] = False,
    home: HomeOpt = None,
) -> None:
    """Run this home's job worker in the foreground (for a service manager; `train` starts one on demand)."""
    from ragloop.training import jobs

    settings = _settings(home)
    if jobs.worker_pid(settings) is not None:
        raise _fail(
            RagloopError(f"A worker already runs for {settings.home} (pid {jobs.worker_pid(settings)}).")
        )
    jobs.install_sigterm_handler()
    try:
        ran = jobs.run_worker(settings, once=once)
    except KeyboardInterrupt:
        ran = 0
    console.print(f"worker ran {ran} job(s)")


@models_app.command("show")
def models_show(version: Annotated[str, typer.Argument(help="Version id or alias.")], as_json: JsonOpt = False,
                home: HomeOpt = None) -> None:  # fmt: skip
    """A version's lineage: base and hash, dataset and hash, policy, KB version, hyperparameters, metrics."""
    from ragloop.store.db import session_scope
    from ragloop.training.registry import aliases_of, get_model, model_dict, registry_events

    try:
        with session_scope(_settings(home).db_url) as s:
            mv = get_model(s, version)
            data = model_dict(mv, aliases_of(s, mv.id))
            events = [(e.created_at, e.action, e.alias, e.previous_version_id, e.model_version_id)
                      for e in registry_events(s, mv.id, limit=10)]  # fmt: skip
    except RagloopError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    meta = data["meta"] or {}
    ds = meta.get("dataset") or {}
    console.print(
        f"[bold]{data['id']}[/] {meta.get('kind', '')} · aliases: {', '.join(data['aliases']) or 'none'}"
    )
    console.print(f"base {data['base_model']} (sha256 {data['base_hash'][:16]}…)", highlight=False)
    if data["adapter_path"]:
        console.print(f"adapter {data['adapter_path']}", highlight=False)
    if data["parent_id"]:
        console.print(f"parent {data['parent_id']}")
    if ds:
        console.print(
            f"dataset {ds.get('id')} (hash {str(ds.get('content_hash'))[:16]}…) · KB v{meta.get('kb_version')}"
        )
    policy = meta.get("curation_policy") or {}
    if policy:
        console.print(f"curation policy {policy.get('name')} v{policy.get('version')}")
    if data["contains_erased"]:
        console.print(f"[red]trained on erased data[/]: {data['erased_note']}")
    for section in ("hyperparameters", "metrics", "training", "code"):
        if meta.get(section):
            console.print(f"[bold]{section}[/]: " + ", ".join(f"{k}={v}" for k, v in meta[section].items()),
                          highlight=False)  # fmt: skip
    for when, action, alias, prev, new in events:
        console.print(
            f"[dim]{when.isoformat(timespec='seconds')} {action} {alias or ''} {prev or ''} → {new}[/]"
        )


@models_app.command("diff")
def models_diff(a: Annotated[str, typer.Argument()], b: Annotated[str, typer.Argument()], as_json: JsonOpt = False,
                home: HomeOpt = None) -> None:  # fmt: skip
    """What differs between two versions: base, lineage, dataset, policy, hyperparameters, metrics."""
    from ragloop.store.db import session_scope
    from ragloop.training.registry import diff_models, get_model

    try:
        with session_scope(_settings(home).db_url) as s:
            diff = diff_models(get_model(s, a), get_model(s, b))
    except RagloopError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(diff, indent=2, default=str))
        return
    table = Table("section", "key", diff["a"], diff["b"], "Δ")
    for section in ("base", "lineage", "dataset", "curation_policy", "hyperparameters", "metrics", "code"):
        for key, entry in diff[section].items():
            delta = entry.get("delta")
            table.add_row(
                section, key, str(entry["a"]), str(entry["b"]), "" if delta is None else f"{delta:+.4g}"
            )
    console.print(table)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version id (or alias) to serve.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    home: HomeOpt = None,
) -> None:
    """Serve a version under an alias from the next request on (running servers pick it up, no restart)."""
    from ragloop.generation.release import promote

    try:
        moved = promote(_settings(home), version, alias, note="cli")
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(f"{alias} → {moved.model_version}")


@models_app.command("rollback")
def models_rollback(
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production", home: HomeOpt = None
) -> None:
    """Point an alias back at the version it had before its last promotion."""
    from ragloop.generation.release import rollback

    try:
        moved = rollback(_settings(home), alias, note="cli")
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(f"{alias}: {moved.previous} → {moved.model_version}")


@models_app.command("export")
def models_export(
    version: Annotated[str, typer.Argument(help="Version id or alias.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must be new or empty).")],
    merged: Annotated[
        bool, typer.Option("--merged", help="Fold the adapter into full safetensors weights.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Export a version: its LoRA adapter folder, or a merged model plain transformers loads."""
    from ragloop.training.registry import export_model

    try:
        path = export_model(_settings(home), version, out, merged=merged)
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(f"exported {'merged model' if merged else 'adapter'} to {path}")


# ---- Evaluation (stage 8; logic in ragloop.evaluation) -------------------------------------------------
eval_app = typer.Typer(
    help="Evaluate a model version on a QA set: `ragloop eval --model M --data FILE_OR_DATASET --condition C`.",
)
app.add_typer(eval_app, name="eval")


def _eval_progress():  # type: ignore[no-untyped-def]
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err)  # fmt: skip


def _metrics_table(metrics: dict, title: str = "") -> Table:
    table = Table("metric", "value", title=title or None)
    for key, value in metrics.items():
        table.add_row(
            key, "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        )
    return table


@eval_app.callback(invoke_without_command=True)
def eval_command(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option(help="Model version or alias (default: production, else base).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="QA file (any supported format) or dataset version id.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="auto | hotpotqa | squad | pubmedqa | apibench | generic")
    ] = "auto",
    condition: Annotated[
        str, typer.Option(help="oracle | distractors | no-gold | closed-book | live")
    ] = "distractors",
    distractors: Annotated[
        int | None, typer.Option(help="Distractors shown (distractors, no-gold; default 4).")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Passages retrieved under live (default: retrieval.top_k setting).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate a seeded random sample of N questions.")] = None,
    sample_seed: Annotated[int, typer.Option(help="Seed of the --limit sample.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of each question's distractors and passage order.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together (greedy, left-padded).")] = 8,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Default: the generator.max_new_tokens setting.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a dataset version.")] = "test",
    reuse: Annotated[
        bool, typer.Option(help="Print a stored run with identical settings instead of generating again.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--restart",
            help="Continue an interrupted or failed run with identical settings (keep its answers), "
            "or start a new one.",
        ),
    ] = True,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Evaluate a model version (scores and answers are stored: `ragloop eval show RUN`)."""
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        console.print(ctx.get_help())
        raise typer.Exit(code=2)
    from ragloop.evaluation.run import EvalConfig, reusable_run, run_eval

    config = EvalConfig(data=data, model=model, format=fmt, split=split, limit=limit, sample_seed=sample_seed,
                        condition=condition, n_distractors=distractors, top_k=top_k, seed=seed,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, resume=resume)  # fmt: skip
    try:
        settings = _settings(home)
        run = reusable_run(settings, config) if reuse else None
        if run is not None:
            err.print(f"reusing stored run {run.id} (identical settings)")
        else:
            with _eval_progress() as bar:
                task = bar.add_task(f"eval {condition}", total=None)
                run = run_eval(
                    settings,
                    config,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    except RagloopError as exc:
        raise _fail(exc) from None
    if as_json:
        print(
            json.dumps(
                {"run_id": run.id, "metrics": run.metrics, "config": run.config}, indent=2, default=str
            )
        )
        return
    if (run.config or {}).get("resumed"):
        err.print(f"continued interrupted run {run.id} (its stored answers kept; --restart starts afresh)")
    k = f", k={run.n_distractors}" if run.n_distractors is not None else ""
    console.print(
        _metrics_table(run.metrics, f"{run.model_version} · {run.condition}{k} · {run.n_examples} questions")
    )
    skipped = (run.config or {}).get("skipped") or {}
    if skipped:
        err.print(f"left out: {', '.join(f'{n} {reason}' for reason, n in skipped.items())}")
    console.print(
        f"run [bold]{run.id}[/] ({run.wall_s:.1f} s) — answers: ragloop eval show {run.id[:12]} --wrong"
    )


@eval_app.command("show")
def eval_show(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    examples: Annotated[int, typer.Option(help="Print N answers.")] = 5,
    wrong: Annotated[bool, typer.Option(help="Only answers scored wrong.")] = False,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """A stored run: its config, metrics and answers."""
    from rich.text import Text

    from ragloop.evaluation.run import get_run, run_examples

    settings = _settings(home)
    try:
        run = get_run(settings, run_id)
        rows = run_examples(settings, run.id, wrong=wrong, limit=examples)
    except RagloopError as exc:
        raise _fail(exc) from None
    if as_json:
        data = {c.name: getattr(run, c.name) for c in run.__table__.columns}
        data["examples"] = [{c.name: getattr(e, c.name) for c in e.__table__.columns} for e in rows]
        print(json.dumps(data, indent=2, default=str))
        return
    cfg = run.config or {}
    console.print(f"[bold]{run.id}[/] {run.status} · model {run.model_version} · {run.condition}"
                  f"{'' if run.n_distractors is None else f' k={run.n_distractors}'} · {run.n_examples} questions · "
                  f"{run.wall_s:.1f} s", highlight=False)  # fmt: skip
    console.print(f"data {run.dataset} (sha256 {run.dataset_hash[:12]}…) · seed {cfg.get('seed')} · "
                  f"sample {cfg.get('limit') or 'all'} · max_new_tokens {(cfg.get('gen_params') or {}).get('max_new_tokens')}",
                  highlight=False)  # fmt: skip
    console.print(_metrics_table(run.metrics or {}))
    for e in rows:
        verdict = "[green]right[/]" if (e.scores or {}).get("correct") else "[red]wrong[/]"
        console.rule(f"{e.example_id} {verdict}")
        console.print(
            Text(f"Q: {e.question}\ngold: {' | '.join(map(str, e.answers))}\nprediction: {e.prediction}")
        )
        console.print(Text(f"output: {e.output}"), style="dim")


@eval_app.command("list")
def eval_list(
    model: Annotated[str | None, typer.Option(help="Only this model version or alias.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    home: HomeOpt = None,
) -> None:
    """Eval runs, newest first."""
    from ragloop.evaluation.metrics import primary_metric
    from ragloop.evaluation.run import list_runs

    try:
        runs = list_runs(_settings(home), model, limit)
    except RagloopError as exc:
        raise _fail(exc) from None
    table = Table()
    for column in ("run", "created", "model", "data", "condition", "k", "n", "score", "status"):
        # run ids (a prefix is enough for every eval command) must survive a narrow terminal
        table.add_column(column, no_wrap=column == "run", min_width=12 if column == "run" else None)
    for r in runs:
        metric = primary_metric(r.metrics or {})
        value = (r.metrics or {}).get(metric)
        table.add_row(r.id[:12], r.created_at.isoformat(timespec="seconds"), r.model_version, Path(r.dataset).name,
                      r.condition, "" if r.n_distractors is None else str(r.n_distractors), str(r.n_examples),
                      "" if value is None else f"{metric} {value:.3f}", r.status)  # fmt: skip
    console.print(table)


@eval_app.command("compare")
def eval_compare(
    run_a: Annotated[str, typer.Argument(help="Run A (the reference).")],
    run_b: Annotated[str, typer.Argument(help="Run B (differences are B − A).")],
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Two runs on their common questions: paired bootstrap 95% CIs of B − A and the changed verdicts."""
    import dataclasses

    from ragloop.evaluation.compare import compare_runs, comparison_tables

    try:
        comparison = compare_runs(_settings(home), run_a, run_b, resamples=resamples, seed=seed)
    except RagloopError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(dataclasses.asdict(comparison), indent=2, default=str))
        return
    for table in comparison_tables(comparison):
        console.print(table)


@eval_app.command("robustness")
def eval_robustness(
    model: Annotated[list[str], typer.Option(help="Model version or alias (repeat for several).")],
    data: Annotated[str, typer.Option(help="QA file or dataset version id.")],
    out: Annotated[Path, typer.Option(help="Folder for robustness.md, .png and .svg.")],
    distractors: Annotated[str, typer.Option(help="Comma-separated numbers of distractors.")] = "0,2,4,8",
    no_gold: Annotated[
        bool, typer.Option("--no-gold", help="Also run each k with the gold removed.")
    ] = False,
    fmt: Annotated[str, typer.Option("--format")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Seeded random sample of N questions.")] = None,
    sample_seed: Annotated[int, typer.Option()] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_new_tokens: Annotated[int | None, typer.Option()] = None,
    split: Annotated[str, typer.Option()] = "test",
    reuse: Annotated[bool, typer.Option(help="Reuse stored runs with identical settings.")] = True,
    home: HomeOpt = None,
) -> None:
    """Score vs number of distractors (and with the gold removed) for several model versions."""
    from ragloop.evaluation.robustness import run_robustness
    from ragloop.evaluation.run import EvalConfig

    try:
        ks = [int(k) for k in distractors.split(",") if k.strip()]
    except ValueError:
        raise typer.BadParameter(f"--distractors {distractors!r}: write numbers like 0,2,4,8") from None
    base = EvalConfig(data=data, format=fmt, split=split, limit=limit, sample_seed=sample_seed, seed=seed,
                      max_new_tokens=max_new_tokens, batch_size=batch_size)  # fmt: skip
    try:
        with _eval_progress() as bar:
            task = bar.add_task("robustness", total=None)

            def on_step(m: str, condition: str, k: int, reused: bool) -> None:
                bar.update(
                    task, description=f"{m} {condition} k={k}" + (" (reused)" if reused else ""), completed=0
                )

            report = run_robustness(_settings(home), model, base, ks, out, no_gold=no_gold, reuse=reuse, on_step=on_step,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))  # fmt: skip
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(report.markdown.read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"wrote {report.markdown}, {report.png}, {report.svg}")


@eval_app.command("review")
def eval_review(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    n: Annotated[
        int, typer.Option("--n", help="Answers to queue (half right, half wrong when possible).")
    ] = 20,
    seed: Annotated[int, typer.Option()] = 0,
    queue: Annotated[str, typer.Option(help="Review queue.")] = "eval",
    home: HomeOpt = None,
) -> None:
    """Send a sample of a run's answers to the expert review queue."""
    from ragloop.evaluation.review import sample_for_review
    from ragloop.feedback.review import review_url

    settings = _settings(home)
    try:
        ids = sample_for_review(settings, run_id, n, seed=seed, queue=queue)
    except RagloopError as exc:
        raise _fail(exc) from None
    console.print(f"queued {len(ids)} answers in queue {queue!r} — review at {review_url(settings.server, queue)}; "
                  f"then: ragloop eval agreement {run_id}")  # fmt: skip


@eval_app.command("agreement")
def eval_agreement(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """How often reviewers agree with the metric's verdict on a run's reviewed answers (accuracy, kappa)."""
    import dataclasses

    from ragloop.evaluation.review import agreement

    try:
        a = agreement(_settings(home), run_id)
    except RagloopError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(dataclasses.asdict(a), indent=2, default=str))
        return
    fmt3 = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    console.print(
        f"run {a.run_id}: {a.n_judged} of {a.n_queued} queued answers judged by {len(a.reviewers)} reviewer(s)"
    )
    console.print(
        f"agreement (metric right ⇔ reviewer up): {fmt3(a.accuracy)} · Cohen's kappa {fmt3(a.kappa)}"
    )
    for key, count in a.confusion.items():
        console.print(f"  {key}: {count}")
