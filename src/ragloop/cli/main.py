"""The ``ragloop`` command: one Typer app assembled from the command modules of each stage, and the one
place where a RagloopError becomes a red ``error:`` line and exit code 1."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from ragloop.cli import ab, answers, datasets, drift, evaluation, feedback, ingest, keys, models, training
from ragloop.cli.common import err
from ragloop.errors import RagloopError


class _Door(TyperGroup):
    """Every command runs inside this group's ``invoke``, so a stage's RagloopError is printed here, once,
    whichever command raised it (and also under Typer's CliRunner, which never calls ``main``)."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except RagloopError as exc:
            err.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=1) from None


app = typer.Typer(
    cls=_Door,
    no_args_is_help=True,
    add_completion=False,
    help="ragloop: a RAG assistant that trains on its own traffic.",
)
# The order here is the order of `ragloop --help`.
for command in (
    ingest.init,
    ingest.ingest,
    ingest.remove,
    answers.ask,
    answers.serve,
    answers.replay,
    answers.logs,
    feedback.feedback,
    datasets.synth,
    datasets.forget,
    drift.drift,
    drift.alerts,
):
    app.command()(command)
for name, group in (
    ("kb", ingest.kb_app),
    ("keys", keys.keys_app),
    ("models", models.models_app),
    ("dataset", datasets.dataset_app),
    ("review", feedback.review_app),
    ("train", training.train_app),
    ("jobs", training.jobs_app),
    ("eval", evaluation.eval_app),
    ("ab", ab.ab_app),
):
    app.add_typer(group, name=name)


def main() -> None:  # pragma: no cover - console script
    app()
