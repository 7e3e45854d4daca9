"""Database engine and sessions: SQLite file by default, PostgreSQL by URL.

The schema is owned by Alembic migrations shipped in ``ragloop/store/migrations``; opening a database
upgrades it to head, so a home created by an older ragloop keeps working.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_connection.cursor()
    # WAL lets the server read while it writes; synchronous=FULL makes a commit survive power loss,
    # not only a killed process: an acknowledged interaction must never be lost.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def get_engine(url: str) -> Engine:
    """One engine per URL per process, migrated to head on first use."""
    with _lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        _engines[url] = engine
        return engine


def dispose_all() -> None:
    """Close every pooled connection (tests, forks)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = sessionmaker(bind=get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionOrUrl = Session | str
"""What a store or stage function reads and writes through: the caller's session (the work joins the
caller's transaction) or a database URL (the function runs in a transaction of its own, as a door needs:
doors open no session themselves)."""


@contextmanager
def session_of(db: SessionOrUrl) -> Iterator[Session]:
    """The caller's session as it is (its owner commits), or a ``session_scope`` on a database URL."""
    if isinstance(db, str):
        with session_scope(db) as session:
            yield session
    else:
        yield db
