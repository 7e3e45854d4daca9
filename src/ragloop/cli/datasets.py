"""``ragloop synth | dataset | forget``: training data, from synthetic questions to curated dataset versions,
and erasure (stages 5-6, logic in ``ragloop.datasets`` and ``ragloop.curation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ragloop.cli.common import HomeOpt, console, dataset_command, err, home_settings

dataset_app = typer.Typer(no_args_is_help=True, help="Curated, versioned training datasets.")


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

    settings = home_settings(home)
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


def _imports(specs: list[str] | None) -> list[tuple[str, Path]]:
    """``--import [FORMAT:]FILE`` values as (format, path); a path that exists as typed is taken whole, so a
    file name holding a colon still works."""
    imports = []
    for spec in specs or []:
        fmt, _, path = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else ("", "", spec)
        imports.append((fmt or "auto", Path(path)))
    return imports


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

    from ragloop.curation.policy import load_policy
    from ragloop.datasets.build import build_dataset

    settings = home_settings(home)
    imports = _imports(import_)
    command = dataset_command()
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


@dataset_app.command("pairs")
def dataset_pairs(
    name: Annotated[str, typer.Option(help="Dataset name.")] = "pairs",
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
    pairs_file: Annotated[
        list[Path] | None,
        typer.Option("--pairs", help="Pairs file (JSON lines: question, positive, negatives)."),
    ] = None,
    eval_set: Annotated[
        list[Path] | None, typer.Option(help="Evaluation set to decontaminate against (repeat).")
    ] = None,
    mine: Annotated[
        int, typer.Option(help="Negatives mined per imported question with the current retriever (0: none).")
    ] = 0,
    mine_embedder: Annotated[
        str | None, typer.Option(help="Embedder version the mining retriever uses (default: the base).")
    ] = None,
    max_negatives: Annotated[int, typer.Option(help="Hard negatives kept per pair.")] = 8,
    seed: Annotated[int, typer.Option()] = 0,
    min_pairs: Annotated[int, typer.Option(help="Fail if fewer pairs pass.")] = 8,
    home: HomeOpt = None,
) -> None:
    """Retriever-tuning pairs (question, positive passage, hard negatives) as a dataset version."""

    from ragloop.curation.policy import load_policy
    from ragloop.datasets.pairs import build_pairs

    settings = home_settings(home)
    imports = _imports(import_)
    command = dataset_command()
    report = build_pairs(
        settings,
        load_policy(policy),
        name=name,
        from_interactions=interactions,
        imports=imports,
        pairs_files=list(pairs_file or []),
        eval_sets=list(eval_set or []),
        mine=mine,
        mine_embedder=mine_embedder,
        max_negatives=max_negatives,
        seed=seed,
        min_pairs=min_pairs,
        command=command,
    )
    _print_counts(report.counts)
    negatives = report.counts.get("negatives") or {}
    if negatives.get("mined"):
        console.print(f"mined negatives: {negatives['mined']}")
    if negatives.get("from_records"):
        console.print(f"negatives from records retrieved by: {negatives['from_records']}")
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
    """Dataset versions, newest first; those whose PII was replaced by older recognizers are marked, with
    the models trained on them and the command that rebuilds them."""
    from ragloop.datasets.build import list_datasets, older_pii_datasets

    settings = home_settings(home)
    older = older_pii_datasets(settings.db_url)
    table = Table("id", "name", "created", "source", "train", "val", "test", "erased", "PII")
    for dv in list_datasets(settings.db_url):
        ex = (dv.counts or {}).get("examples", {})
        table.add_row(
            dv.id,
            dv.name,
            dv.created_at.isoformat(timespec="seconds"),
            dv.source,
            *(str(ex.get(k, 0)) for k in ("train", "val", "test")),
            "yes" if dv.contains_erased else "",
            f"older (v{older[dv.id].built_with})" if dv.id in older else "",
        )
    console.print(table)
    for o in older.values():
        console.print(
            f"{o.dataset_id}: PII replaced by recognizer v{o.built_with}, older than this ragloop's; names it "
            f"missed may remain. Rebuild: {o.rebuild}"
        )
        if o.models:
            console.print(f"  trained on it: {', '.join(o.models)} (retrain on the rebuilt dataset)")


@dataset_app.command("show")
def dataset_show(
    dataset_id: Annotated[str, typer.Argument()],
    examples: Annotated[int, typer.Option(help="Print N examples.")] = 1,
    home: HomeOpt = None,
) -> None:
    """A dataset version: hash, policy, sources, filter report, and sample examples."""
    from ragloop.datasets.build import get_dataset, load_examples

    settings = home_settings(home)
    dv = get_dataset(settings.db_url, dataset_id)
    console.print(
        f"[bold]{dv.id}[/] {dv.name} · hash {dv.content_hash} · seed {dv.seed} · KB v{dv.kb_version} · source {dv.source}"
    )
    console.print(f"policy {dv.policy.get('name')} v{dv.policy.get('version')}: raft {dv.policy.get('raft')}")
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
    from ragloop.datasets.build import diff_datasets

    for split, d in diff_datasets(home_settings(home), a, b).items():
        console.print(f"{split}: {d.before} → {d.after} (+{d.added} −{d.removed})")


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

    settings = home_settings(home)
    out = out or settings.data_dir / "exports" / f"{dataset_id}-{fmt}"
    rows = export_dataset(settings, dataset_id, fmt, out)
    console.print(f"exported to {out}: " + ", ".join(f"{k} {v}" for k, v in rows.items()))


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

    r = do_forget(
        home_settings(home),
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
    for ev in r.embedders:
        console.print(f"embedder {ev} marked as trained on erased data")
