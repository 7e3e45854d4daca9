"""Releasing a model version: the one path by which an alias (``production``, ``candidate``...) moves.

Both doors call it (``ragloop models promote|rollback|alias``, ``POST /api/models/{id}/promote`` and
``/api/models/rollback``), so a release is checked, moved and recorded the same way whichever door a person
used: the version is loaded first, through the backend code that answers requests, and only a version that
loads moves the alias; the move records a RegistryEvent (``store.aliases``). A broken adapter therefore
never reaches the running servers, which pick up an alias change on their next request.

A move of an alias with a running A/B experiment ends the experiment in the same transaction (recorded,
``stopped_by="release"``): its arms were frozen against the version the alias served, which no longer
holds; a promotion of the experiment's candidate ends it as ``promoted``.

Loading is this stage's job; what loads a version is a hook (``Loader``), so a server passes its live
assistant's loader (the version is then ready before its first request) and other engines can pass theirs.

An alias serves a pair: a model version and an embedder version (None: the base embedder). A move names
the embedder or keeps the alias's (``aliases.KEEP``); an embedder moves only once it loads with its registered
dimension and the current knowledge base has its vectors for every chunk (``retrieval.search.
ready_embedder``), checked and moved under the ingest lock so no ingest commits chunks without them between
the check and the move. A rollback returns to the previous pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from ragloop.config import Settings
from ragloop.errors import Conflict, GenerationError, RagloopError
from ragloop.generation.models import file_sha256
from ragloop.store import aliases, experiments
from ragloop.store.aliases import KEEP, Pair
from ragloop.store.db import session_scope
from ragloop.store.models import ModelAlias, ModelVersion

Loader = Callable[[ModelVersion], object]
"""Loads a version so it can answer (base weights and adapter), raising if it cannot: ``Assistant.backend_for``."""


@dataclass(frozen=True)
class Release:
    """An alias move that happened: ``alias`` now serves ``model_version`` with ``embedder_version``, instead
    of ``previous`` with ``previous_embedder`` (embedders: None is the base embedder)."""

    alias: str
    model_version: str
    previous: str | None
    embedder_version: str | None = None
    previous_embedder: str | None = None


def in_process_loader(settings: Settings) -> Loader:
    """Load versions in this process with the serving code (``Assistant.backend_for``): what a door
    without a running model (the CLI) checks with. A real load, base weights and adapter, not a file check;
    the assistant is built on first use, so an unknown version is reported before any weights are read."""
    assistant = None

    def load(version: ModelVersion) -> object:
        nonlocal assistant
        if assistant is None:
            from ragloop.generation.assistant import Assistant

            assistant = Assistant(settings)
        return assistant.backend_for(version)

    return load


def promote(
    settings: Settings,
    version: str,
    alias: str = aliases.DEFAULT_ALIAS,
    *,
    note: str | None = None,
    load: Loader | None = None,
    while_running: str | None = None,
    embedder: str | None = KEEP,
) -> Release:
    """Serve ``version`` (an id or an alias) under ``alias`` from the next request on, if it loads, with
    ``embedder`` (an embedder version id, None for the base embedder, ``KEEP`` for the alias's current one).
    ``while_running``: an experiment id that must still be running on ``alias`` when the alias moves (checked
    in the move's transaction), so an experiment's candidate rolled back meanwhile by its guardrails is never
    promoted by an `ab promote` that read the experiment just before."""
    return _move(settings, version, alias, "promote", note, load, while_running, embedder)


def set_alias(
    settings: Settings,
    alias: str,
    version: str,
    *,
    note: str | None = None,
    load: Loader | None = None,
    embedder: str | None = KEEP,
) -> Release:
    """Point ``alias`` at ``version`` (an id or an alias) and ``embedder``, if they load; recorded as an
    ``alias`` event."""
    return _move(settings, version, alias, "alias", note, load, None, embedder)


def rollback(
    settings: Settings,
    alias: str = aliases.DEFAULT_ALIAS,
    *,
    note: str | None = None,
    load: Loader | None = None,
) -> Release:
    """Point ``alias`` back at the pair (model version, embedder) it had before its last move, if that
    version still loads (an adapter can break after it was served: a restored backup, a full disk) and the
    embedder can still search the knowledge base."""
    with session_scope(settings.db_url) as s:
        origin, target = aliases.rollback_pairs(s, alias)
        version = s.get(ModelVersion, target.model_version)
    check_loads(version, alias, load or in_process_loader(settings))  # type: ignore[arg-type]
    lock = embedder_move(settings, origin.embedder_version, target.embedder_version)
    with lock, session_scope(settings.db_url) as s:
        moved = aliases.rollback_pairs(s, alias)
        if moved != (origin, target):  # raising here rolls the move back
            raise RagloopError(
                f"{alias!r} changed while {target.model_version} was being loaded (it now rolls back to "
                f"{moved[1].model_version}); run the rollback again."
            )
        aliases.rollback(s, alias, note=note)
        _end_experiment(s, alias, "rollback", origin, target, note)
    return Release(
        alias, target.model_version, origin.model_version, target.embedder_version, origin.embedder_version
    )


def _move(
    settings: Settings,
    version: str,
    alias: str,
    action: str,
    note: str | None,
    load: Loader | None,
    while_running: str | None = None,
    embedder: str | None = KEEP,
) -> Release:
    mv, _ = aliases.resolve(settings.db_url, version)
    check_loads(mv, alias, load or in_process_loader(settings))
    with session_scope(settings.db_url) as s:
        current = s.get(ModelAlias, alias)
        served = current.embedder_version if current is not None else None
    wanted = served if embedder is KEEP else embedder
    with embedder_move(settings, served, wanted), session_scope(settings.db_url) as s:
        if while_running is not None:
            running = experiments.running_for(s, alias, lock=True)
            if running is None or running.id != while_running:
                ended = experiments.get_experiment(s, while_running)
                raise Conflict(
                    f"Experiment {while_running} is no longer running ({ended.status}"
                    f"{f': {ended.reason}' if ended.reason else ''}); {alias!r} was not moved."
                )
        current = s.get(ModelAlias, alias)
        before = Pair(current.model_version_id, current.embedder_version) if current is not None else None
        # KEEP stays KEEP: the embedder the alias serves at this moment, not the one read before loading.
        row = aliases.set_alias(s, alias, mv.id, embedder_version=embedder, action=action, note=note)
        after = Pair(row.model_version_id, row.embedder_version)
        if before != after:
            _end_experiment(s, alias, action, before, after, note)
    return Release(
        alias,
        after.model_version,
        before.model_version if before else None,
        after.embedder_version,
        before.embedder_version if before else None,
    )


@contextmanager
def embedder_move(settings: Settings, served: str | None, wanted: str | None) -> Iterator[None]:
    """When the embedder changes: check ``wanted`` can search the current knowledge base (raises, alias
    unmoved, if not) and hold the ingest lock until the move commits, so no ingest adds chunks that lack
    its vectors in between (an ingest embeds with every embedder live when it starts). Otherwise nothing."""
    if wanted == served or wanted is None:
        yield
        return
    from ragloop.ingest.pipeline import write_lock
    from ragloop.retrieval.search import ready_embedder

    with write_lock(settings):
        ready_embedder(settings, wanted)
        yield


def _end_experiment(
    session: Session, alias: str, action: str, previous: Pair | None, now: Pair, note: str | None
) -> None:
    """Stop the experiment running on ``alias`` because the alias moved (in the move's transaction, so
    neither happens without the other): ``promoted`` when it now serves the candidate, else ``stopped``."""
    running = experiments.running_for(session, alias)
    if running is None:
        return
    arms = running.arms or {}
    candidate = arms.get("candidate", {})
    promoted = (
        action != "rollback" and (candidate.get("model_version"), candidate.get("embedder_version")) == now
    )
    # An alias never set (production before its first promotion) served what the experiment froze as control.
    control = arms.get("control", {})
    previous = previous or Pair(control.get("model_version"), control.get("embedder_version"))  # type: ignore[arg-type]
    reason = f"{action} of {alias!r} from {_label(previous)} to {_label(now)}" + (
        f" ({note})" if note else ""
    )
    experiments.stop_experiment(
        session,
        running.id,
        status="promoted" if promoted else "stopped",
        decision="promote" if promoted else "stop",
        reason=reason,
        by="release",
    )


def _label(pair: Pair) -> str:
    """A pair as the reasons name it: the version alone when it is served with the base embedder (as every
    reason recorded before embedder versions reads)."""
    return (
        pair.model_version
        if pair.embedder_version is None
        else f"{pair.model_version}+{pair.embedder_version}"
    )


def check_loads(version: ModelVersion, alias: str, load: Loader) -> None:
    """Load ``version``; if it cannot be, raise GenerationError naming the version, what is broken and the
    alias left where it was."""
    try:
        load(version)
    except Exception as exc:
        damage = adapter_damage(version)
        what = f"{'; '.join(damage)}. " if damage else ""
        raise GenerationError(
            f"Model version {version.id} does not load, so {alias!r} was not moved. {what}"
            f"Loading it failed with: {exc}. Restore its adapter folder from a backup, or register the "
            "training run again."
        ) from exc


def adapter_damage(version: ModelVersion) -> list[str]:
    """The adapter files of ``version`` that are missing or differ from the ones registered (their sha256
    is in the version's record): what to tell a person whose version no longer loads."""
    expected: dict[str, str] = (version.meta or {}).get("adapter_files") or {}
    folder = Path(version.adapter_path or "")
    problems = []
    for name, sha256 in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing from {folder}")
        elif file_sha256(path) != sha256:
            size = path.stat().st_size
            problems.append(
                f"{name} is not the file registered ({size:,} bytes now: truncated or overwritten)"
            )
    return problems
