"""``ragloop feedback | review``: reviewers' judgements and the review queue (stage 4, logic in
``ragloop.feedback``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ragloop.cli.common import HomeOpt, console, home_settings

review_app = typer.Typer(no_args_is_help=True, help="The expert review queue.")


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
    settings = home_settings(home)
    fb = add_feedback(settings.db_url, interaction_id, data, kb=KnowledgeBase(settings) if evidence else None)
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

    settings = home_settings(home)
    r = sample_queue(settings.db_url, n, queue=queue, seed=seed)
    console.print(
        f"queued {r.total}: {r.thumbs_down} thumbs-down, {r.low_score} low score, {r.random} random "
        f"— review them at {review_url(settings.server, queue)}"
    )
