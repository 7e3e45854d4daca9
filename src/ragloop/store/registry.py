"""Model registry records: versions and aliases, and how a request's ``model`` resolves to a version.

A ``model`` string is an alias (``production``, ``candidate``, ``base``...) or a version id. With no model
named, requests go to ``production`` if set, else to the base model.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragloop.errors import NotFound
from ragloop.store.models import ModelAlias, ModelVersion, utcnow

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


def set_alias(session: Session, name: str, version_id: str) -> ModelAlias:
    if session.get(ModelVersion, version_id) is None:
        raise NotFound(f"Model version {version_id!r} does not exist; see `ragloop models list`.")
    alias = session.get(ModelAlias, name)
    if alias is None:
        alias = ModelAlias(name=name, model_version_id=version_id)
        session.add(alias)
    elif alias.model_version_id != version_id:
        alias.model_version_id = version_id
        alias.updated_at = utcnow()
    session.flush()
    return alias


def resolve(session: Session, name: str | None) -> tuple[ModelVersion, str | None]:
    """(version, alias used or None). Raises NotFound naming what exists."""
    if not name:
        alias = session.get(ModelAlias, DEFAULT_ALIAS) or session.get(ModelAlias, BASE_ALIAS)
        if alias is None:
            raise NotFound("No model is registered yet.")
        return session.get(ModelVersion, alias.model_version_id), alias.name  # type: ignore[return-value]
    alias = session.get(ModelAlias, name)
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


def list_models(session: Session) -> list[tuple[ModelVersion, list[str]]]:
    """Every version with the aliases pointing at it, newest first."""
    aliases: dict[str, list[str]] = {}
    for a in session.scalars(select(ModelAlias)):
        aliases.setdefault(a.model_version_id, []).append(a.name)
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc()))
    return [(mv, sorted(aliases.get(mv.id, []))) for mv in versions]
