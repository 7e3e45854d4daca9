"""A/B experiments as records, and which arm serves a request.

An experiment splits the live traffic of one alias between two serving configurations (arms): ``control``,
the alias's pair (model version, embedder version) when it started, and ``candidate``; an arm without an
``embedder_version`` (every experiment older than embedder versions) serves the base embedder. Both are frozen at start, so a later alias move
cannot change what an arm means. Assignment is a pure hash of (experiment id, unit): a unit gets the same
arm on every turn, in every server process and after restarts, and nothing is stored per unit. The
generation stage asks ``RunningExperiments`` (a cache re-read at most every ``ttl_s``) on each request;
``monitoring`` judges the arms from the interactions, which record ``experiment_id``, ``arm`` and the unit.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ragloop.errors import Conflict, NotFound, RagloopError
from ragloop.store import aliases
from ragloop.store.db import session_scope
from ragloop.store.models import EmbedderVersion, Experiment, utcnow

KNOWN_METRICS = frozenset(
    {
        "thumbs_up",
        "rating",
        "correction_rate",
        "cites",
        "citation_verified",
        "abstention",
        "answer_length",
        "latency_p50",
        "latency_p95",
        "error_rate",
    }
)
"""What a primary metric or a guardrail may name; ``monitoring`` computes each from the records."""

HARD_LIMITS = frozenset({"latency_p95", "error_rate"})
"""Guardrails judged as limits on the candidate's requests, not with an interval: never a primary metric."""

ARMS = ("control", "candidate")
RUNNING = "running"
ENDED = frozenset({"stopped", "rolled_back", "promoted"})
"""How an experiment ends: stopped (by a person, its limits or a release), rolled_back (a guardrail broke;
the candidate gets no more traffic), promoted (the candidate now serves the alias)."""

UNITS = frozenset({"auto"})
"""How the unit of a request is chosen; only ``auto`` (see ``unit_of``) so far."""

LIVE_SOURCES = frozenset({"api", "cli", "ui"})
"""Interaction sources that are live traffic and so enter experiments; evaluation, replay, synthetic and
benchmark traffic (any other source) is served by the alias's version and recorded outside them."""

DEFAULT_GUARDRAILS = ("error_rate", "latency_p95", "citation_verified")
DEFAULT_MIN_UNITS = 100


def assign(experiment_id: str, unit: str, share: float) -> str:
    """``candidate`` or ``control`` for ``unit``: the first 8 bytes of sha256("{experiment id}:{unit}") read
    as a number in [0, 1), below ``share`` -> candidate.

    Pure, so every process agrees without sharing state; keyed by the experiment so a unit's arms in two
    experiments are independent; monotone in ``share``, so a unit in the candidate at 5 % stays there when a
    ramp raises the share to 20 %."""
    digest = hashlib.sha256(f"{experiment_id}:{unit}".encode()).digest()
    return "candidate" if int.from_bytes(digest[:8], "big") / 2**64 < share else "control"


def unit_of(conversation_id: str, *, client_conversation: bool, user_id: str | None) -> str:
    """The assignment unit of a request (``auto``): the conversation id the client sent, else the user id
    it sent (``user`` of the OpenAI request), else the conversation id the assistant derived for a
    stateless client.

    The derived id, not a hash of the messages, stands for the thread of a stateless client: the assistant
    finds the parent turn by the thread hash of the messages the client sends back and carries its
    conversation id forward (``Assistant._conversation``), so it already is the thread's identity on every
    turn, found the same way by every process, and it is the ``conversation_id`` the records hold. It also
    tells apart two people who open with the same question, which a hash of the first message would merge
    into one unit (two people counted as one by the per-unit analysis); only threads identical answer for
    answer are one (the oldest conversation holding the thread carries it on). A client that rewrites an
    earlier turn starts a new conversation and so may change arm, as it would under any hash of the thread.

    The unit is recorded on each interaction (``Interaction.experiment_unit``): the analysis groups by what
    was hashed instead of deriving the rule again."""
    if client_conversation or not user_id:
        return f"conversation:{conversation_id}"
    return f"user:{user_id}"


# Cached view for serving ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentView:
    """What serving needs of a running experiment, copied out of its row (no session attached)."""

    id: str
    alias: str
    arms: Mapping[str, Mapping[str, Any]]
    share: float
    stage: int
    unit: str
    status: str

    def arm_for(self, unit: str) -> str:
        return assign(self.id, unit, self.share)

    def model_version(self, arm: str) -> str:
        return self.arms[arm]["model_version"]

    def embedder_version(self, arm: str) -> str | None:
        return self.arms[arm].get("embedder_version")


def arm(model_version: str, embedder_version: str | None) -> dict[str, Any]:
    """An arm's serving configuration; the base embedder is left implicit, as in arms recorded before
    embedder versions existed, so both read the same."""
    config: dict[str, Any] = {"model_version": model_version}
    if embedder_version is not None:
        config["embedder_version"] = embedder_version
    return config


def view(experiment: Experiment) -> ExperimentView:
    arms = {name: dict(config) for name, config in (experiment.arms or {}).items()}
    return ExperimentView(
        experiment.id,
        experiment.alias,
        arms,
        experiment.share,
        experiment.stage,
        experiment.unit,
        experiment.status,
    )


_caches: weakref.WeakSet[RunningExperiments] = weakref.WeakSet()


def invalidate_all() -> None:
    """Make every ``RunningExperiments`` of this process read again on its next request."""
    for cache in list(_caches):
        cache.invalidate()


def _invalidate_after_commit(session: Session) -> None:
    # After, not before: a request re-reading before the commit would cache the old state for ttl_s.
    event.listen(session, "after_commit", lambda _s: invalidate_all(), once=True)


class RunningExperiments:
    """The running experiments of one database, by alias, re-read at most every ``ttl_s`` seconds: a
    request pays a dict lookup, and another process's start or stop reaches this one within ``ttl_s``.
    Changes made in this process through this module are seen from the next request (``invalidate`` after
    their commit). Thread-safe."""

    def __init__(self, db_url: str, ttl_s: float = 2.0):
        self.db_url, self.ttl_s = db_url, ttl_s
        self._lock = threading.Lock()
        self._by_alias: dict[str, ExperimentView] = {}
        self._read_at: float | None = None
        self._generation = 0  # bumped by invalidate: a read begun before it does not count as fresh
        _caches.add(self)

    def for_alias(self, alias: str) -> ExperimentView | None:
        read_at = self._read_at
        if read_at is None or time.monotonic() - read_at >= self.ttl_s:
            with self._lock:
                read_at = self._read_at
                if read_at is None or time.monotonic() - read_at >= self.ttl_s:
                    generation = self._generation
                    with session_scope(self.db_url) as s:
                        rows = s.scalars(select(Experiment).where(Experiment.status == RUNNING))
                        self._by_alias = {e.alias: view(e) for e in rows}
                    self._read_at = time.monotonic() if generation == self._generation else None
        return self._by_alias.get(alias)

    def invalidate(self) -> None:
        self._generation += 1
        self._read_at = None


# Records ---------------------------------------------------------------------------------------------


def _check_share(share: float, what: str) -> float:
    if not isinstance(share, int | float) or not 0 < share < 1:
        raise RagloopError(f"{what} must be a fraction between 0 and 1 (exclusive), got {share!r}.")
    return float(share)


def _check_metrics(primary: str, guardrails: Iterable[str]) -> list[str]:
    known = ", ".join(sorted(KNOWN_METRICS))
    if primary not in KNOWN_METRICS:
        raise RagloopError(f"Unknown primary metric {primary!r}; use one of: {known}.")
    if primary in HARD_LIMITS:  # judged against a limit, never with an interval: it could never decide
        raise RagloopError(
            f"{primary!r} is a hard limit (a guardrail), not a primary metric; use one of: "
            + ", ".join(sorted(KNOWN_METRICS - HARD_LIMITS))
            + "."
        )
    out = []
    for name in guardrails:
        if name not in KNOWN_METRICS:
            raise RagloopError(f"Unknown guardrail {name!r}; use one of: {known}.")
        if name not in out:
            out.append(name)
    return out


def create_experiment(
    session: Session,
    *,
    alias: str = aliases.DEFAULT_ALIAS,
    candidate: str,
    share: float,
    ramp: Iterable[float] = (),
    primary: str = "thumbs_up",
    guardrails: Iterable[str] = DEFAULT_GUARDRAILS,
    min_units: int = DEFAULT_MIN_UNITS,
    max_days: float | None = None,
    alpha: float = 0.05,
    unit: str = "auto",
    config: dict[str, Any] | None = None,
    candidate_embedder: str | None = aliases.KEEP,
) -> Experiment:
    """Start an experiment on ``alias``: control is the pair the alias serves now, candidate the version
    (id or alias) named with ``candidate_embedder`` (``KEEP``: the control's embedder, so only the model
    differs; None: the base embedder); both are frozen into ``arms``. The candidate may be the control's
    model with another embedder (a retriever-only experiment). Every input is checked before anything is
    written, so a refused experiment changes nothing.

    ``ramp`` lists the shares the candidate passes through before ``share`` (increasing, each below it):
    the experiment starts at the first and ``ramp`` is stored with ``share`` as its last stage
    (``ramp=(0.05,)``, ``share=0.2`` -> stages [0.05, 0.2]). Empty: a fixed share from the start."""
    share = _check_share(share, "The candidate's share")
    stages = [_check_share(s, "Each ramp share") for s in ramp]
    if stages and stages[-1] == share:
        stages.pop()  # the target named twice, as the last ramp stage and as the share
    if stages:
        stages.append(share)
        if any(a >= b for a, b in zip(stages, stages[1:], strict=False)):
            raise RagloopError(f"Ramp shares must increase up to the share {share}: got {stages}.")
    guardrail_list = _check_metrics(primary, guardrails)
    if unit not in UNITS:
        raise RagloopError(f"Unknown assignment unit {unit!r}; use one of: {', '.join(sorted(UNITS))}.")
    if not 0 < alpha < 1:
        raise RagloopError(f"alpha must be between 0 and 1, got {alpha!r}.")
    if min_units < 0:
        raise RagloopError(f"The minimum sample must be 0 or more units, got {min_units}.")
    if max_days is not None and max_days <= 0:
        raise RagloopError(f"The maximum duration must be positive, got {max_days} days.")

    control, used = aliases.resolve(session, alias)
    if used is None:
        raise RagloopError(
            f"{alias!r} is a model version, not an alias: an experiment splits the traffic of an alias "
            "(e.g. production)."
        )
    control_embedder = aliases.served_pair(session, used).embedder_version
    cand, _ = aliases.resolve(session, candidate)
    cand_embedder = control_embedder if candidate_embedder is aliases.KEEP else candidate_embedder
    if cand_embedder is not None and session.get(EmbedderVersion, cand_embedder) is None:
        raise NotFound(f"Embedder version {cand_embedder!r} does not exist; see `ragloop models embedders`.")
    if (cand.id, cand_embedder) == (control.id, control_embedder):
        raise RagloopError(
            f"The candidate {candidate!r} is {cand.id} with embedder {cand_embedder or 'base'}, the pair "
            f"{alias!r} already serves: nothing to compare. Name another version (`ragloop models list`) or "
            "another embedder."
        )
    running = running_for(session, alias)
    if running is not None:
        raise Conflict(
            f"Experiment {running.id} is already running on {alias!r}; stop it first (`ragloop ab stop`)."
        )
    now = utcnow()
    first = stages[0] if stages else share
    experiment = Experiment(
        created_at=now,
        alias=alias,
        arms={"control": arm(control.id, control_embedder), "candidate": arm(cand.id, cand_embedder)},
        share=first,
        ramp=stages,
        stage=0,
        unit=unit,
        primary_metric=primary,
        guardrails=guardrail_list,
        min_units=min_units,
        max_days=max_days,
        alpha=alpha,
        status=RUNNING,
        started_at=now,
        config={**(config or {}), "stages": [{"stage": 0, "share": first, "at": now.isoformat() + "Z"}]},
    )
    session.add(experiment)
    try:
        session.flush()
    except IntegrityError as exc:  # another process started one on this alias since the check above
        raise Conflict(
            f"Another experiment started on {alias!r} meanwhile; see `ragloop ab status`."
        ) from exc
    _invalidate_after_commit(session)
    return experiment


def running_for(session: Session, alias: str, *, lock: bool = False) -> Experiment | None:
    """The running experiment of ``alias``, if any; ``lock`` holds its row (PostgreSQL: FOR UPDATE) until the
    transaction ends, so a decision taken on it cannot cross a concurrent stop or rollback."""
    query = select(Experiment).where(Experiment.alias == alias, Experiment.status == RUNNING)
    return session.scalars(query.with_for_update() if lock else query).first()


def get_experiment(session: Session, id_or_prefix: str) -> Experiment:
    """An experiment by id or by an unambiguous prefix of it (as listings show them)."""
    experiment = session.get(Experiment, id_or_prefix)
    if experiment is not None:
        return experiment
    found = []
    if id_or_prefix:
        query = select(Experiment).where(Experiment.id.startswith(id_or_prefix, autoescape=True))
        found = list(session.scalars(query))
    if not found:
        raise NotFound(f"No experiment {id_or_prefix!r}; see `ragloop ab status`.")
    if len(found) > 1:
        raise RagloopError(f"{id_or_prefix!r} names {len(found)} experiments; give more of the id.")
    return found[0]


def list_experiments(session: Session) -> list[Experiment]:
    """Every experiment, newest first."""
    return list(session.scalars(select(Experiment).order_by(Experiment.started_at.desc())))


def stop_experiment(
    session: Session, experiment_id: str, *, status: str, decision: str | None, reason: str, by: str
) -> Experiment:
    """End a running experiment (``status`` among ENDED) and record why and by whom; its units go to the
    alias's version from their next request (this process at once, others within their cache's ttl_s).
    An experiment already ended is returned unchanged: the first decision stands."""
    if status not in ENDED:
        raise RagloopError(f"An experiment ends as one of {', '.join(sorted(ENDED))}, not {status!r}.")
    experiment = session.get(Experiment, experiment_id, with_for_update=True)
    if experiment is None:
        raise NotFound(f"No experiment {experiment_id!r}; see `ragloop ab status`.")
    if experiment.status != RUNNING:
        return experiment
    experiment.status = status
    experiment.decision = decision
    experiment.reason = reason
    experiment.stopped_by = by
    experiment.stopped_at = utcnow()
    session.flush()
    _invalidate_after_commit(session)
    return experiment


def set_share(session: Session, experiment_id: str, share: float, stage: int) -> Experiment:
    """Move a running experiment to ramp ``stage`` with the candidate's ``share`` (recorded with its time
    in ``config["stages"]``, which the per-stage sample-ratio check reads)."""
    experiment = session.get(Experiment, experiment_id, with_for_update=True)
    if experiment is None:
        raise NotFound(f"No experiment {experiment_id!r}; see `ragloop ab status`.")
    if experiment.status != RUNNING:
        raise Conflict(f"Experiment {experiment.id} is {experiment.status}; its share no longer changes.")
    if not isinstance(share, int | float) or not 0 <= share < 1:
        raise RagloopError(f"The candidate's share must be in [0, 1), got {share!r}.")
    if stage < 0 or (experiment.ramp and stage >= len(experiment.ramp)):
        raise RagloopError(f"Stage {stage} is outside the ramp {experiment.ramp}.")
    experiment.share, experiment.stage = float(share), stage
    stages = list((experiment.config or {}).get("stages", []))
    stages.append({"stage": stage, "share": float(share), "at": utcnow().isoformat() + "Z"})
    experiment.config = {**(experiment.config or {}), "stages": stages}  # a new dict: JSON is not tracked
    session.flush()
    _invalidate_after_commit(session)
    return experiment
