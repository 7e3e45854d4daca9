"""The automatic signals of each recorded answer (citation verified, abstained), computed once and stored on
the interaction, so the dashboard and the drift checks aggregate them in SQL instead of verifying every
answer again on every page view.

Generation may not import curation (the verifier), so the answer is recorded first and its signals are
filled in after the fact: by ``signals_task``, a periodic task of the running server, or by a caller that
needs them now (``fill_signals``). The values are those of ``monitoring.metrics.answer_signals``, the same
judgement the A/B metrics use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from ragloop.config import Settings
from ragloop.generation.replay import fetch_rows
from ragloop.monitoring.metrics import answer_signals
from ragloop.store.claims import Task
from ragloop.store.db import session_scope
from ragloop.store.models import Interaction, utcnow

SIGNALS_TASK = "answer-signals"
SIGNALS_EVERY_S = 60.0  # a minute behind live traffic is soon enough for daily charts and drift windows
BATCH = 500


def passage_texts(interaction: Interaction, rows: dict[tuple[int | None, str], dict]) -> list[str]:
    """The texts the model was shown, in rank order. Eval answers keep theirs with the record (their
    passages come from a QA set, not the knowledge base); live ones are read back at their KB version, and
    a passage missing there leaves an empty text, so a statement citing it counts as unsupported."""
    stored = (interaction.filters or {}).get("eval_passages") if interaction.source == "eval" else None
    if stored is not None:
        return [str(p.get("text", "")) for p in stored]
    return [(rows.get((p.kb_version, p.chunk_id)) or {}).get("text", "") for p in interaction.passages]


def fill_signals(settings: Settings, *, limit: int = 5000, kb: Callable[[], Any] | Any | None = None) -> int:
    """Compute and store ``verified``, ``abstained`` and ``signals_at`` for up to ``limit`` interactions
    that have none yet, oldest first; returns how many were written. ``kb`` is the knowledge base the
    passages are read from (or a callable returning it, as a server passes its own); by default one is
    opened on the home, and only when some answer needs it."""
    done = 0
    opened: list[Any] = []

    def knowledge_base() -> Any:
        if not opened:
            if kb is None:
                from ragloop.ingest.kb import KnowledgeBase  # LanceDB opened only when a passage is needed

                opened.append(KnowledgeBase(settings))
            else:
                opened.append(kb() if callable(kb) else kb)
        return opened[0]

    while done < limit:
        with session_scope(settings.db_url) as s:
            query = (
                select(Interaction)
                .options(selectinload(Interaction.passages))
                .where(Interaction.signals_at.is_(None))
                .order_by(Interaction.created_at)
                .limit(min(BATCH, limit - done))
            )
            batch = list(s.scalars(query))
            for i in batch:
                s.expunge(i)
        if not batch:
            break
        live = [i for i in batch if i.passages and i.source != "eval"]
        rows = fetch_rows(knowledge_base(), live) if live else {}
        now = utcnow()
        with session_scope(settings.db_url) as s:
            for i in batch:
                sig = answer_signals(i.answer, i.citations or [], passage_texts(i, rows))
                # Only rows still without signals: a concurrent filler's write stands.
                s.execute(
                    update(Interaction)
                    .where(Interaction.id == i.id, Interaction.signals_at.is_(None))
                    .values(verified=sig.verified, abstained=sig.abstained, signals_at=now)
                    .execution_options(synchronize_session=False)
                )
        done += len(batch)
    return done


def signals_task(settings: Settings, *, kb: Callable[[], Any] | None = None) -> Task:
    """``fill_signals`` as a periodic task of a running server (``claims.Scheduler``): every minute, in one
    server among those sharing the database."""
    return Task(SIGNALS_TASK, SIGNALS_EVERY_S, lambda: fill_signals(settings, kb=kb))
