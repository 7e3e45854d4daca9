"""Claims: how a piece of background work is taken by exactly one process, kept alive, and taken over when
that process dies. Training jobs, eval runs and periodic tasks (retention; later A/B guardrails and drift
checks) all go through these functions, so one set of rules holds for each, on SQLite and PostgreSQL alike.

A claimable row has ``status``, ``owner`` (JSON: host, boot_id, pid) and ``heartbeat_at``:

- ``claim`` / ``claim_next``: one conditional UPDATE (``… WHERE status IN (…)``) sets ``running``, the
  owner and a first heartbeat; of several processes claiming at once exactly one sees its row change.
  ``claim_next`` picks the row with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent claimers take
  different rows instead of queueing on the same one (SQLite has one writer at a time and ignores it).
- ``heartbeat``: the owner writes ``heartbeat_at`` every few seconds (a ``proc.Periodic`` thread).
- ``release``: the owner ends its claim (``running`` → a final status).
- ``mark_interrupted``: ``running`` → ``interrupted`` only if ``heartbeat_at`` is still the one seen, so
  a stale decision cannot take a row from an owner that claimed it since.
- ``interrupt_dead``: marks the running rows whose owner is certainly gone (``proc.owner_gone``).

``Scheduler`` runs ``Task``s on these rules: each due task runs in one process of all those sharing the
database, once per period.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, inspect, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ragloop.proc import Periodic, machine, owner_gone
from ragloop.store.db import session_scope
from ragloop.store.models import PeriodicTask, utcnow

log = logging.getLogger("ragloop.claims")

RUNNING = "running"
INTERRUPTED = "interrupted"


def me() -> dict[str, Any]:
    """This process as an owner: a pid means something only on its host, since its boot."""
    return {**machine(), "pid": os.getpid()}


def _key(model: type) -> Any:
    return inspect(model).primary_key[0]


def _set(model: type, key: Any, *where: ColumnElement[bool]) -> Any:
    """``UPDATE model … WHERE <primary key> = key AND where``, leaving loaded objects alone (callers read
    the row again when they need it)."""
    return update(model).where(_key(model) == key, *where).execution_options(synchronize_session=False)


def claim(
    s: Session,
    model: type,
    key: Any,
    *,
    from_status: Iterable[str],
    where: Sequence[ColumnElement[bool]] = (),
    values: dict[str, Any] | None = None,
) -> bool:
    """Take row ``key`` for this process if its status is one of ``from_status`` (and ``where`` holds):
    ``running``, owned by this process, heartbeat now, plus ``values``. True when this call took it."""
    changed = s.execute(
        _set(model, key, model.status.in_(tuple(from_status)), *where).values(
            status=RUNNING, owner=me(), heartbeat_at=utcnow(), **(values or {})
        )
    ).rowcount
    return changed == 1


def claim_next(
    s: Session,
    model: type,
    *,
    from_status: Iterable[str] = ("queued",),
    where: Sequence[ColumnElement[bool]] = (),
    order_by: Sequence[Any] = (),
    values: dict[str, Any] | None = None,
) -> Any | None:
    """Take the first row (by ``order_by``) whose status is one of ``from_status``; its key, or None when
    there is none left. A row another claimer takes between the pick and the claim is skipped for the next."""
    from_status = tuple(from_status)
    while True:
        key = s.scalars(
            select(_key(model))
            .where(model.status.in_(from_status), *where)
            .order_by(*order_by)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if key is None:
            return None
        if claim(s, model, key, from_status=from_status, where=where, values=values):
            return key


def heartbeat(s: Session, model: type, key: Any, values: dict[str, Any] | None = None) -> bool:
    """The owner's sign of life (plus ``values``, e.g. progress). Only a ``running`` row is written, so a
    late beat never revives a row someone has marked interrupted."""
    changed = s.execute(
        _set(model, key, model.status == RUNNING).values(heartbeat_at=utcnow(), **(values or {}))
    ).rowcount
    return changed == 1


def release(s: Session, model: type, key: Any, status: str, values: dict[str, Any] | None = None) -> bool:
    """End a claim: ``running`` → ``status`` (plus ``values``). False when the row is no longer running
    (someone decided its fate first: a cancel, an interrupt)."""
    changed = s.execute(_set(model, key, model.status == RUNNING).values(status=status, **(values or {})))
    return changed.rowcount == 1


def mark_interrupted(
    s: Session, model: type, key: Any, seen: datetime | None, values: dict[str, Any] | None = None
) -> bool:
    """``running`` → ``interrupted``, only if the heartbeat is still ``seen``: an owner that beat since, or
    a process that took the row over since (a claim writes a new heartbeat), wins against this call."""
    fence = model.heartbeat_at.is_(None) if seen is None else model.heartbeat_at == seen
    changed = s.execute(
        _set(model, key, model.status == RUNNING, fence).values(status=INTERRUPTED, **(values or {}))
    )
    return changed.rowcount == 1


def silent_s(row: Any, now: datetime | None = None) -> float | None:
    """Seconds since the row's last heartbeat (or its creation, for rows older than heartbeats)."""
    since = row.heartbeat_at or getattr(row, "started_at", None) or getattr(row, "created_at", None)
    return None if since is None else ((now or utcnow()) - since).total_seconds()


def interrupt_dead(
    s: Session,
    model: type,
    *,
    stale_after_s: float = 0.0,
    where: Sequence[ColumnElement[bool]] = (),
    values: Callable[[Any], dict[str, Any]] | None = None,
) -> list[Any]:
    """Mark ``interrupted`` every running row (matching ``where``) silent for at least ``stale_after_s`` whose
    owner is certainly gone (``proc.owner_gone``: on this host a dead pid or a reboot since, on another a
    long silence). ``values(row)`` adds fields to each mark. Returns the rows marked, as they were seen."""
    now = utcnow()
    marked = []
    for row in s.scalars(select(model).where(model.status == RUNNING, *where)).all():
        silent = silent_s(row, now)
        if silent is not None and silent < stale_after_s:
            continue
        if not owner_gone(row.owner, silent_s=silent):
            continue
        key = inspect(row).identity[0]
        if mark_interrupted(s, model, key, row.heartbeat_at, values(row) if values else None):
            marked.append(row)
    return marked


# Periodic tasks ----------------------------------------------------------------------------------------

HEARTBEAT_S = 5.0  # a running task's heartbeat, from a thread of its own
POLL_S = 30.0  # how often a scheduler looks for due tasks (at most; a shorter period looks more often)


@dataclass(frozen=True)
class Task:
    """Work done every ``every_s`` seconds by one process among all those sharing the database. Registering
    one is one line: ``Task("retention", 3600, lambda: apply_retention(settings))`` handed to ``Scheduler``
    (``curation.erasure.retention_task``; the server's lifespan lists the tasks it runs)."""

    name: str
    every_s: float
    run: Callable[[], object]


def run_if_due(db_url: str, task: Task) -> bool:
    """Run ``task`` here if it is due and nobody runs it; True when this process ran it (even if it raised:
    its error is recorded in ``last_error`` and it runs again next period). A process that died while
    running it is taken over at once."""
    _ensure_row(db_url, task.name)
    with session_scope(db_url) as s:
        interrupt_dead(s, PeriodicTask, where=(PeriodicTask.name == task.name,))
    started = utcnow()
    with session_scope(db_url) as s:
        due = or_(PeriodicTask.next_due.is_(None), PeriodicTask.next_due <= started)
        if not claim(s, PeriodicTask, task.name, from_status=("idle", INTERRUPTED), where=(due,)):
            return False
    error = None
    beat = Periodic(HEARTBEAT_S, lambda: _beat(db_url, task.name), name=f"task-{task.name}")
    with beat:
        try:
            task.run()
        except Exception as exc:  # a failing task must not stop the scheduler; the row says what happened
            error = "".join(traceback.format_exception_only(exc)).strip()[:2000]
            log.exception("periodic task %s failed", task.name)
    with session_scope(db_url) as s:
        release(s, PeriodicTask, task.name, "idle", {"last_run_at": started, "last_error": error,
                "next_due": started + timedelta(seconds=task.every_s)})  # fmt: skip
    return True


def _beat(db_url: str, name: str) -> None:
    with session_scope(db_url) as s:
        heartbeat(s, PeriodicTask, name)


def _ensure_row(db_url: str, name: str) -> None:
    """The task's row, created due at once the first time any process registers it."""
    with session_scope(db_url) as s:
        if s.get(PeriodicTask, name) is not None:
            return
    try:
        with session_scope(db_url) as s:
            s.add(PeriodicTask(name=name, status="idle"))
    except IntegrityError:  # another process created it first
        pass


class Scheduler:
    """Runs ``tasks`` from one daemon thread of this process: looks every ``poll_s`` seconds (at most the
    shortest period) for due tasks and runs each through ``run_if_due``. Tasks given as None (a stage's
    task that is switched off, such as retention without ``retention_days``) are left out."""

    def __init__(self, db_url: str, tasks: Iterable[Task | None], poll_s: float = POLL_S):
        self.db_url = db_url
        self.tasks = [t for t in tasks if t is not None]
        self.poll_s = min([poll_s, *(t.every_s for t in self.tasks)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ragloop-scheduler", daemon=True)

    def _loop(self) -> None:
        while True:
            for task in self.tasks:
                if self._stop.is_set():
                    return
                try:
                    run_if_due(self.db_url, task)
                except Exception:  # the database away for a moment: look again next poll
                    log.exception("could not run periodic task %s", task.name)
            if self._stop.wait(self.poll_s):
                return

    def start(self) -> Scheduler:
        if self.tasks:
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop looking for due tasks; a task already running finishes in the background (the thread is a
        daemon: a process that exits mid-task leaves it to be taken over)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
