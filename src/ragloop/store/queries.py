"""Read-side queries over recorded interactions, shared by ``ragloop logs`` and the web UI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import selectinload

from ragloop.errors import NotFound
from ragloop.store.db import SessionOrUrl, session_of
from ragloop.store.models import Interaction


def interaction_query(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
    text: str | None = None,
    conversation_id: str | None = None,
) -> Select:
    """A select over interactions, oldest first. ``text`` matches the question or the answer (case-insensitive)."""
    q = (
        select(Interaction)
        .options(selectinload(Interaction.passages))
        .order_by(Interaction.created_at, Interaction.id)
    )
    if since:
        q = q.where(Interaction.created_at >= since)
    if until:
        q = q.where(Interaction.created_at < until)
    if model:
        q = q.where(or_(Interaction.model_version == model, Interaction.model_alias == model))
    if conversation_id:
        q = q.where(Interaction.conversation_id == conversation_id)
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        q = q.where(
            or_(
                Interaction.retrieval_query.ilike(pattern, escape="\\"),
                Interaction.answer.ilike(pattern, escape="\\"),
            )
        )
    return q


def iter_interactions(db: SessionOrUrl, limit: int | None = None, **filters) -> Iterator[Interaction]:  # type: ignore[no-untyped-def]
    """Stream matching interactions in batches, so exporting millions of records stays in constant memory
    (given a database URL, the session stays open until the iteration ends)."""
    q = interaction_query(**filters)
    if limit:
        q = q.limit(limit)
    with session_of(db) as session:
        yield from session.scalars(q.execution_options(yield_per=500))


def get_interaction(db: SessionOrUrl, interaction_id: str) -> Interaction | None:
    """One interaction with the passages it showed (loaded, so the record reads after its session)."""
    with session_of(db) as session:
        return session.scalars(
            select(Interaction)
            .options(selectinload(Interaction.passages))
            .where(Interaction.id == interaction_id)
        ).first()


def visible_interaction(
    db: SessionOrUrl, interaction_id: str, may_read: Callable[[str | None], bool] | None = None
) -> Interaction:
    """The interaction, or NotFound. ``may_read(api_key_id)`` says whether the caller may see one made
    with that key (None: it sees all); one it may not see is reported as absent, so ids cannot be probed.
    The API's ``GET`` of a record and feedback on it share this rule."""
    interaction = get_interaction(db, interaction_id)
    if may_read is not None and (interaction is None or not may_read(interaction.api_key_id)):
        raise NotFound(f"No interaction {interaction_id!r} visible to this API key.")
    if interaction is None:
        raise NotFound(f"No interaction {interaction_id!r}.")
    return interaction
