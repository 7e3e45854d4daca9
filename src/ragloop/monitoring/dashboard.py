"""What the dashboard shows, read from the records with SQL aggregates: traffic, latency, feedback and
verified citations per day and model version; the model registry with lineage and eval runs; interaction
search and one interaction in full.

Every aggregate is computed by the database (GROUP BY day and version; percentiles by window functions,
written once for SQLite and PostgreSQL alike), so a page costs a few queries whatever the number of
interactions; Python only reshapes the few dozen rows that come back.

Scoped keys. A key scoped to collections C sees an interaction, and counts it in any aggregate, only when
the interaction showed at least one passage and every passage it showed is from a collection in C
(``visible_to``). The rule reads only ``passages.collection``, found through the indexed
``passages.interaction_id``, so it costs one anti-join; and it never leaks: whatever the model read for that
answer came from C. An interaction that showed no passage (an empty knowledge base, a refusal before
retrieval) names no collection and is shown to admin keys only. Registry data (model versions, eval runs)
belongs to no collection; a scoped key sees the versions and their lineage but no eval run, whose questions
may come from any collection.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, false, func, or_, select

from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.evaluation.compare import compare_runs
from ragloop.evaluation.metrics import primary_metric
from ragloop.generation.replay import replay
from ragloop.store.db import session_scope
from ragloop.store.models import (
    DatasetVersion,
    EvalRun,
    Feedback,
    Interaction,
    ModelAlias,
    ModelVersion,
    Passage,
)

# Traffic is what users asked: evaluation shadows and synthetic questions are records, not requests.
LIVE_SOURCES = ("api", "cli")
# Feedback from people (reviewers, end users); automatic and eval judgements are not feedback rates.
PEOPLE_FEEDBACK_EXCLUDES = ("auto", "eval")
FEEDBACK_FILTERS = ("any", "none", "down", "up", "corrected")
PAGE_MAX = 200
TEXT_SCAN_ROWS = 20_000  # records a text search reads per stretch, newest first (``search_interactions``)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def visible_to(collections: Sequence[str] | None, *, per_row: bool = True) -> ColumnElement[bool] | None:
    """The SQL condition an interaction must meet to be seen by a key scoped to ``collections`` (None:
    every collection, no condition). See the module docstring for the rule.

    Two equivalent forms, for two access paths: ``per_row`` (correlated EXISTS, a few index probes per
    interaction) for pages that read one page of rows newest first; the set form (the interactions whose
    passages all lie in scope, found by one pass over the passages) for aggregates over every interaction
    of a window, where probing each one would cost more than reading the passages once."""
    if collections is None:
        return None
    scope = list(collections)
    if not scope:
        return false()
    if per_row:
        shown = exists().where(Passage.interaction_id == Interaction.id)
        outside = exists().where(Passage.interaction_id == Interaction.id, Passage.collection.not_in(scope))
        return and_(shown, ~outside)
    inside = (
        select(Passage.interaction_id)
        .group_by(Passage.interaction_id)
        .having(func.max(case((Passage.collection.not_in(scope), 1), else_=0)) == 0)
    )
    return Interaction.id.in_(inside)


def _day(value: Any) -> date:
    """SQLite's date() is text, PostgreSQL's a date."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _percentile_case(rank: Any, n: Any, ms: Any, p: float) -> Any:
    # Nearest rank: the smallest value whose rank reaches p·n (numpy's "inverted_cdf").
    return func.min(case((rank >= p * n, ms)))


def _people(*cond: ColumnElement[bool]) -> Any:
    """EXISTS people's feedback on the interaction (meeting ``cond``)."""
    return exists().where(
        Feedback.interaction_id == Interaction.id, Feedback.source.not_in(PEOPLE_FEEDBACK_EXCLUDES), *cond
    )


# down, rated, corrected, any: the conditions of ``_people`` counted per day.
_FEEDBACK_KINDS: tuple[tuple[ColumnElement[bool], ...], ...] = (
    (Feedback.thumbs == -1,),
    (Feedback.thumbs.is_not(None),),
    (Feedback.corrected_answer.is_not(None),),
    (),
)


def _people_feedback() -> Any:
    """Per interaction: whether people gave it a thumbs down, any thumbs, a correction, any feedback."""
    return (
        select(
            Feedback.interaction_id.label("iid"),
            func.max(case((Feedback.thumbs == -1, 1), else_=0)).label("down"),
            func.max(case((Feedback.thumbs.is_not(None), 1), else_=0)).label("rated"),
            func.max(case((Feedback.corrected_answer.is_not(None), 1), else_=0)).label("corrected"),
        )
        .where(Feedback.source.not_in(PEOPLE_FEEDBACK_EXCLUDES))
        .group_by(Feedback.interaction_id)
        .subquery()
    )


# Overview ---------------------------------------------------------------------------------------------


# Past days' aggregates change rarely (late feedback or signals, retention), so they are kept for a while
# per database, scope and window; today is read fresh on every view. Bounded, and per process.
CACHE_TTL_S = 600.0
_CACHE: OrderedDict[tuple[Any, ...], tuple[float, Any]] = OrderedDict()
_CACHE_MAX = 64
_cache_lock = threading.Lock()


def _per_day_version(
    settings: Settings, lo: datetime, hi: datetime | None, collections: Sequence[str] | None, *, per_row: bool
) -> list[tuple[Any, ...]]:
    """(day, version, n, verified, checked, p50, p95) of live interactions with lo <= created_at < hi.

    One pass: each row is ranked by latency within its day (a window function), then rows are grouped by
    (day, version). A day's percentile is the smallest latency whose rank reaches p·n; taken per (day,
    version), the least over a day's versions is the day's, so latency needs no second pass."""
    where = [Interaction.created_at >= lo, Interaction.source.in_(LIVE_SOURCES)]
    if hi is not None:
        where.append(Interaction.created_at < hi)
    scope = visible_to(collections, per_row=per_row)
    if scope is not None:
        where.append(scope)
    day = func.date(Interaction.created_at)
    ranked = (
        select(
            day.label("day"),
            Interaction.model_version.label("version"),
            Interaction.latency_total_ms.label("ms"),
            Interaction.verified.label("verified"),
            func.row_number().over(partition_by=day, order_by=Interaction.latency_total_ms).label("rank"),
            func.count().over(partition_by=day).label("n"),
        )
        .where(*where)
        .subquery()
    )
    r = ranked.c
    query = select(
        r.day,
        r.version,
        func.count(),
        func.sum(case((r.verified.is_(True), 1), else_=0)),
        func.count(r.verified),
        _percentile_case(r.rank, r.n, r.ms, 0.5),
        _percentile_case(r.rank, r.n, r.ms, 0.95),
    ).group_by(r.day, r.version)
    with session_scope(settings.db_url) as s:
        return [(_day(row[0]), *row[1:]) for row in s.execute(query)]


def _feedback_per_day(
    settings: Settings, lo: datetime, hi: datetime | None, collections: Sequence[str] | None, *, recent: bool
) -> list[tuple[Any, ...]]:
    """(day, down, rated, corrected, with_feedback) of people's feedback on live interactions with lo <=
    created_at < hi (the interaction's day), each interaction counted once. Over many days it is read from
    the feedback table (much smaller), each row joined to its interaction by key; over a ``recent`` day,
    from that day's interactions, each probing its feedback by key. Either way few interactions are
    involved, so the scope is checked row by row."""
    where = [Interaction.created_at >= lo, Interaction.source.in_(LIVE_SOURCES)]
    if hi is not None:
        where.append(Interaction.created_at < hi)
    scope = visible_to(collections, per_row=True)
    if scope is not None:
        where.append(scope)
    day = func.date(Interaction.created_at)
    if recent:
        counts = [func.sum(case((_people(*cond), 1), else_=0)) for cond in _FEEDBACK_KINDS]
        query = select(day, *counts).where(*where, _people()).group_by(day)
        with session_scope(settings.db_url) as s:
            return [(_day(row[0]), *(int(v or 0) for v in row[1:])) for row in s.execute(query)]
    fb = _people_feedback()
    query = (
        select(day, func.sum(fb.c.down), func.sum(fb.c.rated), func.sum(fb.c.corrected), func.count())
        .select_from(fb)
        .join(Interaction, Interaction.id == fb.c.iid)
        .where(*where)
        .group_by(day)
    )
    with session_scope(settings.db_url) as s:
        return [(_day(row[0]), *(int(v or 0) for v in row[1:])) for row in s.execute(query)]


def _past_days(
    settings: Settings, lo: datetime, hi: datetime, collections: Sequence[str] | None
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Both aggregates for lo <= created_at < hi, from the cache when it holds them."""
    key = (settings.db_url, None if collections is None else tuple(sorted(collections)), lo, hi)
    now = time.monotonic()
    with _cache_lock:
        hit = _CACHE.get(key)
        if hit is not None and now - hit[0] < CACHE_TTL_S:
            _CACHE.move_to_end(key)
            return hit[1]
    # Every interaction of the window is read: the set form of the scope reads the passages once.
    value = (
        _per_day_version(settings, lo, hi, collections, per_row=False),
        _feedback_per_day(settings, lo, hi, collections, recent=False),
    )
    with _cache_lock:
        _CACHE[key] = (now, value)
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)
    return value


def overview(
    settings: Settings,
    *,
    days: int = 30,
    collections: Sequence[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Live traffic of the last ``days`` days (from midnight UTC ``days - 1`` days ago), per day:

    - ``requests``: {model version: [(day, n)]};
    - ``latency``: [(day, n, p50, p95)] in ms, all versions together (nearest-rank percentiles);
    - ``feedback``: [(day, thumbs-down rate, correction rate, rated, with feedback)]: the thumbs-down rate
      is the share of answers given a thumbs by people that got a thumbs down (any reviewer's), the
      correction rate the share of answers with people's feedback that got a corrected answer;
    - ``verified``: [(day, share, n)]: the share of answers with computed signals (``monitoring.signals``),
      abstentions aside, whose citations were verified;
    - ``totals``: counts and rates over the whole window, latency of the latest day.

    Days before today come from a cache of up to ``CACHE_TTL_S`` seconds (they change only when feedback
    or signals arrive late, or records expire); today is read on every view.
    """
    now = now or _now()
    since = datetime.combine((now - timedelta(days=max(1, days) - 1)).date(), datetime.min.time())
    cutoff = max(since, datetime.combine(now.date(), datetime.min.time()))
    rows, fb_past = _past_days(settings, since, cutoff, collections) if cutoff > since else ([], [])
    rows = rows + _per_day_version(settings, cutoff, None, collections, per_row=True)
    fb_rows = {
        r[0]: r[1:] for r in fb_past + _feedback_per_day(settings, cutoff, None, collections, recent=True)
    }

    requests: dict[str, list[tuple[date, int]]] = defaultdict(list)
    daily: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])  # n, verified, checked
    latency: dict[date, list[float]] = {}
    for d, version, n, n_verified, checked, p50, p95 in rows:
        requests[version].append((d, int(n)))
        acc = daily[d]
        acc[0] += int(n)
        acc[1] += int(n_verified or 0)
        acc[2] += int(checked or 0)
        lat = latency.setdefault(d, [math.inf, math.inf])
        lat[0], lat[1] = min(lat[0], _inf(p50)), min(lat[1], _inf(p95))
    for points in requests.values():
        points.sort()
    days_seen = sorted(daily)

    def rate(k: int, n: int) -> float | None:
        return k / n if n else None

    def fb_count(d: date, name: str) -> int:
        row = fb_rows.get(d)
        return 0 if row is None else row[("down", "rated", "corrected", "with_feedback").index(name)]

    feedback = [(d, rate(fb_count(d, "down"), fb_count(d, "rated")),
                 rate(fb_count(d, "corrected"), fb_count(d, "with_feedback")),
                 fb_count(d, "rated"), fb_count(d, "with_feedback")) for d in days_seen]  # fmt: skip
    verified = [(d, rate(daily[d][1], daily[d][2]), daily[d][2]) for d in days_seen]
    sums = {
        name: sum(fb_count(d, name) for d in days_seen)
        for name in ("down", "rated", "corrected", "with_feedback")
    }
    last = days_seen[-1] if days_seen else None
    return {
        "since": since,
        "until": now,
        "days": days,
        "requests": dict(sorted(requests.items())),
        "latency": [(d, daily[d][0], _finite(latency[d][0]), _finite(latency[d][1])) for d in days_seen],
        "feedback": feedback,
        "verified": verified,
        "totals": {
            "requests": sum(daily[d][0] for d in days_seen),
            "versions": len(requests),
            "latest_day": last,
            "latency_p50": _finite(latency[last][0]) if last else None,
            "latency_p95": _finite(latency[last][1]) if last else None,
            "thumbs_down_rate": rate(sums["down"], sums["rated"]),
            "rated": sums["rated"],
            "correction_rate": rate(sums["corrected"], sums["with_feedback"]),
            "with_feedback": sums["with_feedback"],
            "verified_share": rate(sum(daily[d][1] for d in days_seen), sum(daily[d][2] for d in days_seen)),
            "checked": sum(daily[d][2] for d in days_seen),
        },
    }


def _finite(v: float) -> float | None:
    return None if math.isinf(v) else v


def _inf(v: float | None) -> float:
    return math.inf if v is None else float(v)


# Models -----------------------------------------------------------------------------------------------


def _run_label(run: dict[str, Any]) -> str:
    k = run["k"]
    return run["condition"] + (
        f" k={k}" if k is not None and run["condition"] in ("distractors", "no-gold") else ""
    )


def models_view(
    settings: Settings,
    *,
    metric: str | None = None,
    dataset: str | None = None,
    a: str | None = None,
    b: str | None = None,
    collections: Sequence[str] | None = None,
    max_runs: int = 500,
) -> dict[str, Any]:
    """Every model version with its lineage (dataset, curation policy, KB version, base, parent), aliases
    and eval runs; ``metric`` (default: the primary metric of the newest run) across versions, per
    condition, on ``dataset`` (default: the dataset with the most finished runs); the robustness curve
    (the metric against the number of distractors, and with the gold removed) on the same dataset; and,
    with ``a`` and ``b``, the two versions side by side with the paired comparison of their newest runs on
    the same questions and condition, when they have such a pair. Scoped keys get no eval runs."""
    with session_scope(settings.db_url) as s:
        aliases: dict[str, list[str]] = defaultdict(list)
        for alias in s.scalars(select(ModelAlias)):
            aliases[alias.model_version_id].append(alias.name)
        datasets = {d.id: d for d in s.scalars(select(DatasetVersion))}
        versions = []
        for mv in s.scalars(select(ModelVersion).order_by(ModelVersion.created_at)):
            meta = mv.meta or {}
            dv = datasets.get(mv.dataset_id or "")
            versions.append(
                {
                    "id": mv.id,
                    "created_at": mv.created_at,
                    "aliases": sorted(aliases.get(mv.id, [])),
                    "base_model": mv.base_model,
                    "parent_id": mv.parent_id,
                    "adapter": bool(mv.adapter_path),
                    "kind": meta.get("kind") or ("adapter" if mv.adapter_path else "base"),
                    "dataset_id": mv.dataset_id,
                    "dataset_name": dv.name if dv else (meta.get("dataset") or {}).get("name"),
                    "dataset_source": dv.source if dv else None,
                    "policy": (dv.policy if dv else None) or meta.get("curation_policy"),
                    "kb_version": (dv.kb_version if dv else None) or meta.get("kb_version"),
                    "contains_erased": mv.contains_erased,
                }
            )
        runs: list[dict[str, Any]] = []
        if collections is None:
            query = select(EvalRun).order_by(EvalRun.created_at.desc()).limit(max_runs)
            for r in s.scalars(query):
                runs.append({"id": r.id, "created_at": r.created_at, "model_version": r.model_version,
                             "dataset": r.dataset, "dataset_hash": r.dataset_hash, "condition": r.condition,
                             "k": r.n_distractors, "n": r.n_examples, "status": r.status,
                             "metrics": r.metrics or {}})  # fmt: skip
    done = [r for r in runs if r["status"] == "done" and r["metrics"]]
    counts: dict[str, int] = defaultdict(int)
    for r in done:
        counts[r["dataset"]] += 1
    dataset = dataset if dataset in counts else max(counts, key=lambda d: counts[d]) if counts else None
    on_data = [r for r in done if r["dataset"] == dataset]
    metric = metric or (primary_metric(on_data[0]["metrics"]) if on_data else "f1")
    metric_names = sorted({k for r in done for k, v in r["metrics"].items() if isinstance(v, int | float)})
    latest: dict[tuple[str, str], dict[str, Any]] = {}  # (version, condition label) -> newest run
    for r in on_data:  # newest first
        latest.setdefault((r["model_version"], _run_label(r)), r)
    order = [v["id"] for v in versions]
    across: dict[str, list[tuple[str, float | None]]] = defaultdict(list)
    for (version, label), r in sorted(
        latest.items(), key=lambda kv: order.index(kv[0][0]) if kv[0][0] in order else 0
    ):
        across[label].append((version, r["metrics"].get(metric)))
    robustness: dict[str, list[tuple[int, float | None]]] = defaultdict(list)
    for (version, _label), r in latest.items():
        if r["condition"] in ("distractors", "no-gold") and r["k"] is not None:
            name = version if r["condition"] == "distractors" else f"{version} · gold removed"
            robustness[name].append((int(r["k"]), r["metrics"].get(metric)))
    for points in robustness.values():
        points.sort()
    return {
        "versions": versions,
        "runs": runs if collections is None else None,
        "datasets": sorted(counts),
        "dataset": dataset,
        "metric": metric,
        "metrics": metric_names,
        "across": dict(sorted(across.items())),
        "robustness": dict(sorted(robustness.items())),
        "compare": _compare(settings, versions, done, a, b) if a and b and collections is None else None,
    }


def _compare(
    settings: Settings, versions: list[dict[str, Any]], done: list[dict[str, Any]], a: str, b: str
) -> dict[str, Any]:
    """Two versions side by side; the paired comparison of their newest runs that share questions (same
    dataset content) and condition, if any."""
    by_id = {v["id"]: v for v in versions}
    out: dict[str, Any] = {"a": by_id.get(a), "b": by_id.get(b), "runs": None, "metrics": [], "n_common": 0}
    runs_b: dict[tuple[str, str, Any], dict[str, Any]] = {}
    for r in done:
        if r["model_version"] == b:
            runs_b.setdefault((r["dataset_hash"], r["condition"], r["k"]), r)
    pair = next(
        ((r, runs_b[key]) for r in done if r["model_version"] == a
         and (key := (r["dataset_hash"], r["condition"], r["k"])) in runs_b),
        None,
    )  # fmt: skip
    if pair is None:
        out["reason"] = "No finished eval runs of both versions on the same dataset and condition."
        return out
    try:
        c = compare_runs(settings, pair[0]["id"], pair[1]["id"], resamples=1000)
    except RagloopError as exc:
        out["reason"] = str(exc)
        return out
    out["runs"] = (pair[0], pair[1])
    out["n_common"] = c.n_common
    out["metrics"] = [{"name": m.name, "a": m.a, "b": m.b, "diff": m.interval.diff if m.interval else None,
                       "low": m.interval.low if m.interval else None, "high": m.interval.high if m.interval else None,
                       "excludes_zero": bool(m.interval and m.interval.excludes_zero)} for m in c.metrics]  # fmt: skip
    out["regressions"] = len(c.regressions)
    out["improvements"] = len(c.improvements)
    return out


# Interactions -----------------------------------------------------------------------------------------


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_interactions(
    settings: Settings,
    *,
    text: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    feedback: str | None = None,
    collections: Sequence[str] | None = None,
    limit: int = 50,
    offset: int = 0,
    before: datetime | None = None,
) -> dict[str, Any]:
    """Interactions newest first, filtered: ``text`` in the question or the answer (case-insensitive),
    ``model`` a version id or the alias that served it, ``since`` ≤ created_at < ``until`` (and <
    ``before``), ``feedback`` one of ``FEEDBACK_FILTERS`` (people's feedback: any, none, a thumbs down, up,
    a correction). Returns ``rows`` (one page) and ``has_more``: no total count, which would cost a scan of
    every match.

    A text search matches no index, so it reads the newest ``TEXT_SCAN_ROWS`` records in its date range at
    most: ``older_before`` is then where the next, older stretch starts (pass it as ``before``), so a
    search that matches nothing costs the same on a table of a million records as on one of 20,000."""
    if feedback and feedback not in FEEDBACK_FILTERS:
        raise RagloopError(f"feedback must be one of {', '.join(FEEDBACK_FILTERS)}, not {feedback!r}.")
    limit = max(1, min(limit, PAGE_MAX))
    where: list[ColumnElement[bool]] = []
    scope = visible_to(collections)
    if scope is not None:
        where.append(scope)
    if text:
        pattern = _like(text.strip()[:200])
        where.append(or_(Interaction.retrieval_query.ilike(pattern, escape="\\"),
                         Interaction.answer.ilike(pattern, escape="\\")))  # fmt: skip
    if model:
        where.append(or_(Interaction.model_version == model, Interaction.model_alias == model))
    if since is not None:
        where.append(Interaction.created_at >= since)
    if until is not None:
        where.append(Interaction.created_at < until)
    if before is not None:
        where.append(Interaction.created_at < before)
    older_before = None
    if text:
        span = [c for c in (Interaction.created_at >= since if since else None,
                            Interaction.created_at < until if until else None,
                            Interaction.created_at < before if before else None) if c is not None]  # fmt: skip
        edge = (
            select(Interaction.created_at)
            .where(*span)
            .order_by(Interaction.created_at.desc())
            .offset(TEXT_SCAN_ROWS - 1)
            .limit(2)
        )
        with session_scope(settings.db_url) as s:
            found = list(s.scalars(edge))
        if len(found) == 2:  # older records exist: this stretch ends at the oldest one read
            older_before = found[0]
            where.append(Interaction.created_at >= older_before)

    if feedback == "any":
        where.append(_people())
    elif feedback == "none":
        where.append(~_people())
    elif feedback == "down":
        where.append(_people(Feedback.thumbs == -1))
    elif feedback == "up":
        where.append(_people(Feedback.thumbs == 1))
    elif feedback == "corrected":
        where.append(_people(Feedback.corrected_answer.is_not(None)))
    query = (
        select(
            Interaction.id,
            Interaction.created_at,
            Interaction.source,
            Interaction.model_version,
            Interaction.model_alias,
            Interaction.retrieval_query,
            func.substr(Interaction.answer, 1, 240).label("answer"),
            Interaction.latency_total_ms,
            Interaction.verified,
            Interaction.abstained,
            _people(Feedback.thumbs == -1).label("down"),
            _people(Feedback.thumbs == 1).label("up"),
            _people(Feedback.corrected_answer.is_not(None)).label("corrected"),
        )
        .where(*where)
        .order_by(Interaction.created_at.desc(), Interaction.id.desc())
        .limit(limit + 1)
        .offset(max(0, offset))
    )
    with session_scope(settings.db_url) as s:
        rows = [dict(r._mapping) for r in s.execute(query)]
    return {"rows": rows[:limit], "has_more": len(rows) > limit, "limit": limit, "offset": max(0, offset),
            "older_before": older_before, "scan_rows": TEXT_SCAN_ROWS if text else None}  # fmt: skip


def interaction_detail(
    settings: Settings, interaction_id: str, *, collections: Sequence[str] | None = None, kb: Any = None
) -> dict[str, Any] | None:
    """One interaction as the dashboard shows it, or None when it does not exist or the scope hides it:
    the record, its passages with every score (fused, dense, full-text) and their texts, the citations,
    people's and automatic feedback, and its replay: whether the prompt rebuilds sha256-identical from the
    recorded passages and template (nothing is generated). Eval answers keep their passages with the record
    and are not replayed from the knowledge base."""
    where: list[ColumnElement[bool]] = [Interaction.id == interaction_id]
    scope = visible_to(collections)
    if scope is not None:
        where.append(scope)
    with session_scope(settings.db_url) as s:
        interaction = s.scalars(select(Interaction).where(*where)).first()
        if interaction is None:
            return None
        record = interaction.to_dict()
        feedback = [f.to_dict() for f in s.scalars(
            select(Feedback).where(Feedback.interaction_id == interaction_id).order_by(Feedback.id))]  # fmt: skip
    cited: dict[int, int] = defaultdict(int)
    for c in record.get("citations") or []:
        if c.get("valid"):
            cited[int(c.get("n", 0))] += 1
    passages = [{**p, "text": None, "cited": cited.get(p["rank"], 0)} for p in record["passages"]]
    stored = (record.get("filters") or {}).get("eval_passages") if record["source"] == "eval" else None
    result: dict[str, Any] = {
        "identical": None,
        "sha256": None,
        "recorded": record["prompt_sha256"],
        "problems": [],
    }
    if stored is not None:
        passages = [{"rank": i + 1, "chunk_id": p.get("passage_id"), "title": p.get("title", ""),
                     "source_path": p.get("source_path", ""), "section": p.get("section", ""),
                     "text": p.get("text", ""), "cited": cited.get(i + 1, 0)} for i, p in enumerate(stored)]  # fmt: skip
        result["problems"] = ["An eval answer: its passages are stored with the record, not replayed."]
    else:
        try:
            r = replay(settings, interaction_id, kb=kb)
            texts = {p.chunk_id: p.text for p in r.passages}
            for p in passages:
                p["text"] = texts.get(p["chunk_id"])
            result.update(identical=r.identical, sha256=r.sha256, problems=list(r.problems))
        except Exception as exc:  # a KB that is gone or unreadable: the page still shows the record
            result["problems"] = [f"Replay failed: {type(exc).__name__}: {exc}"[:500]]
    return {"interaction": record, "passages": passages, "feedback": feedback, "replay": result}
