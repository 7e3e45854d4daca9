"""Model registry records: versions and aliases, and how a request's ``model`` resolves to a version.

A ``model`` string is an alias (``production``, ``candidate``, ``base``...) or a version id. With no model
named, requests go to ``production`` if set, else to the base model. An alias serves a pair: a model version
and an embedder version (None: the base embedder); a version id named directly is served with the base
embedder.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragloop.errors import NotFound
from ragloop.store.db import SessionOrUrl, session_of
from ragloop.store.models import (
    EmbedderVersion,
    Experiment,
    ModelAlias,
    ModelVersion,
    RegistryEvent,
    utcnow,
)

DEFAULT_ALIAS = "production"
BASE_ALIAS = "base"


class Pair(NamedTuple):
    """What an alias serves: a model version id and an embedder version id (None: the base embedder)."""

    model_version: str
    embedder_version: str | None


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()
"""``embedder_version=KEEP``: a move of the model that leaves the alias's embedder as it is."""


def ensure_base_version(session: Session, base_model: str, base_hash: str) -> ModelVersion:
    """The version of the configured base model (no adapter), created on first use and aliased ``base``.
    Its id carries the weights' hash so a changed base file is a new version, never a silent swap."""
    version_id = f"base-{base_hash[:12]}"
    mv = session.get(ModelVersion, version_id)
    if mv is None:
        mv = ModelVersion(id=version_id, base_model=base_model, base_hash=base_hash, meta={"kind": "base"})
        session.add(mv)
        session.flush()
    set_alias(session, BASE_ALIAS, version_id)
    return mv


def set_alias(
    session: Session,
    name: str,
    version_id: str,
    *,
    embedder_version: str | None = KEEP,
    action: str = "alias",
    note: str | None = None,
) -> ModelAlias:
    """Point ``name`` at a version and an embedder (``KEEP``: the one it serves now; a new alias: the base
    embedder); a change of either is recorded as a RegistryEvent with the pair (what rollback reads)."""
    if session.get(ModelVersion, version_id) is None:
        raise NotFound(f"Model version {version_id!r} does not exist; see `ragloop models list`.")
    alias = session.get(ModelAlias, name)
    previous = alias.model_version_id if alias is not None else None
    embedder = (
        (alias.embedder_version if alias is not None else None)
        if embedder_version is KEEP
        else embedder_version
    )
    if embedder is not None and session.get(EmbedderVersion, embedder) is None:
        raise NotFound(f"Embedder version {embedder!r} does not exist; see `ragloop models embedders`.")
    if alias is None:
        alias = ModelAlias(name=name, model_version_id=version_id, embedder_version=embedder)
        session.add(alias)
    elif (previous, alias.embedder_version) == (version_id, embedder):
        return alias
    else:
        alias.model_version_id, alias.embedder_version = version_id, embedder
        alias.updated_at = utcnow()
    session.add(
        RegistryEvent(
            action=action,
            alias=name,
            model_version_id=version_id,
            previous_version_id=previous,
            embedder_version=embedder,
            note=note,
        )  # fmt: skip
    )
    session.flush()
    return alias


def promote(
    session: Session, version_id: str, alias: str = DEFAULT_ALIAS, note: str | None = None
) -> ModelAlias:
    """Serve ``version_id`` under ``alias`` from the next request on."""
    return set_alias(session, alias, version_id, action="promote", note=note)


def served_pair(db: SessionOrUrl, alias: str) -> Pair:
    """The (model version, embedder version) ``alias`` serves now; ``production`` before its first promotion
    is the base alias's pair, as for requests. What a per-pair reference (drift) keys on."""
    with session_of(db) as session:
        row = session.get(ModelAlias, alias)
        if row is None and alias == DEFAULT_ALIAS:
            row = session.get(ModelAlias, BASE_ALIAS)
        if row is None:
            raise NotFound(f"Alias {alias!r} is not set; see `ragloop models list`.")
        return Pair(row.model_version_id, row.embedder_version)


def live_embedders(db: SessionOrUrl) -> set[str]:
    """Tuned embedders something serves now: named by an alias or by an arm of a running experiment.
    Ingest embeds new chunks with each of them as well as with the base embedder."""
    with session_of(db) as session:
        live = {e for e in session.scalars(select(ModelAlias.embedder_version)) if e is not None}
        for arms in session.scalars(select(Experiment.arms).where(Experiment.status == "running")):
            live.update(a.get("embedder_version") for a in (arms or {}).values() if a.get("embedder_version"))
        return live


def rollback_pairs(session: Session, alias: str = DEFAULT_ALIAS) -> tuple[Pair, Pair]:
    """(the pair ``alias`` serves now, the pair a rollback returns to), without moving anything: the
    release checks that the target still loads before ``rollback`` moves the alias.

    The target is what the alias served before the move that set its current pair (the event before that
    one; events made before embedders were versioned hold None, the base embedder). Repeated rollbacks walk
    further back: each looks up the move (not a rollback) that set the current pair."""
    current = session.get(ModelAlias, alias)
    if current is None:
        raise NotFound(f"Alias {alias!r} is not set; nothing to roll back.")
    now = Pair(current.model_version_id, current.embedder_version)
    same_embedder = (
        RegistryEvent.embedder_version.is_(None)
        if now.embedder_version is None
        else RegistryEvent.embedder_version == now.embedder_version
    )
    setter = session.scalars(
        select(RegistryEvent)
        .where(
            RegistryEvent.alias == alias,
            RegistryEvent.action != "rollback",
            RegistryEvent.model_version_id == now.model_version,
            same_embedder,
        )
        .order_by(RegistryEvent.id.desc())
    ).first()
    target: Pair | None = None
    if setter is not None:
        before = session.scalars(
            select(RegistryEvent)
            .where(RegistryEvent.alias == alias, RegistryEvent.id < setter.id)
            .order_by(RegistryEvent.id.desc())
        ).first()
        if before is not None:
            target = Pair(before.model_version_id, before.embedder_version)
        elif setter.previous_version_id is not None:
            target = Pair(setter.previous_version_id, None)
    if target is None and alias == DEFAULT_ALIAS and session.get(ModelAlias, BASE_ALIAS) is not None:
        # Before its first promotion, production meant the base model: rolling that back returns there.
        base = session.get(ModelAlias, BASE_ALIAS)
        target = Pair(base.model_version_id, base.embedder_version)
    if target is None or target == now:
        raise NotFound(f"Alias {alias!r} has no earlier version to roll back to.")
    return now, target


def rollback_target(session: Session, alias: str = DEFAULT_ALIAS) -> tuple[str, str]:
    """(current version, the version a rollback of ``alias`` returns to): ``rollback_pairs``' model
    versions."""
    now, target = rollback_pairs(session, alias)
    return now.model_version, target.model_version


def rollback(session: Session, alias: str = DEFAULT_ALIAS, note: str | None = None) -> tuple[str, str]:
    """Point ``alias`` back at the pair it served before its current one was set; (from, to) versions."""
    now, target = rollback_pairs(session, alias)
    set_alias(
        session, alias, target.model_version, embedder_version=target.embedder_version, action="rollback",
        note=note,
    )  # fmt: skip
    return now.model_version, target.model_version


def resolve(db: SessionOrUrl, name: str | None) -> tuple[ModelVersion, str | None]:
    """(version, alias used or None). Raises NotFound naming what exists."""
    with session_of(db) as session:
        if not name:
            alias = session.get(ModelAlias, DEFAULT_ALIAS) or session.get(ModelAlias, BASE_ALIAS)
            if alias is None:
                raise NotFound("No model is registered yet.")
            return session.get(ModelVersion, alias.model_version_id), alias.name  # type: ignore[return-value]
        alias = session.get(ModelAlias, name)
        if alias is None and name == DEFAULT_ALIAS:  # nothing promoted yet: production is the base model
            alias = session.get(ModelAlias, BASE_ALIAS)
        if alias is not None:
            return session.get(ModelVersion, alias.model_version_id), alias.name  # type: ignore[return-value]
        mv = session.get(ModelVersion, name)
        if mv is None:
            known = list(session.scalars(select(ModelAlias.name))) + list(
                session.scalars(select(ModelVersion.id))
            )
            raise NotFound(
                f"The model {name!r} does not exist. Known models and aliases: {', '.join(known) or 'none'}."
            )
        return mv, None


def list_models(db: SessionOrUrl) -> list[tuple[ModelVersion, list[str]]]:
    """Every version with the aliases pointing at it, newest first."""
    with session_of(db) as session:
        aliases: dict[str, list[str]] = {}
        for a in session.scalars(select(ModelAlias)):
            aliases.setdefault(a.model_version_id, []).append(a.name)
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc()))
        return [(mv, sorted(aliases.get(mv.id, []))) for mv in versions]
