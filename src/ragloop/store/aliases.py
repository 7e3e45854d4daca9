"""Model registry records: versions and aliases, and how a request's ``model`` resolves to a version.

A ``model`` string is an alias (``production``, ``candidate``, ``base``...) or a version id. With no model
named, requests go to ``production`` if set, else to the base model.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragloop.errors import NotFound
from ragloop.store.db import SessionOrUrl, session_of
from ragloop.store.models import ModelAlias, ModelVersion, RegistryEvent, utcnow

DEFAULT_ALIAS = "production"
BASE_ALIAS = "base"


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
    session: Session, name: str, version_id: str, *, action: str = "alias", note: str | None = None
) -> ModelAlias:
    """Point ``name`` at a version; the change is recorded as a RegistryEvent (what rollback reads)."""
    if session.get(ModelVersion, version_id) is None:
        raise NotFound(f"Model version {version_id!r} does not exist; see `ragloop models list`.")
    alias = session.get(ModelAlias, name)
    previous = alias.model_version_id if alias is not None else None
    if alias is None:
        alias = ModelAlias(name=name, model_version_id=version_id)
        session.add(alias)
    elif previous == version_id:
        return alias
    else:
        alias.model_version_id = version_id
        alias.updated_at = utcnow()
    session.add(
        RegistryEvent(
            action=action, alias=name, model_version_id=version_id, previous_version_id=previous, note=note
        )
    )
    session.flush()
    return alias


def promote(
    session: Session, version_id: str, alias: str = DEFAULT_ALIAS, note: str | None = None
) -> ModelAlias:
    """Serve ``version_id`` under ``alias`` from the next request on."""
    return set_alias(session, alias, version_id, action="promote", note=note)


def rollback_target(session: Session, alias: str = DEFAULT_ALIAS) -> tuple[str, str]:
    """(current version, the version a rollback of ``alias`` returns to), without moving anything: the
    release checks that the target still loads before ``rollback`` moves the alias.

    Repeated rollbacks walk further back: each looks up the promotion that set the current version."""
    current = session.get(ModelAlias, alias)
    if current is None:
        raise NotFound(f"Alias {alias!r} is not set; nothing to roll back.")
    events = session.scalars(
        select(RegistryEvent)
        .where(
            RegistryEvent.alias == alias,
            RegistryEvent.action != "rollback",
            RegistryEvent.model_version_id == current.model_version_id,
        )
        .order_by(RegistryEvent.id.desc())
    ).first()
    target = events.previous_version_id if events is not None else None
    if target is None and alias == DEFAULT_ALIAS and session.get(ModelAlias, BASE_ALIAS) is not None:
        # Before its first promotion, production meant the base model: rolling that back returns there.
        target = session.get(ModelAlias, BASE_ALIAS).model_version_id
    if target is None or target == current.model_version_id:
        raise NotFound(f"Alias {alias!r} has no earlier version to roll back to.")
    return current.model_version_id, target


def rollback(session: Session, alias: str = DEFAULT_ALIAS, note: str | None = None) -> tuple[str, str]:
    """Point ``alias`` back at the version it had before its current one was promoted; (from, to)."""
    origin, target = rollback_target(session, alias)
    set_alias(session, alias, target, action="rollback", note=note)
    return origin, target


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
