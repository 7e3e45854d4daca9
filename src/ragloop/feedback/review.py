"""The expert review queue: which interactions a reviewer sees, in which order.

Sampling puts thumbs-down answers first (someone already said they are wrong), then answers whose best
retrieval score was low (likely unsupported), then a random share so that reviewers also see typical traffic
and the queue is an unbiased check, not only a list of failures.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sqlalchemy import func, select

from ragloop.config import ServerSettings
from ragloop.feedback.service import END_USER, END_USER_REASON, add_feedback
from ragloop.store.db import SessionOrUrl, session_of
from ragloop.store.models import Feedback, Interaction, Passage, ReviewItem, utcnow
from ragloop.store.queries import get_interaction

if TYPE_CHECKING:
    from ragloop.ingest.kb import KnowledgeBase

REASONS = ("thumbs_down", "low_score", "random", END_USER_REASON)  # the last: queued by add_feedback
DEFAULT_QUEUE = "default"
# Addresses a server binds to listen everywhere; from this machine it is reached through loopback.
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def review_url(server: ServerSettings, queue: str = DEFAULT_QUEUE) -> str:
    """The review page of a queue on the server ``[server] host/port`` configure: where the CLI sends a
    reviewer after queueing answers."""
    host = server.host.strip().strip("[]")
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:  # an IPv6 address is bracketed in a URL
        host = f"[{host}]"
    query = "" if queue == DEFAULT_QUEUE else "?" + urlencode({"queue": queue})
    return f"http://{host}:{server.port}/review{query}"


@dataclass
class SampleReport:
    thumbs_down: int = 0
    low_score: int = 0
    random: int = 0

    @property
    def total(self) -> int:
        return self.thumbs_down + self.low_score + self.random


def sample_queue(
    db: SessionOrUrl, n: int = 20, *, queue: str = DEFAULT_QUEUE, low_score_share: float = 0.5, seed: int = 0
) -> SampleReport:
    """Add up to ``n`` interactions not yet queued: every thumbs-down first, then the lowest top-passage
    dense scores, then random ones."""
    # Eval answers have their own queue (`ragloop eval review`); traffic queues only sample traffic.
    with session_of(db) as session:
        queued = (
            select(ReviewItem.interaction_id)
            .where(ReviewItem.queue == queue)
            .union(select(Interaction.id).where(Interaction.source == "eval"))
        )
        report = SampleReport()
        added: set[str] = set()

        def add(ids: list[str], reason: str, base: float) -> None:
            for i, iid in enumerate(ids):
                if report.total >= n or iid in added:
                    continue
                session.add(ReviewItem(queue=queue, interaction_id=iid, reason=reason, priority=base + i))
                added.add(iid)
                setattr(report, reason, getattr(report, reason) + 1)

        down = list(
            session.scalars(
                select(Feedback.interaction_id)
                .where(Feedback.thumbs == -1, Feedback.interaction_id.not_in(queued))
                .group_by(Feedback.interaction_id)
                .order_by(func.max(Feedback.created_at).desc())
            )
        )
        add(down, "thumbs_down", 0)
        n_low = round((n - report.total) * low_score_share)
        top_score = func.max(func.coalesce(Passage.score_dense, Passage.score))
        low = session.scalars(
            select(Passage.interaction_id)
            .where(Passage.interaction_id.not_in(queued))
            .group_by(Passage.interaction_id)
            .order_by(top_score.asc(), Passage.interaction_id)
            .limit(n_low + len(added))
        )
        add([iid for iid in low if iid not in added][:n_low], "low_score", 1_000)
        rest = list(
            session.scalars(
                select(Interaction.id).where(Interaction.id.not_in(queued)).order_by(Interaction.id)
            )
        )
        random.Random(seed).shuffle(rest)
        add(rest, "random", 2_000)
        session.flush()
        return report


def pending(db: SessionOrUrl, queue: str = DEFAULT_QUEUE, limit: int = 50) -> list[ReviewItem]:
    with session_of(db) as session:
        return list(
            session.scalars(
                select(ReviewItem)
                .where(ReviewItem.queue == queue, ReviewItem.status == "pending")
                .order_by(ReviewItem.priority, ReviewItem.id)
                .limit(limit)
            )
        )


def queue_counts(db: SessionOrUrl, queue: str = DEFAULT_QUEUE) -> dict[str, int]:
    with session_of(db) as session:
        rows = session.execute(
            select(ReviewItem.status, func.count())
            .where(ReviewItem.queue == queue)
            .group_by(ReviewItem.status)
        )
        return {status: count for status, count in rows}


def get_review_item(db: SessionOrUrl, item_id: int) -> tuple[ReviewItem, Interaction] | None:
    """A queue entry and the interaction it puts up for review, its shown passages loaded; None when the
    entry does not exist (or its interaction was erased)."""
    with session_of(db) as session:
        item = session.get(ReviewItem, item_id)
        if item is None:
            return None
        interaction = get_interaction(session, item.interaction_id)
        return None if interaction is None else (item, interaction)


def end_user_suggestion(db: SessionOrUrl, interaction_id: str) -> str | None:
    """The latest correction an end user proposed for this answer, for the review page to offer: a
    reviewer who saves it (edited or not) makes it a training target (policy ``end_user_corrections``)."""
    with session_of(db) as session:
        return session.scalars(
            select(Feedback.corrected_answer)
            .where(
                Feedback.interaction_id == interaction_id,
                Feedback.source == END_USER,
                Feedback.corrected_answer.is_not(None),
            )
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
        ).first()


def save_review(
    db: SessionOrUrl,
    item_id: int,
    data: Any,
    *,
    kb: KnowledgeBase | None = None,
    readable: list[str] | None = None,
) -> ReviewItem | None:
    """Record a reviewer's feedback on a queue entry's interaction (``add_feedback``, which also marks the
    entry done), in one transaction; None when the entry does not exist."""
    with session_of(db) as session:
        item = session.get(ReviewItem, item_id)
        if item is not None:
            add_feedback(session, item.interaction_id, data, kb=kb, readable=readable)
        return item


def skip_item(db: SessionOrUrl, item_id: int) -> ReviewItem | None:
    """Take an entry off the pending list without feedback; None when it does not exist."""
    with session_of(db) as session:
        item = session.get(ReviewItem, item_id)
        if item is not None:
            item.status, item.done_at = "skipped", utcnow()
        return item
