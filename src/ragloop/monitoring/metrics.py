"""What each arm of an A/B experiment did, read from the records: one ``Request`` per request an arm served
(an interaction) or failed (a ``RequestError``), and each metric's value on it.

Nothing here is logged for the experiment's sake: serving already records the arm and the assignment unit
of every turn (``Interaction.experiment_id``, ``arm``, ``experiment_unit``), reviewers add feedback, and a
failed request leaves a ``RequestError``. The automatic signals need no reviewer and are computed on every
answer the way curation judges training data: the citations it recorded, ``curation.verify_answer`` on the
live answer and the passages it was shown (read back at their recorded KB version), ``curation.refusal``.
``monitoring.ab`` aggregates the values per unit and compares the arms with ``monitoring.stats``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ragloop.config import Settings
from ragloop.curation.refusal import is_refusal
from ragloop.curation.verify import verify_answer
from ragloop.feedback.service import Judgement, judgement
from ragloop.generation.citations import CITE
from ragloop.generation.replay import fetch_rows
from ragloop.store.db import session_scope
from ragloop.store.experiments import KNOWN_METRICS
from ragloop.store.models import Feedback, Interaction, RequestError


@dataclass(frozen=True)
class Metric:
    """A metric an experiment may name (primary or guardrail), and which way is better.

    ``hard_limit``: judged as a limit on the candidate's requests (``stats.breaks_limit``), not by a
    confidence sequence, when it is a guardrail. ``per_unit``: how a unit's requests become its one
    observation (the mean; the median for p50 latency)."""

    name: str
    higher_is_better: bool
    description: str
    hard_limit: bool = False
    per_unit: str = "mean"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("thumbs_up", True, "share of rated answers liked (thumbs up, or a rating of 4 or more)"),
        Metric("rating", True, "mean reviewer rating (1-5) of rated answers"),
        Metric("correction_rate", False, "share of reviewed answers a reviewer corrected"),
        Metric("cites", True, "share of answers citing a passage they were shown"),
        Metric(
            "citation_verified",
            True,
            "share of answers (abstentions aside) citing passages that support every cited statement",
        ),
        # Neither is wrong in itself; a rise is what a guardrail on them is for: a candidate that refuses
        # more, or rambles.
        Metric("abstention", False, "share of answers that decline to answer"),
        Metric("answer_length", False, "characters of the answer, citations left out"),
        Metric("latency_p50", False, "median request latency (ms)", per_unit="median"),
        Metric("latency_p95", False, "95th percentile of request latency (ms)", hard_limit=True),
        Metric("error_rate", False, "share of requests that failed", hard_limit=True),
    )
}
assert set(METRICS) == KNOWN_METRICS, "store.experiments.KNOWN_METRICS and METRICS must name the same"


@dataclass(frozen=True)
class Signals:
    """What an answer shows without a reviewer. ``verified`` is None for an abstention: declining to
    answer cites nothing and claims nothing, which is neither a verified nor an unverified citation."""

    cites: bool
    verified: bool | None
    abstained: bool
    length: int


def answer_signals(answer: str, citations: Iterable[dict], passages: list[str]) -> Signals:
    """The automatic signals of one answer, given the texts of the passages it was shown (in rank order).

    Verified means at least one checked statement and every one supported (``verify_answer``: each cited
    statement by the passages it cites, each quote by some passage): an answer that states things without
    any citation is not verified, since nothing in it can be traced to the documents."""
    abstained = is_refusal(answer)
    checks = verify_answer(answer, passages)
    verified = None if abstained else bool(checks) and all(c.supported for c in checks)
    return Signals(
        cites=any(c.get("valid") for c in citations),
        verified=verified,
        abstained=abstained,
        length=len(CITE.sub("", answer).strip()),
    )


@dataclass(frozen=True)
class Request:
    """One request an arm served (``signals`` set) or failed (``failed``), with its unit and feedback."""

    arm: str
    unit: str
    at: datetime
    latency_ms: float
    failed: bool = False
    signals: Signals | None = None
    judgement: Judgement | None = None


def value(metric: str, r: Request) -> float:
    """The metric's value on one request; NaN where it says nothing (an unrated answer for thumbs_up, a
    failed request for every metric but error_rate), which ``stats.per_unit`` drops."""
    if metric == "error_rate":
        return float(r.failed)
    if r.failed:
        return math.nan
    if metric in ("latency_p50", "latency_p95"):
        return r.latency_ms
    j, s = r.judgement, r.signals
    if metric == "thumbs_up":
        return math.nan if j is None or j.accepted is None else float(j.accepted)
    if metric == "rating":
        return math.nan if j is None or j.mean_rating is None else float(j.mean_rating)
    if metric == "correction_rate":
        return math.nan if j is None or not j.reviewers else float(bool(j.corrected_answer))
    if s is None:  # erased between the two reads of ``read_requests``
        return math.nan
    if metric == "cites":
        return float(s.cites)
    if metric == "citation_verified":
        return math.nan if s.verified is None else float(s.verified)
    if metric == "abstention":
        return float(s.abstained)
    if metric == "answer_length":
        return float(s.length)
    raise KeyError(f"unknown metric {metric!r}")


# Reading the records ------------------------------------------------------------------------------------

# Signals depend only on an answer and the passages it was shown, both immutable once recorded, so each is
# computed once per process: a check every minute then verifies only the answers that arrived since.
_SIGNALS: OrderedDict[str, Signals] = OrderedDict()
_SIGNALS_MAX = 200_000
_signals_lock = threading.Lock()
_BATCH = 500  # interactions read with their passages at once


def read_requests(
    settings: Settings, experiment_id: str, kb: Callable[[], Any] | None = None
) -> list[Request]:
    """Every request served or failed under ``experiment_id``, oldest first, with feedback and signals.

    ``kb`` returns the knowledge base the passages are read from (a server passes its own); by default one
    is opened on the home, and only if some answer's signals are not computed yet."""
    db_url = settings.db_url
    with session_scope(db_url) as s:
        rows = s.execute(
            select(
                Interaction.id,
                Interaction.arm,
                Interaction.experiment_unit,
                Interaction.conversation_id,
                Interaction.created_at,
                Interaction.latency_total_ms,
            ).where(Interaction.experiment_id == experiment_id)
        ).all()
        feedback: dict[str, list[Feedback]] = {}
        query = (
            select(Feedback)
            .join(Interaction, Interaction.id == Feedback.interaction_id)
            .where(Interaction.experiment_id == experiment_id)
        )
        for fb in s.scalars(query):
            feedback.setdefault(fb.interaction_id, []).append(fb)
        errors = list(s.scalars(select(RequestError).where(RequestError.experiment_id == experiment_id)))
    with _signals_lock:
        signals = {r.id: _SIGNALS.get(r.id) for r in rows}
    missing = [i for i, known in signals.items() if known is None]
    if missing:
        signals.update(_compute_signals(settings, missing, kb))
    out = []
    for r in rows:
        unit = r.experiment_unit or f"conversation:{r.conversation_id}"
        fb = feedback.get(r.id)
        out.append(
            Request(
                r.arm,
                unit,
                r.created_at,
                float(r.latency_total_ms or 0.0),
                signals=signals.get(r.id),
                judgement=judgement(fb) if fb else None,
            )
        )
    for e in errors:
        unit = e.unit or f"conversation:{e.conversation_id}"
        out.append(Request(e.arm, unit, e.created_at, float(e.latency_ms or 0.0), failed=True))
    out.sort(key=lambda r: r.at)
    return [r for r in out if r.arm in ("control", "candidate")]


def _compute_signals(settings: Settings, ids: list[str], kb: Callable[[], Any] | None) -> dict[str, Signals]:
    if kb is None:
        from ragloop.ingest.kb import KnowledgeBase  # LanceDB: opened only when an answer needs its passages

        opened = KnowledgeBase(settings)
        kb = lambda: opened  # noqa: E731
    out: dict[str, Signals] = {}
    for start in range(0, len(ids), _BATCH):
        with session_scope(settings.db_url) as s:
            query = (
                select(Interaction)
                .options(selectinload(Interaction.passages))
                .where(Interaction.id.in_(ids[start : start + _BATCH]))
            )
            interactions = list(s.scalars(query))
        rows = fetch_rows(kb(), interactions)
        computed: dict[str, Signals] = {}
        for i in interactions:
            # By rank, as the model saw them: a passage missing from its KB version leaves an empty text,
            # so a statement citing it is unsupported rather than checked against the next passage.
            texts = [(rows.get((p.kb_version, p.chunk_id)) or {}).get("text", "") for p in i.passages]
            computed[i.id] = answer_signals(i.answer, i.citations or [], texts)
        with _signals_lock:
            _SIGNALS.update(computed)
            while len(_SIGNALS) > _SIGNALS_MAX:
                _SIGNALS.popitem(last=False)
        out.update(computed)
    return out
