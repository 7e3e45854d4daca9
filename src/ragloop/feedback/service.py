"""Feedback on interactions: thumbs, 1–5 rating, comment, corrected answer, which shown passages were
relevant (gold) or not, knowledge-base passages the retriever missed that support the answer (evidence),
tags, reviewer id.

Feedback is append-only and kept per reviewer: two reviewers never overwrite each other, and the latest
submission of a reviewer is that reviewer's judgement. ``judgement`` folds them into what curation needs.

``source`` says who gave it: ``human`` (a reviewer), ``auto``, ``eval``, or ``end_user`` (the person who
asked, through the chat page or a non-admin key). An end user's feedback never closes a reviewer's queue
entry, and an end user's correction puts the answer in the review queue: how far curation trusts it is the
curation policy's ``end_user_corrections``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragloop.errors import RagloopError
from ragloop.store.db import SessionOrUrl, session_of
from ragloop.store.models import Feedback, Interaction, ReviewItem, utcnow
from ragloop.store.queries import visible_interaction

if TYPE_CHECKING:
    from ragloop.ingest.kb import KnowledgeBase

FIELDS = {
    "reviewer_id",
    "thumbs",
    "rating",
    "comment",
    "corrected_answer",
    "gold",
    "irrelevant",
    "tags",
    "source",
    "evidence",
}
MAX_TEXT = 20_000
MAX_EVIDENCE = 10
SOURCES = ("human", "auto", "eval", "end_user")
END_USER = "end_user"
END_USER_CORRECTIONS = ("review", "trust", "ignore")
"""How a fold treats end users' corrections: ``review`` (only a reviewer's feedback after it counts; until
then the answer is awaiting review), ``trust`` (like a reviewer's), ``ignore`` (never)."""


def _ranks(value: Any, n_passages: int, name: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RagloopError(f"`{name}` must be a list of passage numbers (1..{n_passages}).")
    bad = [v for v in value if not 1 <= v <= n_passages]
    if bad:
        raise RagloopError(
            f"`{name}` names passages {bad} but the interaction showed {n_passages} (1..{n_passages})."
        )
    return sorted(set(value))


def validate_feedback(data: Any, n_passages: int) -> dict[str, Any]:
    """Check a feedback payload completely before anything is written; returns the column values."""
    if not isinstance(data, dict):
        raise RagloopError("Feedback must be a JSON object.")
    unknown = set(data) - FIELDS
    if unknown:
        raise RagloopError(f"Unknown feedback fields {sorted(unknown)}; allowed: {sorted(FIELDS)}.")
    reviewer = data.get("reviewer_id") or "anonymous"
    if not isinstance(reviewer, str) or len(reviewer) > 128:
        raise RagloopError("`reviewer_id` must be a string of at most 128 characters.")
    thumbs = data.get("thumbs")
    if isinstance(thumbs, str):
        thumbs = {"up": 1, "down": -1}.get(thumbs, thumbs)
    if thumbs is not None and thumbs not in (1, -1):
        raise RagloopError("`thumbs` must be 'up', 'down', 1 or -1.")
    rating = data.get("rating")
    if rating is not None and (
        isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5
    ):
        raise RagloopError("`rating` must be an integer from 1 to 5.")
    texts = {}
    for name in ("comment", "corrected_answer"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise RagloopError(f"`{name}` must be a string of at most {MAX_TEXT} characters.")
        texts[name] = value.strip() if isinstance(value, str) and value.strip() else None
    tags = data.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(t, str) and len(t) <= 64 for t in tags)
    ):
        raise RagloopError("`tags` must be a list of short strings.")
    source = data.get("source") or "human"
    if source not in SOURCES:
        raise RagloopError(f"`source` must be one of {', '.join(SOURCES)}.")
    gold = _ranks(data.get("gold"), n_passages, "gold")
    irrelevant = _ranks(data.get("irrelevant"), n_passages, "irrelevant")
    if gold and irrelevant and set(gold) & set(irrelevant):
        raise RagloopError(
            f"Passages {sorted(set(gold) & set(irrelevant))} are marked both gold and irrelevant."
        )
    evidence = data.get("evidence")
    if evidence is not None and (
        not isinstance(evidence, list)
        or len(evidence) > MAX_EVIDENCE
        or not all(isinstance(e, str) and 0 < len(e) <= 64 for e in evidence)
    ):
        raise RagloopError(
            f"`evidence` must be a list of at most {MAX_EVIDENCE} chunk ids of the knowledge base."
        )
    if (
        thumbs is None
        and rating is None
        and not texts["corrected_answer"]
        and gold is None
        and not texts["comment"]
        and not evidence
    ):
        raise RagloopError(
            "Empty feedback: give thumbs, a rating, a correction, gold passages, evidence or a comment."
        )
    return dict(
        evidence=list(dict.fromkeys(evidence)) if evidence else None,
        reviewer_id=reviewer,
        thumbs=thumbs,
        rating=rating,
        gold_ranks=gold,
        irrelevant_ranks=irrelevant,
        tags=tags,
        source=source,
        **texts,
    )


def add_feedback(
    db: SessionOrUrl,
    interaction_id: str,
    data: Any,
    kb: KnowledgeBase | None = None,
    readable: list[str] | None = None,
    may_read: Callable[[str | None], bool] | None = None,
) -> Feedback:
    """Validate and append one reviewer's feedback; marks the interaction's review items done. Evidence
    (chunk ids) is looked up in ``kb`` at the interaction's KB version, within its collections and within
    ``readable`` (the collections the reviewer's key may read; None: all), and pinned with its text hash;
    an id among the shown passages counts as marking that passage gold. ``may_read(api_key_id)`` says
    whether the reviewer may see an interaction made with that key; one it may not see is reported as
    absent, so ids cannot be probed."""
    with session_of(db) as session:
        return _add_feedback(session, interaction_id, data, kb, readable, may_read)


def _add_feedback(
    session: Session,
    interaction_id: str,
    data: Any,
    kb: KnowledgeBase | None,
    readable: list[str] | None,
    may_read: Callable[[str | None], bool] | None,
) -> Feedback:
    interaction = visible_interaction(session, interaction_id, may_read)
    values = validate_feedback(data, len(interaction.passages))
    if values["evidence"]:
        values["evidence"], shown_gold = _pin_evidence(interaction, values["evidence"], kb, readable)
        both = set(shown_gold) & set(values["irrelevant_ranks"] or [])
        if both:
            raise RagloopError(f"Passages {sorted(both)} are given as evidence and marked irrelevant.")
        if shown_gold:
            values["gold_ranks"] = sorted(set(values["gold_ranks"] or []) | set(shown_gold))
    fb = Feedback(interaction_id=interaction_id, **values)
    session.add(fb)
    if values["source"] == END_USER:
        if values["corrected_answer"]:
            _queue_for_review(session, interaction_id)
    else:
        for item in session.scalars(
            select(ReviewItem).where(
                ReviewItem.interaction_id == interaction_id, ReviewItem.status == "pending"
            )
        ):
            item.status, item.done_at = "done", utcnow()
    session.flush()
    return fb


END_USER_REASON = "end_user_correction"
# Ahead of every sampled entry (thumbs-down ones start at 0): a user says the answer is wrong and wrote
# what it should be, the cheapest review there is.
END_USER_PRIORITY = -1.0


def _queue_for_review(session: Session, interaction_id: str, queue: str = "default") -> None:
    """Put an answer an end user corrected up for review: a new entry, or its entry in the queue opened
    again (one entry per interaction and queue)."""
    item = session.scalars(
        select(ReviewItem).where(ReviewItem.interaction_id == interaction_id, ReviewItem.queue == queue)
    ).first()
    if item is None:
        session.add(
            ReviewItem(
                queue=queue, interaction_id=interaction_id, reason=END_USER_REASON, priority=END_USER_PRIORITY
            )
        )
    elif item.status != "pending":
        item.status, item.done_at = "pending", None
        item.reason, item.priority = END_USER_REASON, END_USER_PRIORITY


def _pin_evidence(
    interaction: Interaction,
    chunk_ids: list[str],
    kb: KnowledgeBase | None,
    readable: list[str] | None = None,
) -> tuple[list[dict] | None, list[int]]:
    """Evidence as ``[{chunk_id, kb_version, text_sha256}]`` (those not shown) and the ranks of those that
    were shown. Only chunks the answer could have been given from count: same KB version, same collections
    (a reviewer must not pull another collection's text into training data), and only ones the reviewer's
    key may read (else a scoped key could copy any collection's text into the records)."""
    shown = {p.chunk_id: p.rank for p in interaction.passages}
    shown_gold = [shown[c] for c in chunk_ids if c in shown]
    missing_ids = [c for c in chunk_ids if c not in shown]
    if not missing_ids:
        return None, shown_gold
    if kb is None:
        raise RagloopError("Evidence needs the knowledge base to look its passages up.")
    version = interaction.kb_version
    if version is None:  # answered from an empty KB: no version the evidence could be pinned to
        raise RagloopError("This answer was made with an empty knowledge base: it can take no evidence.")
    rows = kb.get_chunks(missing_ids, version=version)
    scopes = [set(s) for s in (interaction.collections, readable) if s is not None]
    allowed = set.intersection(*scopes) if scopes else None  # None: every collection
    absent = [
        c
        for c in missing_ids
        if c not in rows or (allowed is not None and rows[c].get("collection") not in allowed)
    ]
    if absent:
        where = f"knowledge-base version {version}"
        if allowed is not None:
            where += f" (collections {sorted(allowed)})"
        raise RagloopError(
            f"Evidence {absent} is not a passage of {where}, which this answer was made from "
            f"(`ragloop kb search --version {version}` finds its passages)."
        )
    pinned = [
        {
            "chunk_id": c,
            "kb_version": version,
            "text_sha256": hashlib.sha256(rows[c]["text"].encode("utf-8")).hexdigest(),
        }
        for c in missing_ids
    ]
    return pinned, shown_gold


def feedback_for(session: Session, interaction_id: str) -> list[Feedback]:
    return list(
        session.scalars(
            select(Feedback).where(Feedback.interaction_id == interaction_id).order_by(Feedback.id)
        )
    )


@dataclass
class Judgement:
    """All reviewers' latest feedback on one interaction, folded.

    ``accepted`` is True when every reviewer who gave thumbs or a rating liked it (thumbs up or rating ≥ the
    threshold), False when any disliked it, None when nobody judged. A correction wins over the answer."""

    reviewers: list[str] = field(default_factory=list)
    accepted: bool | None = None
    mean_rating: float | None = None
    thumbs_down: bool = False
    corrected_answer: str | None = None
    awaiting_review: bool = False  # an end user corrected it and no reviewer has looked since ("review")
    gold_ranks: list[int] = field(default_factory=list)
    irrelevant_ranks: list[int] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)  # unshown supporting passages of the answer kept


def judgement(
    feedback: list[Feedback], accept_rating: int = 4, *, end_user_corrections: str = "trust"
) -> Judgement:
    """Fold every reviewer's latest feedback. ``end_user_corrections`` (``END_USER_CORRECTIONS``) says what
    an end user's correction (and the evidence sent with it) counts for: the default ``trust`` reads
    feedback as given (the A/B correction rate counts users' corrections); curation passes its policy's
    setting, ``review`` unless a policy says otherwise: an end user's correction, evidence and gold or
    irrelevant marks are then set aside. End users' thumbs and ratings count either way."""
    if end_user_corrections not in END_USER_CORRECTIONS:
        raise RagloopError(
            f"end_user_corrections must be one of {', '.join(END_USER_CORRECTIONS)}, "
            f"not {end_user_corrections!r}."
        )
    ordered = sorted(feedback, key=lambda f: (f.created_at, f.id))
    awaiting = False
    if end_user_corrections != "trust":
        last_user_fix = max(
            (k for k, f in enumerate(ordered) if f.source == END_USER and f.corrected_answer), default=-1
        )
        reviewed = any(f.source != END_USER for f in ordered[last_user_fix + 1 :])
        awaiting = end_user_corrections == "review" and last_user_fix >= 0 and not reviewed
        ordered = [_without_correction(f) if f.source == END_USER else f for f in ordered]
    latest: dict[str, Feedback] = {}
    for fb in ordered:
        latest.pop(fb.reviewer_id, None)  # re-inserted: the dict stays ordered by each reviewer's latest
        latest[fb.reviewer_id] = fb
    j = Judgement(reviewers=sorted(latest))
    votes: list[bool] = []
    ratings = [f.rating for f in latest.values() if f.rating is not None]
    for fb in latest.values():
        if fb.thumbs is not None:
            votes.append(fb.thumbs > 0)
        elif fb.rating is not None:
            votes.append(fb.rating >= accept_rating)
        if fb.thumbs == -1:
            j.thumbs_down = True
        if fb.corrected_answer:
            j.corrected_answer = fb.corrected_answer  # the latest reviewer's correction
        j.gold_ranks = sorted(set(j.gold_ranks) | set(fb.gold_ranks or []))
        j.irrelevant_ranks = sorted(set(j.irrelevant_ranks) | set(fb.irrelevant_ranks or []))
        j.tags = sorted(set(j.tags) | set(fb.tags or []))
    # Evidence supports an answer: a reviewer's pins go with their own correction, and those of a reviewer
    # whose different correction lost are dropped (their passage may support what they wrote, not this).
    for fb in latest.values():
        if fb.corrected_answer and fb.corrected_answer != j.corrected_answer:
            continue
        known = {e["chunk_id"] for e in j.evidence}
        j.evidence += [e for e in fb.evidence or [] if e["chunk_id"] not in known]
    j.accepted = all(votes) if votes else None
    j.mean_rating = sum(ratings) / len(ratings) if ratings else None
    j.awaiting_review = awaiting
    return j


def _without_correction(fb: Feedback) -> Feedback:
    """A detached copy of an end user's feedback keeping its votes but not what corrects the answer or its
    retrieval: the correction, the evidence, and the passages marked gold or irrelevant (an end user's
    marks would otherwise become retrieval targets no reviewer has seen). The record itself is never
    changed: it may still be attached to a session."""
    columns = {c.name: getattr(fb, c.name) for c in Feedback.__table__.columns}
    unset = {"corrected_answer": None, "evidence": None, "gold_ranks": None, "irrelevant_ranks": None}
    return Feedback(**{**columns, **unset})
