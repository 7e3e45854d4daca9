"""Records: SQLAlchemy models (``models``), engine and sessions (``db``), Alembic migrations."""

from ragloop.store.db import get_engine, session_scope
from ragloop.store.models import (
    ApiKey,
    Document,
    Interaction,
    KBVersion,
    ModelAlias,
    ModelVersion,
    Passage,
)

__all__ = [
    "ApiKey",
    "Document",
    "Interaction",
    "KBVersion",
    "ModelAlias",
    "ModelVersion",
    "Passage",
    "get_engine",
    "session_scope",
]
