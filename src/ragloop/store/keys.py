"""API keys: created once (the secret is shown a single time), stored only as sha256.

Keys are 32 random bytes, so a fast hash is enough: there is nothing to brute-force, and verifying a key
on every request must stay cheap.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from ragloop.errors import AuthError, NotFound
from ragloop.store.db import SessionOrUrl, session_of
from ragloop.store.models import ApiKey, utcnow

PREFIX = "rl-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(
    db: SessionOrUrl, name: str, *, admin: bool = False, collections: list[str] | None = None
) -> tuple[ApiKey, str]:
    """(record, secret). The secret is never stored nor logged; print it once to the person."""
    secret = PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name, prefix=secret[:10], key_hash=hash_key(secret), admin=admin, collections=collections
    )
    with session_of(db) as session:
        session.add(key)
        session.flush()
    return key, secret


def verify_key(db: SessionOrUrl, secret: str | None) -> ApiKey:
    """The live key for this secret, or AuthError."""
    if not secret:
        raise AuthError(
            "An API key is required: send `Authorization: Bearer <key>` (create one with `ragloop keys create`)."
        )
    with session_of(db) as session:
        key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).first()
    if key is None or key.revoked_at is not None:
        raise AuthError("Invalid or revoked API key.")
    return key


def revoke_key(db: SessionOrUrl, key_id_or_prefix: str) -> ApiKey:
    with session_of(db) as session:
        key = (
            session.get(ApiKey, key_id_or_prefix)
            or session.scalars(select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)).first()
        )
        if key is None:
            raise NotFound(f"No API key {key_id_or_prefix!r}; see `ragloop keys list`.")
        key.revoked_at = utcnow()
    return key


def list_keys(db: SessionOrUrl) -> list[ApiKey]:
    with session_of(db) as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))
