"""``ragloop eval``: scoring model versions on QA sets, comparing runs, and checking the metric against
reviewers (stage 8, logic in ``ragloop.evaluation``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ragloop.cli.common import HomeOpt, JsonOpt, console, err, home_settings

eval_app = typer.Typer(
    help="Evaluate a model version on a QA set: `ragloop eval --model M --data FILE_OR_DATASET --condition C`.",
)


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
    embedder: Annotated[
        str | None, typer.Option(help="Embedder version retrieving under live (default: the base one).")
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
    from ragloop.ingest.embed import embedder_id

    config = EvalConfig(data=data, model=model, format=fmt, split=split, limit=limit, sample_seed=sample_seed,
                        condition=condition, n_distractors=distractors, top_k=top_k, seed=seed,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, resume=resume,
                        embedder=embedder_id(embedder))  # fmt: skip
    settings = home_settings(home)
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

    settings = home_settings(home)
    run = get_run(settings, run_id)
    rows = run_examples(settings, run.id, wrong=wrong, limit=examples)
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


@eval_app.command("rescore")
def eval_rescore(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Score a finished run's stored answers again with the current metrics (no generation): a new run."""
    from ragloop.evaluation.run import get_run, rescore_run

    settings = home_settings(home)
    old = get_run(settings, run_id)
    new = rescore_run(settings, old.id)
    if as_json:
        print(json.dumps({"run_id": new.id, "rescored_from": old.id, "before": old.metrics, "after": new.metrics},
                         indent=2, default=str))  # fmt: skip
        return
    table = Table("metric", f"{old.id[:12]} (stored)", f"{new.id[:12]} (rescored)", title="scores again")
    for key in dict.fromkeys([*(old.metrics or {}), *(new.metrics or {})]):
        a, b = (old.metrics or {}).get(key), (new.metrics or {}).get(key)
        if a != b:
            table.add_row(
                key, *("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in (a, b))
            )
    console.print(table if table.row_count else "No metric changed.")
    console.print(
        f"new run: {new.id} (compare: ragloop eval compare {old.id[:12]} {new.id[:12]})", highlight=False
    )


@eval_app.command("list")
def eval_list(
    model: Annotated[str | None, typer.Option(help="Only this model version or alias.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    home: HomeOpt = None,
) -> None:
    """Eval runs, newest first."""
    from ragloop.evaluation.metrics import primary_metric
    from ragloop.evaluation.run import list_runs

    runs = list_runs(home_settings(home), model, limit)
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

    comparison = compare_runs(home_settings(home), run_a, run_b, resamples=resamples, seed=seed)
    if as_json:
        print(json.dumps(dataclasses.asdict(comparison), indent=2, default=str))
        return
    for table in comparison_tables(comparison):
        console.print(table)


@eval_app.command("retrieval")
def eval_retrieval(
    embedder: Annotated[
        list[str] | None, typer.Option(help="Embedder version, or 'base' (repeat to compare; default: base).")
    ] = None,
    qa: Annotated[
        Path | None, typer.Option(help="Held-apart questions: a QA file (any supported format).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="...or a pairs dataset id (its --split).")] = None,
    split: Annotated[str, typer.Option(help="Split of --dataset.")] = "test",
    mode: Annotated[list[str] | None, typer.Option(help="dense | hybrid (repeat; default: both).")] = None,
    corpus: Annotated[
        str, typer.Option(help="kb (the knowledge base) or pool (the questions' own passages).")
    ] = "kb",
    match: Annotated[
        str, typer.Option(help="text (chunk holds a gold passage) or title (distinct titles).")
    ] = "text",
    kb_version: Annotated[int | None, typer.Option(help="KB version to search (default: current).")] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Retrieval quality of embedders on held-apart questions: recall@1/5/10 and MRR, dense and hybrid."""
    import dataclasses

    from ragloop.evaluation.retrieval import evaluate_retrieval, questions_from

    settings = home_settings(home)
    items = questions_from(settings, qa=qa, dataset=dataset, split=split)
    modes = mode or (["dense"] if corpus == "pool" else ["dense", "hybrid"])
    reports = [
        evaluate_retrieval(
            settings, items, embedder=e, mode=m, corpus=corpus, match=match, kb_version=kb_version
        )
        for e in embedder or ["base"]
        for m in modes
    ]
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in reports], indent=2))
        return
    table = Table("embedder", "mode", "corpus", "n", "recall@1", "recall@5", "recall@10", "MRR")
    for r in reports:
        m = r.metrics
        table.add_row(r.embedder, r.mode, r.corpus, str(int(m["n"])),
                      *(f"{m[k]:.3f}" for k in ("recall@1", "recall@5", "recall@10", "mrr")))  # fmt: skip
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
    with _eval_progress() as bar:
        task = bar.add_task("robustness", total=None)

        def on_step(m: str, condition: str, k: int, reused: bool) -> None:
            bar.update(
                task, description=f"{m} {condition} k={k}" + (" (reused)" if reused else ""), completed=0
            )

        report = run_robustness(home_settings(home), model, base, ks, out, no_gold=no_gold, reuse=reuse, on_step=on_step,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))  # fmt: skip
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

    settings = home_settings(home)
    ids = sample_for_review(settings, run_id, n, seed=seed, queue=queue)
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

    a = agreement(home_settings(home), run_id)
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
