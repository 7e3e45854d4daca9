"""Drift reports: is the served model version still answering the questions, and reading the documents, it
was trained for? (issue 18, docs/drift.md)

A report compares a *reference* with a *current* window of live records of one model version, per pair of
model version and embedder (a later embedder change must not read as drift):

- Reference: the questions of the version's training dataset (its train split, a seeded sample of at most
  ``REFERENCE_CAP``), embedded, and retrieved at the knowledge-base version the dataset was built against, so
  its dense scores are those the model was trained to read. Cached under ``<home>/data/drift/`` as .npz,
  keyed by everything that determines it; cheap to recompute, never the only copy of anything. A version
  without a training dataset (the base model) takes the first window of live records after it was promoted
  to the alias as its reference, and the report says so.
- Current: live interactions (``store.experiments.LIVE_SOURCES``) of that version in the last
  ``window_days`` days, or its last N; dense scores are the recorded ``Passage.score_dense`` (cosines, not
  the fused RRF scores, which depend only on ranks).
- Feedback and answer signals compare the window with the first window after promotion: the training data
  says nothing about how people rated the answers.
- The knowledge base changed since training: chunk ids are content-addressed, so comparing them per
  document at the trained KB version and now names the documents added, replaced and removed, and the
  training examples whose gold passage (``oracle_ids`` of the dataset rows) changed or was deleted.

The statistics (and their thresholds' sources) are ``monitoring.drift_stats``; this module gathers the data,
assembles the report, stores it and raises alerts. ``ragloop drift``, ``/api/drift`` and the server's
periodic check (``drift_task``) all call ``run_drift``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select

from ragloop.config import Settings
from ragloop.curation.refusal import is_refusal
from ragloop.datasets.answers import ABSTAIN_ANSWER
from ragloop.datasets.build import load_examples, rebuild_command
from ragloop.errors import Conflict, NotFound
from ragloop.feedback.service import judgement
from ragloop.ingest.embed import embedder_for
from ragloop.ingest.kb import KnowledgeBase
from ragloop.monitoring import drift_stats
from ragloop.monitoring.drift_stats import Signal
from ragloop.monitoring.signals import fill_signals
from ragloop.store import aliases
from ragloop.store.claims import Task
from ragloop.store.db import session_scope
from ragloop.store.experiments import LIVE_SOURCES
from ragloop.store.models import (
    DatasetVersion,
    DriftReport,
    Feedback,
    Interaction,
    Job,
    ModelVersion,
    Passage,
    RegistryEvent,
    new_id,
    utcnow,
)

log = logging.getLogger(__name__)

DRIFT_TASK = "drift-check"
# The reference's size: 1,000 questions give the domain classifier and the 5th percentile of the best
# scores a stable footing, and retrieving them costs seconds, not minutes. Larger datasets are sampled
# (seeded, so two checks of one version see the same reference).
REFERENCE_CAP = 1000
REFERENCE_SEED = 0
# The current window's queries embedded for the query signals and the coverage topics: a seeded sample of a
# busy window (the score signals use every record).
CURRENT_CAP = 2000
HISTOGRAM_BINS = 20
MAX_NAMED_DOCUMENTS = 50
# Drift in these means the questions or the documents moved away from what the model learnt: retraining
# on data of today is the remedy. Retrieval, feedback and answer signals are reported but are symptoms
# that other remedies (the KB, the retriever) may fix.
RETRAIN_SIGNALS = ("query_domain", "query_centroid", "coverage_gap", "kb_changed")
PROMOTION_ACTIONS = ("promote", "alias", "rollback")
# The train command's dataset: the id the rebuild prints. A word, not "<new dataset id>", which a shell
# pasting the command would read as a redirection from a file named "new".
NEW_DATASET = "NEW_DATASET_ID"
_BATCH = 500


# Windows of live records ---------------------------------------------------------------------------------


@dataclass
class _Window:
    """Live records of one version: what the signals read from them, row by row."""

    since: datetime | None = None
    until: datetime | None = None
    last_n: int | None = None
    ids: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    verified: list[bool | None] = field(default_factory=list)
    top1: list[float | None] = field(default_factory=list)  # best dense score among the shown passages
    topk: list[float | None] = field(default_factory=list)  # mean dense score of the shown passages
    thumbs_down: list[bool | None] = field(default_factory=list)  # None: not rated
    corrected: list[bool | None] = field(default_factory=list)  # None: not reviewed

    @property
    def n(self) -> int:
        return len(self.ids)

    def describe(self) -> dict[str, Any]:
        return {"since": _iso(self.since), "until": _iso(self.until), "last_n": self.last_n, "n": self.n}


def _naive(at: datetime | None) -> datetime:
    """A naive UTC datetime (how the database stores them)."""
    if at is None:
        return utcnow()
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat() + "Z"


def _read_window(
    s: Any,
    version: str,
    *,
    embedder: str | None,
    since: datetime | None,
    until: datetime,
    last_n: int | None,
    oldest_first: bool = False,
) -> _Window:
    """Live interactions of ``version`` created in [since, until) — the last ``last_n`` of them when set (the
    first ``last_n`` with ``oldest_first``) — with their passages' dense scores and their feedback."""
    query = select(
        Interaction.id, Interaction.created_at, Interaction.retrieval_query, Interaction.answer,
        Interaction.verified,
    ).where(
        Interaction.model_version == version,
        Interaction.source.in_(sorted(LIVE_SOURCES)),
        Interaction.created_at < until,
        # per pair: the same model answering through another embedder's retrieval is another reference
        Interaction.embedder_version.is_(None) if embedder is None else Interaction.embedder_version == embedder,
    )  # fmt: skip
    if since is not None:
        query = query.where(Interaction.created_at >= since)
    order = Interaction.created_at.asc() if oldest_first else Interaction.created_at.desc()
    query = query.order_by(order, Interaction.id)
    if last_n is not None:
        query = query.limit(last_n)
    rows = sorted(s.execute(query).all(), key=lambda r: (r.created_at, r.id))
    window = _Window(since=since, until=until, last_n=last_n)
    if last_n is not None and rows:
        window.since = rows[0].created_at
    ids = [r.id for r in rows]
    scores: dict[str, list[float]] = {}
    feedback: dict[str, list[Feedback]] = {}
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        for iid, dense in s.execute(
            select(Passage.interaction_id, Passage.score_dense).where(Passage.interaction_id.in_(chunk))
        ):
            if dense is not None:
                scores.setdefault(iid, []).append(float(dense))
        for fb in s.scalars(select(Feedback).where(Feedback.interaction_id.in_(chunk))):
            if fb.source != "eval":  # an evaluation's automatic judgement is not a person's
                feedback.setdefault(fb.interaction_id, []).append(fb)
    for r in rows:
        window.ids.append(r.id)
        window.queries.append(r.retrieval_query or "")
        window.answers.append(r.answer or "")
        window.verified.append(r.verified)
        dense = scores.get(r.id)
        window.top1.append(max(dense) if dense else None)
        window.topk.append(float(np.mean(dense)) if dense else None)
        fb = feedback.get(r.id)
        j = judgement(fb) if fb else None
        window.thumbs_down.append(None if j is None or j.accepted is None else bool(j.thumbs_down))
        window.corrected.append(None if j is None or not j.reviewers else bool(j.corrected_answer))
    return window


def _promoted_at(s: Any, alias: str | None, version: str, embedder: str | None) -> datetime | None:
    """When ``alias`` last came to serve the pair (the start of its current stint); without an alias, or
    with no event for it, the pair's first live record."""
    if alias:
        at = s.scalar(
            select(RegistryEvent.created_at)
            .where(
                RegistryEvent.alias == alias,
                RegistryEvent.model_version_id == version,
                RegistryEvent.embedder_version.is_(None)
                if embedder is None
                else RegistryEvent.embedder_version == embedder,
                RegistryEvent.action.in_(PROMOTION_ACTIONS),
            )
            .order_by(RegistryEvent.created_at.desc(), RegistryEvent.id.desc())
            .limit(1)
        )
        if at is not None:
            return at
    return s.scalar(
        select(Interaction.created_at)
        .where(
            Interaction.model_version == version,
            Interaction.source.in_(sorted(LIVE_SOURCES)),
            Interaction.embedder_version.is_(None)
            if embedder is None
            else Interaction.embedder_version == embedder,
        )
        .order_by(Interaction.created_at.asc())
        .limit(1)
    )


def _first_window(
    s: Any,
    version: str,
    embedder: str | None,
    promoted: datetime | None,
    current: _Window,
    days: float | None,
) -> _Window:
    """The first window after promotion, of the same length (days or records) as the current one, and never
    overlapping it: a version promoted less than a window ago has no baseline yet."""
    if promoted is None:
        return _Window()
    end = current.since or current.until or utcnow()
    if current.last_n is not None:
        return _read_window(
            s, version, embedder=embedder, since=promoted, until=end, last_n=current.last_n, oldest_first=True
        )
    until = min(promoted + timedelta(days=days or 0.0), end)
    if until <= promoted:
        return _Window(since=promoted, until=promoted)
    return _read_window(s, version, embedder=embedder, since=promoted, until=until, last_n=None)


# The reference of a trained version ----------------------------------------------------------------------


@dataclass
class _Reference:
    kind: str  # "training dataset" | "first window after promotion" | "none"
    dataset_id: str | None = None
    kb_version: int | None = None
    n_questions: int = 0
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    top1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    topk: np.ndarray = field(default_factory=lambda: np.zeros(0))
    note: str = ""
    cached: bool = False


def _train_rows(settings: Settings, dv: DatasetVersion) -> list[dict]:
    """The rows the model learnt from (the train split; every split if a dataset has no train split)."""
    splits = load_examples(settings, dv.id)
    rows = splits.get("train") or [r for rows in splits.values() for r in rows]
    return rows


def _sample_questions(rows: Iterable[dict]) -> list[str]:
    questions = sorted({str(r.get("question") or "").strip() for r in rows} - {""})
    if len(questions) <= REFERENCE_CAP:
        return questions
    rng = np.random.default_rng(REFERENCE_SEED)
    return [questions[i] for i in sorted(rng.choice(len(questions), size=REFERENCE_CAP, replace=False))]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def _dataset_reference(
    settings: Settings, kb: KnowledgeBase, mv: ModelVersion, dv: DatasetVersion, rows: list[dict],
    kb_version: int | None, embedder: str | None, embedder_name: str,
) -> _Reference:  # fmt: skip
    """Training questions, embedded and retrieved at the trained KB version with the pair's embedder
    (``embedder``: an embedder version id, None for the base one), cached."""
    from ragloop.retrieval.search import Retriever, dense_column  # LanceDB: only to build a reference

    ref = _Reference("training dataset", dataset_id=dv.id, kb_version=kb_version)
    questions = _sample_questions(rows)
    ref.n_questions = len(questions)
    if not questions:
        ref.note = f"Dataset {dv.id} holds no questions."
        return ref
    searched = kb_version
    if kb_version is not None:
        try:
            table = kb.table(kb_version)
            if embedder is not None and table is not None:
                dense_column(table, embedder, kb_version)
        except (NotFound, Conflict) as exc:
            searched = None
            ref.note = (
                f"KB version {kb_version} the model was trained against cannot be searched here ({exc}); "
                "reference scores retrieved from the current knowledge base."
            )
    top_k = settings.retrieval.top_k
    key = "|".join(
        [mv.id, embedder_name, str(searched), dv.content_hash, str(top_k), str(REFERENCE_CAP),
         settings.retrieval.model_dump_json()]
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = settings.data_dir / "drift" / f"{_safe(mv.id)}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                ref.embeddings, ref.top1, ref.topk = data["embeddings"], data["top1"], data["topk"]
            ref.cached = True
            return ref
        except (OSError, KeyError, ValueError):  # a torn file: recompute it
            log.warning("drift reference cache %s unreadable; recomputing", path)
    retriever = Retriever(settings, kb)
    vectors = retriever.embedder_for(embedder).encode(questions)
    top1, topk = [], []
    for question, vector in zip(questions, vectors, strict=True):
        hits = retriever.search(question, top_k, version=searched, query_vector=vector, embedder=embedder)
        dense = [h.score_dense for h in hits if h.score_dense is not None]
        top1.append(max(dense) if dense else math.nan)
        topk.append(float(np.mean(dense)) if dense else math.nan)
    ref.embeddings = np.asarray(vectors, dtype=np.float32)
    ref.top1, ref.topk = np.asarray(top1, dtype=float), np.asarray(topk, dtype=float)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, embeddings=ref.embeddings, top1=ref.top1, topk=ref.topk)
    tmp.replace(path)  # atomically: a concurrent check reads the old file or the new one, never half
    return ref


def _window_reference(window: _Window, vectors: np.ndarray, note: str) -> _Reference:
    ref = _Reference("first window after promotion", n_questions=window.n, note=note)
    ref.embeddings = vectors
    ref.top1 = _finite(window.top1)
    ref.topk = _finite(window.topk)
    return ref


def _finite(values: Iterable[float | None]) -> np.ndarray:
    out = np.asarray([v for v in values if v is not None], dtype=float)
    return out[np.isfinite(out)]


def _embed_sample(
    texts: list[str], cap: int, settings: Settings, embedder: str | None
) -> tuple[list[int], np.ndarray]:
    """Indices of a seeded sample of at most ``cap`` texts, and their embeddings."""
    idx = list(range(len(texts)))
    if len(idx) > cap:
        rng = np.random.default_rng(REFERENCE_SEED)
        idx = sorted(int(i) for i in rng.choice(len(texts), size=cap, replace=False))
    if not idx:
        return [], np.zeros((0, 0), dtype=np.float32)
    vectors = embedder_for(settings, embedder).encode([texts[i] for i in idx])
    return idx, np.asarray(vectors, dtype=np.float32)


# Knowledge base changes ----------------------------------------------------------------------------------


def _chunks_by_doc(table: Any) -> tuple[dict[str, set[str]], dict[str, str], dict[str, str]]:
    """(doc id -> its chunk ids, chunk id -> doc id, doc id -> source path) of one table version."""
    by_doc: dict[str, set[str]] = {}
    chunk_doc: dict[str, str] = {}
    paths: dict[str, str] = {}
    if table is None:
        return by_doc, chunk_doc, paths
    data = table.search().select(["chunk_id", "doc_id", "source_path"]).limit(None).to_arrow()
    for cid, doc, path in zip(
        data["chunk_id"].to_pylist(), data["doc_id"].to_pylist(), data["source_path"].to_pylist(), strict=True
    ):
        by_doc.setdefault(doc, set()).add(cid)
        chunk_doc[cid] = doc
        paths[doc] = path
    return by_doc, chunk_doc, paths


def kb_changes(kb: KnowledgeBase, trained_version: int | None, rows: list[dict]) -> dict[str, Any]:
    """What changed in the knowledge base between ``trained_version`` and now, per document, and how many
    training examples (``rows``, with their gold ``oracle_ids``) lost a gold passage: ``gold_changed`` when
    its document is still there with other chunks (the text was edited), ``gold_deleted`` when the document
    is gone. Chunk ids are sha256(doc, index, text), so an unchanged id is an unchanged passage.

    Examples whose gold ids are not knowledge-base chunks (imported QA sets) are not counted."""
    out: dict[str, Any] = {
        "kb_version_trained": trained_version, "kb_version_now": kb.version, "added": 0, "replaced": 0,
        "removed": 0, "chunks_added": 0, "chunks_removed": 0, "training_examples": 0, "gold_changed": 0,
        "gold_deleted": 0, "share": None, "changed_documents": [], "n_changed_documents": 0, "note": "",
    }  # fmt: skip
    if trained_version is None:
        out["note"] = "The model version records no KB version it was trained against."
        return out
    try:
        then_table = kb.table(trained_version)
    except NotFound:
        out["note"] = f"KB version {trained_version} is no longer available (compacted)."
        return out
    then, chunk_doc_then, paths_then = _chunks_by_doc(then_table)
    now, _, paths_now = _chunks_by_doc(kb.table())
    ids_then = set(chunk_doc_then)
    ids_now = {c for chunks in now.values() for c in chunks}
    out["chunks_added"], out["chunks_removed"] = len(ids_now - ids_then), len(ids_then - ids_now)
    change: dict[str, str] = {}
    for doc in now.keys() - then.keys():
        change[doc] = "added"
    for doc in then.keys() - now.keys():
        change[doc] = "removed"
    for doc in then.keys() & now.keys():
        if then[doc] != now[doc]:
            change[doc] = "replaced"
    for kind in ("added", "replaced", "removed"):
        out[kind] = sum(1 for c in change.values() if c == kind)
    affected: dict[str, int] = {}
    for row in rows:
        gold = [g for g in row.get("oracle_ids") or [] if g in chunk_doc_then]
        if not gold:
            continue
        out["training_examples"] += 1
        lost = [g for g in gold if g not in ids_now]
        if not lost:
            continue
        if any(chunk_doc_then[g] in now for g in lost):
            out["gold_changed"] += 1
        else:
            out["gold_deleted"] += 1
        for doc in {chunk_doc_then[g] for g in lost}:
            affected[doc] = affected.get(doc, 0) + 1
    if out["training_examples"]:
        out["share"] = (out["gold_changed"] + out["gold_deleted"]) / out["training_examples"]
    # Documents that took training gold with them first, then the others; a re-ingest of a whole KB would
    # otherwise list thousands.
    named = sorted(
        change, key=lambda d: (-affected.get(d, 0), change[d], paths_now.get(d) or paths_then.get(d, ""))
    )
    out["n_changed_documents"] = len(named)
    out["changed_documents"] = [
        {"doc_id": d, "source_path": paths_now.get(d) or paths_then.get(d, ""), "change": change[d],
         "gold_examples": affected.get(d, 0)}
        for d in named[:MAX_NAMED_DOCUMENTS]
    ]  # fmt: skip
    return out


def _kb_signal(changes: dict[str, Any], threshold: float) -> Signal:
    n = int(changes["training_examples"])
    share = changes["share"]
    details = {k: changes[k] for k in ("added", "replaced", "removed", "gold_changed", "gold_deleted")}
    if share is None:
        verdict = "not enough data"
        details["reason"] = changes["note"] or "no training example has a knowledge-base chunk as its gold"
    elif share > threshold:
        verdict = "drift"
    elif share > 0 or changes["added"] or changes["replaced"] or changes["removed"]:
        verdict = "warn"  # the documents moved, but not (enough of) those the model learnt from
    else:
        verdict = "ok"
    return Signal(
        name="kb_changed",
        statistic="share of training examples whose gold passage changed or was deleted since training",
        value=None if share is None else float(share),
        threshold=threshold,
        threshold_source="ours ([drift] kb_changed_share, default 0.10): one training answer in ten no longer "
        "backed by the documents as they are; warn on any document change",
        verdict=verdict,
        n_reference=n,
        n_current=n,
        details=details,
    )


# Answer and feedback rates -------------------------------------------------------------------------------


def _rates(w: _Window) -> dict[str, tuple[int, int]]:
    """(k, n) per rate signal of one window."""
    rated = [v for v in w.thumbs_down if v is not None]
    reviewed = [v for v in w.corrected if v is not None]
    verified = [v for v in w.verified if v is not None]
    trained_form = ABSTAIN_ANSWER.lower().rstrip(".")
    return {
        "thumbs_down_rate": (sum(rated), len(rated)),
        "correction_rate": (sum(reviewed), len(reviewed)),
        # The abstention the training data teaches, and any other way of declining (curation.refusal):
        # a rise in the first is a model that lost its footing in the documents, in the second one that
        # lost its training.
        "abstention_rate": (sum(trained_form in a.lower() for a in w.answers), w.n),
        "refusal_rate": (sum(is_refusal(a) and trained_form not in a.lower() for a in w.answers), w.n),
        "citation_verified_rate": (sum(verified), len(verified)),
    }


# The report ----------------------------------------------------------------------------------------------


def _histogram(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    both = np.concatenate([ref, cur]) if len(ref) + len(cur) else np.zeros(0)
    if not len(both):
        return {"edges": [], "reference": [], "current": []}
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "reference": [int(c) for c in np.histogram(ref, edges)[0]],
        "current": [int(c) for c in np.histogram(cur, edges)[0]],
    }


def _train_defaults() -> dict[str, Any]:
    """The training settings' defaults, as a job records them (JSON values)."""
    import json
    from dataclasses import asdict

    from ragloop.training.config import TrainConfig

    return json.loads(json.dumps(asdict(TrainConfig()), default=str))


def _train_command(s: Any, mv: ModelVersion) -> str | None:
    """The command that trains this version again on a rebuilt dataset, from its job's recorded options."""
    meta = mv.meta or {}
    kind = meta.get("kind")
    if mv.dataset_id is None or kind not in ("sft", "dpo"):
        return None
    job = s.get(Job, meta["job_id"]) if meta.get("job_id") else None
    config = dict(job.config or {}) if job is not None else {}
    parts = ["ragloop", "train", kind, "--dataset", NEW_DATASET]
    if kind == "dpo":
        parts += ["--from", str(config.get("from") or mv.parent_id or "<sft version>")]
    if config.get("base"):
        parts += ["--base", str(config["base"])]
    if config.get("config_path"):
        parts += ["--config", str(config["config_path"])]
    # The job records every setting as resolved; the command names only those that differ from the defaults
    # (a config file's values are then overridden back, so with one every recorded setting is kept). None is
    # a setting's default (auto): `--set batch_size=None` would read as the string "None" and fail.
    defaults = {} if config.get("config_path") else _train_defaults()
    for key, value in sorted((config.get("train") or {}).items()):
        if value is not None and defaults.get(key, object()) != value:
            parts += ["--set", f"{key}={value}"]
    if config.get("name") or meta.get("name"):
        parts += ["--name", str(config.get("name") or meta.get("name"))]
    return " ".join(shlex.quote(p) for p in parts)


def _recommendation(
    signals: list[Signal], mv: ModelVersion, dv: DatasetVersion | None, train: str | None
) -> dict[str, Any]:
    reasons = []
    by_name = {sig.name: sig for sig in signals}
    explain = {
        "query_domain": "live questions can be told apart from the training questions (domain classifier)",
        "query_centroid": "the centre of the live questions moved away from the training questions",
        "coverage_gap": "many live questions find no passage as close as the training questions did",
        "kb_changed": "training examples' gold passages changed or were deleted in the knowledge base",
    }
    for name in RETRAIN_SIGNALS:
        sig = by_name.get(name)
        if sig is not None and sig.verdict == "drift":
            value = "–" if sig.value is None else f"{sig.value:.3g}"
            reasons.append(f"{name}: {explain[name]} ({sig.statistic} {value}, threshold {sig.threshold})")
    commands: list[str] = []
    if reasons:
        if dv is not None:
            commands.append(rebuild_command(dv))
            commands.append(
                train
                or f"ragloop train sft --dataset {NEW_DATASET}  # hyperparameters: ragloop models show {mv.id}"
            )
        else:  # the base model: its first fine-tune, on the traffic it served
            commands.append("ragloop dataset build --name retrain")
            commands.append(f"ragloop train sft --dataset {NEW_DATASET}")
    return {"retrain": bool(reasons), "reasons": reasons, "commands": commands}


def _resolve(s: Any, alias: str | None, model_version: str | None) -> tuple[ModelVersion, str | None]:
    """(version, the alias it is served by or None). ``model_version`` may be a version id or an alias name
    (``--model production``); a version id keeps ``alias`` when that alias serves it."""
    if not model_version:
        return aliases.resolve(s, alias)
    mv, via = aliases.resolve(s, model_version)
    if via is None and alias:
        try:
            served, _ = aliases.resolve(s, alias)
        except NotFound:
            return mv, None
        via = alias if served.id == mv.id else None
    return mv, via


def _kb_of(kb: Any, settings: Settings) -> KnowledgeBase:
    if kb is None:
        return KnowledgeBase(settings)
    return kb if isinstance(kb, KnowledgeBase) else kb()


def drift_report(
    settings: Settings,
    *,
    alias: str | None = "production",
    model_version: str | None = None,
    window_days: float | None = None,
    last_n: int | None = None,
    now: datetime | None = None,
    kb: KnowledgeBase | Callable[[], KnowledgeBase] | None = None,
) -> dict[str, Any]:
    """A drift report of the version ``alias`` serves now (or ``model_version``), JSON-ready; nothing
    stored (``run_drift`` stores it). The window is the last ``window_days`` days or the last ``last_n``
    records (default ``[drift] window_n`` when set, else ``window_days``)."""
    cfg = settings.drift
    until = _naive(now)
    if last_n is None and window_days is None:
        last_n = cfg.window_n
    days = window_days if window_days is not None else cfg.window_days
    min_n = cfg.min_records
    knowledge = _kb_of(kb, settings)
    # Verified citations are read from the records; answers the server's signals task has not reached yet
    # are checked now (oldest first, as that task does), so a check run from the CLI is not short of them.
    fill_signals(settings, kb=knowledge)
    with session_scope(settings.db_url) as s:
        mv, served_by = _resolve(s, alias, model_version)
        # The pair the alias serves; a version named directly is served with the base embedder (None).
        ev = aliases.served_pair(s, served_by).embedder_version if served_by else None
        dv = s.get(DatasetVersion, mv.dataset_id) if mv.dataset_id else None
        since = None if last_n is not None else until - timedelta(days=days)
        current = _read_window(s, mv.id, embedder=ev, since=since, until=until, last_n=last_n)
        promoted = _promoted_at(s, served_by, mv.id, ev)
        baseline = _first_window(s, mv.id, ev, promoted, current, days)
        train = _train_command(s, mv)
        mv_id, meta = mv.id, dict(mv.meta or {})
        s.expunge_all()
    kb_trained = (dv.kb_version if dv is not None else None) or meta.get("kb_version")
    rows = _train_rows(settings, dv) if dv is not None else []

    embedder_name = ev or embedder_for(settings, None).name
    cur_idx, cur_vectors = _embed_sample(current.queries, CURRENT_CAP, settings, ev)
    ref: _Reference
    if dv is not None and rows:
        ref = _dataset_reference(settings, knowledge, mv, dv, rows, kb_trained, ev, embedder_name)
    else:
        note = (
            "No training dataset: the reference is the first window of live records after the version was "
            f"promoted{' to ' + served_by if served_by else ''} ({_iso(promoted) or 'never'})."
        )
        _, base_vectors = _embed_sample(baseline.queries, CURRENT_CAP, settings, ev)
        ref = _window_reference(baseline, base_vectors, note)

    cur_top1 = _finite(current.top1)
    signals: list[Signal] = [
        drift_stats.domain_classifier(ref.embeddings, cur_vectors, threshold=cfg.domain_auc, min_n=min_n),
        drift_stats.centroid_distance(ref.embeddings, cur_vectors, threshold=cfg.centroid_distance, min_n=min_n),
        drift_stats.score_shift(_finite(ref.top1), cur_top1, name="retrieval_top1", pvalue=cfg.score_pvalue,
                                wasserstein=cfg.score_wasserstein, min_n=min_n),
        drift_stats.score_shift(_finite(ref.topk), _finite(current.topk), name="retrieval_topk",
                                pvalue=cfg.score_pvalue, wasserstein=cfg.score_wasserstein, min_n=min_n),
    ]  # fmt: skip
    # Coverage reads the sampled questions whose passages carried a dense score, aligned with their vectors.
    covered = [(i, j) for j, i in enumerate(cur_idx) if current.top1[i] is not None]
    signals.append(
        drift_stats.coverage_gap(
            _finite(ref.top1),
            np.asarray([current.top1[i] for i, _ in covered], dtype=float),
            [current.queries[i] for i, _ in covered],
            cur_vectors[[j for _, j in covered]] if covered else np.zeros((0, 0), dtype=np.float32),
            percentile=cfg.coverage_percentile,
            share=cfg.coverage_share,
            min_n=min_n,
        )
    )
    ref_rates, cur_rates = _rates(baseline), _rates(current)
    for name in ref_rates:
        (rk, rn), (ck, cn) = ref_rates[name], cur_rates[name]
        signals.append(
            drift_stats.rate_shift(name, rk, rn, ck, cn, pvalue=cfg.rate_pvalue, min_n=min_n,
                                   higher_is_worse=name != "citation_verified_rate")
        )  # fmt: skip
    changes = kb_changes(knowledge, kb_trained, rows) if dv is not None else None
    if changes is not None:
        signals.append(_kb_signal(changes, cfg.kb_changed_share))
    else:
        signals.append(
            Signal("kb_changed", "share of training examples whose gold passage changed or was deleted since "
                   "training", None, cfg.kb_changed_share, "ours ([drift] kb_changed_share)", "not enough data",
                   0, 0, {"reason": "the version has no training dataset"})
        )  # fmt: skip
    verdict = drift_stats.overall(signals)
    if verdict == "ok" and all(
        sig.verdict == "not enough data" for sig in signals if sig.name != "kb_changed"
    ):
        # An unchanged knowledge base says nothing of the live traffic: "ok" over a window of five records
        # would read as a clean bill. A KB warn or drift stands on its own (it needs no live records).
        verdict = "not enough data"
    ref_best = _finite(ref.top1)
    coverage_sig = next(sig for sig in signals if sig.name == "coverage_gap")
    return {
        "id": new_id(),
        "created_at": _iso(until),
        "alias": served_by,
        "model_version": mv_id,
        "embedder": embedder_name,  # the embedder version id, or the base embedder's model name
        "embedder_version": ev,
        "kb_version_trained": kb_trained,
        "kb_version_now": knowledge.version,
        "reference": {
            "kind": ref.kind,
            "dataset_id": ref.dataset_id,
            "n_questions": ref.n_questions,
            "kb_version": ref.kb_version,
            "cap": REFERENCE_CAP,
            "sampled": ref.kind == "training dataset" and ref.n_questions >= REFERENCE_CAP,
            "note": ref.note,
            "cached": ref.cached,  # read from <home>/data/drift/ rather than retrieved again
            "baseline_window": baseline.describe(),  # feedback and answer rates compare with this window
        },
        "window": current.describe(),
        "verdict": verdict,
        "signals": [sig.to_dict() for sig in signals],
        "histograms": {
            "retrieval_top1": _histogram(ref_best, cur_top1),
            "retrieval_topk": _histogram(_finite(ref.topk), _finite(current.topk)),
        },
        "coverage": {
            "uncovered_share": coverage_sig.value,
            "threshold_score": float(np.percentile(ref_best, cfg.coverage_percentile))
            if len(ref_best)
            else None,
            "topics": list((coverage_sig.details or {}).get("topics") or []),
        },
        "kb_changes": changes,
        "recommendation": _recommendation(signals, mv, dv, train),
        "not_enough_data": verdict == "not enough data",
    }


def run_drift(
    settings: Settings,
    *,
    alias: str | None = "production",
    model_version: str | None = None,
    window_days: float | None = None,
    last_n: int | None = None,
    now: datetime | None = None,
    kb: KnowledgeBase | Callable[[], KnowledgeBase] | None = None,
    source: str = "cli",
) -> dict[str, Any]:
    """Compute a report (``drift_report``), store it as a DriftReport and raise an alert when its verdict
    is warn or drift (once per open condition: the alert's dedupe key is the alias, version and verdict)."""
    from ragloop.monitoring.alerts import raise_alert

    report = drift_report(settings, alias=alias, model_version=model_version, window_days=window_days,
                          last_n=last_n, now=now, kb=kb)  # fmt: skip
    with session_scope(settings.db_url) as s:
        s.add(
            DriftReport(
                id=report["id"],
                created_at=datetime.fromisoformat(report["created_at"].removesuffix("Z")),  # the report's own
                alias=report["alias"],
                model_version=report["model_version"],
                embedder=report["embedder"],
                window=report["window"],
                verdict=report["verdict"],
                retrain=report["recommendation"]["retrain"],
                report=report,
                source=source,
            )
        )
    if report["verdict"] in ("warn", "drift"):
        flagged = [sig["name"] for sig in report["signals"] if sig["verdict"] == report["verdict"]]
        subject = report["alias"] or report["model_version"]
        retrain = " Retrain recommended." if report["recommendation"]["retrain"] else ""
        raise_alert(
            settings,
            "drift",
            subject,
            f"Drift check of {report['model_version']} ({subject}): {report['verdict']} in "
            f"{', '.join(flagged)} over {report['window']['n']} records.{retrain}",
            {
                "report_id": report["id"],
                "alias": report["alias"],
                "model_version": report["model_version"],
                "verdict": report["verdict"],
                "retrain": report["recommendation"]["retrain"],
                "signals": {sig["name"]: sig["verdict"] for sig in report["signals"]},
            },
            severity="critical" if report["verdict"] == "drift" else "warn",
            dedupe_key=f"drift:{subject}:{report['model_version']}:{report['verdict']}",
        )
    return report


def latest_reports(settings: Settings, *, alias: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Stored reports, newest first (of one alias when given): the dashboard's and ``/api/drift``'s list."""
    with session_scope(settings.db_url) as s:
        query = (
            select(DriftReport).order_by(DriftReport.created_at.desc(), DriftReport.id.desc()).limit(limit)
        )
        if alias is not None:
            query = query.where(DriftReport.alias == alias)
        out = []
        for row in s.scalars(query):
            data = dict(row.report or {})
            data.update(id=row.id, created_at=_iso(row.created_at), source=row.source)
            out.append(data)
        return out


def drift_task(settings: Settings, *, kb: Callable[[], KnowledgeBase] | None = None) -> Task | None:
    """The server's periodic check: every ``[drift] check_interval_s`` seconds, in one server of all those
    sharing the database, a stored report per alias of ``[drift] aliases``; None when none is listed."""
    if not settings.drift.aliases:
        return None

    def check() -> None:
        for alias in settings.drift.aliases:
            try:
                run_drift(settings, alias=alias, kb=kb, source="server")
            except NotFound:  # an alias not set yet (nothing promoted): nothing to watch
                log.info("drift check: alias %r serves no model yet", alias)

    return Task(DRIFT_TASK, settings.drift.check_interval_s, check)
