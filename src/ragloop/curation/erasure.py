"""Erasure (GDPR Article 17) and retention.

``forget`` deletes the raw records (interactions, the passages they showed, feedback, review items) and,
through lineage, marks every dataset version built from them, and every model version and embedder version
trained on those datasets (or tuned further from one), as containing erased data, with the command that
rebuilds them without it. An embedder version has no column for the mark (its table came later): it is
``meta["contains_erased"]`` and ``meta["erased_note"]``. Retention expires
records older than N days the same way; ``retention_task`` is how a running server does it every
``[records] retention_interval_s`` (one server among those sharing the database, through ``store.claims``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.store.claims import Task
from ragloop.store.db import session_scope
from ragloop.store.models import (
    DatasetSource,
    DatasetVersion,
    EmbedderVersion,
    Feedback,
    Interaction,
    ModelVersion,
    Passage,
    ReviewItem,
    utcnow,
)
from ragloop.store.queries import interaction_query

log = logging.getLogger("ragloop.retention")
RETENTION_TASK = "retention"


@dataclass
class ForgetReport:
    interactions: int = 0
    feedback: int = 0
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    embedders: list[str] = field(default_factory=list)
    rebuild: dict[str, str] = field(default_factory=dict)  # dataset id -> command that rebuilds it


def forget(
    settings: Settings,
    *,
    conversation_id: str | None = None,
    user_id: str | None = None,
    text: str | None = None,
    older_than_days: int | None = None,
    dry_run: bool = False,
) -> ForgetReport:
    """Delete matching interactions and everything derived from them that is stored raw. Named nothing,
    it applies the retention setting (``[records] retention_days``), as a plain ``ragloop forget`` does."""
    if not any([conversation_id, user_id, text]) and older_than_days is None:
        older_than_days = settings.records.retention_days
        if older_than_days is None:
            raise RagloopError("Say what to forget: --conversation, --user, --text or --older-than DAYS.")
    report = ForgetReport()
    with session_scope(settings.db_url) as s:
        q = interaction_query(
            conversation_id=conversation_id,
            text=text,
            until=utcnow() - timedelta(days=older_than_days) if older_than_days is not None else None,
        )
        if user_id:
            q = q.where(Interaction.user_id == user_id)
        ids = [i.id for i in s.scalars(q)]
        report.interactions = len(ids)
        if not ids:
            return report
        report.feedback = len(list(s.scalars(select(Feedback.id).where(Feedback.interaction_id.in_(ids)))))
        datasets = sorted(
            set(s.scalars(select(DatasetSource.dataset_id).where(DatasetSource.interaction_id.in_(ids))))
        )
        found = (
            set(s.scalars(select(ModelVersion.id).where(ModelVersion.dataset_id.in_(datasets))))
            if datasets
            else set()
        )
        frontier = set(found)
        while frontier:  # descendants (a DPO version trained from an SFT version) inherit the mark
            frontier = (
                set(s.scalars(select(ModelVersion.id).where(ModelVersion.parent_id.in_(frontier)))) - found
            )
            found |= frontier
        models = sorted(found)
        report.datasets, report.models = datasets, models
        report.embedders = _embedders_from(s, datasets)
        for dv in (
            s.scalars(select(DatasetVersion).where(DatasetVersion.id.in_(datasets))) if datasets else []
        ):
            report.rebuild[dv.id] = dv.command or f"ragloop dataset build --name {dv.name} --seed {dv.seed}"
        if dry_run:
            s.rollback()
            return report
        when = utcnow().isoformat(timespec="seconds")
        for dv in (
            s.scalars(select(DatasetVersion).where(DatasetVersion.id.in_(datasets))) if datasets else []
        ):
            dv.contains_erased = True
            dv.erased_note = (
                f"{when}: built from records erased since; rebuild without them with: {report.rebuild[dv.id]}"
            )
        for mv in s.scalars(select(ModelVersion).where(ModelVersion.id.in_(models))) if models else []:
            mv.contains_erased = True
            source = f"dataset {mv.dataset_id}" if mv.dataset_id in datasets else f"parent {mv.parent_id}"
            mv.erased_note = (
                f"{when}: built from {source}, which contains erased records; retrain on the rebuilt dataset."
            )
        for ev in s.scalars(select(EmbedderVersion).where(EmbedderVersion.id.in_(report.embedders))):
            source = f"dataset {ev.dataset_id}" if ev.dataset_id in datasets else f"base {ev.base}"
            note = (
                f"{when}: built from {source}, which contains erased records; retrain on the rebuilt dataset."
            )
            ev.meta = {**(ev.meta or {}), "contains_erased": True, "erased_note": note}  # a new dict: saved
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            for model in (Feedback, ReviewItem, Passage):
                s.execute(delete(model).where(model.interaction_id.in_(part)))
            s.execute(delete(DatasetSource).where(DatasetSource.interaction_id.in_(part)))
            s.execute(delete(Interaction).where(Interaction.id.in_(part)))
    return report


def _embedders_from(s: Session, datasets: list[str]) -> list[str]:
    """Embedder versions trained on these datasets, and those tuned further from one of them (``base`` is
    the embedder id it started from): the retriever carries the erased records as a generator does."""
    if not datasets:
        return []
    found = set(s.scalars(select(EmbedderVersion.id).where(EmbedderVersion.dataset_id.in_(datasets))))
    frontier = set(found)
    while frontier:
        frontier = (
            set(s.scalars(select(EmbedderVersion.id).where(EmbedderVersion.base.in_(frontier)))) - found
        )
        found |= frontier
    return sorted(found)


def apply_retention(settings: Settings) -> ForgetReport | None:
    """Erase the interactions older than ``[records] retention_days`` (None when no retention is set)."""
    days = settings.records.retention_days
    if days is None:
        return None
    report = forget(settings, older_than_days=days)
    log.info("retention: erased %d interactions older than %d days", report.interactions, days)
    return report


def retention_task(settings: Settings) -> Task | None:
    """Retention as a periodic task of a running server: a server up for months still expires records as
    they pass ``retention_days``. None when no retention is set."""
    if settings.records.retention_days is None:
        return None
    return Task(RETENTION_TASK, settings.records.retention_interval_s, lambda: apply_retention(settings))
