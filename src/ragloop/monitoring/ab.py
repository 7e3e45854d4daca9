"""A/B experiments, decided on evidence: start one, read where it stands, stop it, promote its candidate,
and the check a running server makes every ``[ab] check_interval_s`` seconds.

The check is what makes a release reversible without a person watching: it compares the arms on every
metric (per unit, ``metrics``; always-valid intervals, ``stats``), records a snapshot for the dashboard's
charts, and rolls the candidate back by itself (status ``rolled_back``, its share 0, the decision and reason
recorded) as soon as a guardrail's confidence sequence excludes 0 on the harmful side or the candidate
breaks a hard limit. It also moves a ramp to its next stage, and ends an experiment past its maximum
duration. The CLI (``ragloop ab``) and the admin API (``/api/ab``) call these same functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select

from ragloop.config import Settings
from ragloop.errors import Conflict, NotFound
from ragloop.generation import release
from ragloop.monitoring import alerts, stats
from ragloop.monitoring.metrics import METRICS, Request, read_requests, value
from ragloop.store import aliases, experiments
from ragloop.store.claims import Task
from ragloop.store.db import session_scope
from ragloop.store.models import Experiment, ExperimentSnapshot, utcnow

ARMS = experiments.ARMS
CHECK_TASK = "ab-check"
KB = Callable[[], Any]
"""Returns the knowledge base answers' passages are read from (a server passes its own)."""


# Starting, stopping, promoting ---------------------------------------------------------------------------


class _DryRun(Exception):
    """Raised to roll back a validation-only ``create_experiment``."""


def start(
    settings: Settings,
    *,
    candidate: str,
    alias: str = aliases.DEFAULT_ALIAS,
    share: float,
    ramp: Sequence[float] = (),
    primary: str = "thumbs_up",
    guardrails: Iterable[str] = experiments.DEFAULT_GUARDRAILS,
    min_units: int = experiments.DEFAULT_MIN_UNITS,
    max_days: float | None = None,
    load: release.Loader | None = None,
    candidate_embedder: str | None = aliases.KEEP,
) -> dict[str, Any]:
    """Start an experiment on ``alias``: ``candidate`` gets ``share`` of its live traffic (after the ``ramp``
    stages, if any), the alias's current version the rest. Bad input is refused before anything is written
    (``store.experiments.create_experiment``), and the candidate must load (``release.check_loads``, as a
    promotion does) so its users never meet a broken adapter. The [ab] defaults (tuning n, hard limits,
    stage size) are frozen into the experiment. ``candidate_embedder``: the candidate arm's embedder version
    (None: the base one; ``KEEP``: the control's), checked as a release checks it (``release.embedder_move``)."""

    def create(s: Any, config: dict[str, Any] | None = None) -> Experiment:
        return experiments.create_experiment(
            s, alias=alias, candidate=candidate, share=share, ramp=tuple(ramp), primary=primary,
            guardrails=tuple(guardrails), min_units=min_units, max_days=max_days, config=config,
            candidate_embedder=candidate_embedder,
        )  # fmt: skip

    # Everything is checked first in a transaction that is rolled back, then the candidate is loaded
    # (seconds, with no transaction open), then the experiment is created for real, checked again.
    try:
        with session_scope(settings.db_url) as s:
            create(s)
            raise _DryRun
    except _DryRun:
        pass
    version, _ = aliases.resolve(settings.db_url, candidate)
    release.check_loads(version, alias, load or release.in_process_loader(settings))
    ab = settings.ab
    config = {
        "tuning_n": ab.tuning_n,
        "stage_units": ab.stage_units,
        "limits": {
            "latency_p95_ratio": ab.latency_p95_ratio,
            "latency_p95_ms": ab.latency_p95_ms,
            "error_rate_margin": ab.error_rate_margin,
        },
    }
    control_embedder = aliases.served_pair(settings.db_url, alias).embedder_version
    wanted = control_embedder if candidate_embedder is aliases.KEEP else candidate_embedder
    with release.embedder_move(settings, control_embedder, wanted), session_scope(settings.db_url) as s:
        experiment = create(s, config)
    return experiment.to_dict()


def _find(s: Any, experiment: str | None, alias: str, *, running_only: bool) -> Experiment:
    """The experiment named, else the one running on ``alias`` (else, unless ``running_only``, the latest
    one on it)."""
    if experiment:
        return experiments.get_experiment(s, experiment)
    found = experiments.running_for(s, alias)
    if found is None and not running_only:
        found = next((e for e in experiments.list_experiments(s) if e.alias == alias), None)
    if found is None:
        what = "running on" if running_only else "on"
        raise NotFound(f"No experiment {what} {alias!r}; start one with `ragloop ab start --candidate V`.")
    return found


def _ended(experiment: Experiment) -> Conflict:
    why = f" ({experiment.reason})" if experiment.reason else ""
    return Conflict(f"Experiment {experiment.id} already ended: {experiment.status}{why}.")


def stop(
    settings: Settings,
    experiment: str | None = None,
    *,
    alias: str = aliases.DEFAULT_ALIAS,
    reason: str | None = None,
    by: str = "user",
) -> dict[str, Any]:
    """Stop an experiment (the one named, else the one running on ``alias``): its units go back to the
    alias's version from their next request; the decision and reason are recorded."""
    with session_scope(settings.db_url) as s:
        found = _find(s, experiment, alias, running_only=True)
        if found.status != experiments.RUNNING:
            raise _ended(found)
        stopped = experiments.stop_experiment(
            s, found.id, status="stopped", decision="stop", reason=reason or f"stopped by {by}", by=by
        )
        return stopped.to_dict()


def promote(
    settings: Settings,
    experiment: str | None = None,
    *,
    alias: str = aliases.DEFAULT_ALIAS,
    note: str | None = None,
    load: release.Loader | None = None,
) -> dict[str, Any]:
    """Serve the candidate of a running experiment under its alias, through the one release function
    (``release.promote``: loaded first, the move recorded as a registry event), which ends the experiment
    as ``promoted`` in the same transaction as the alias move."""
    with session_scope(settings.db_url) as s:
        found = _find(s, experiment, alias, running_only=True)
        if found.status != experiments.RUNNING:
            raise _ended(found)
        experiment_id, target = found.id, found.alias
        candidate = found.arms["candidate"]["model_version"]
        embedder = found.arms["candidate"].get("embedder_version")  # the pair moves together
    label = f"ab promote of experiment {experiment_id}" + (f" ({note})" if note else "")
    # Still running when the alias moves: a guardrail rollback since the read above refuses the promotion.
    moved = release.promote(
        settings, candidate, target, note=label, load=load, while_running=experiment_id, embedder=embedder
    )
    with session_scope(settings.db_url) as s:
        ended = experiments.get_experiment(s, experiment_id).to_dict()
    return {
        "experiment": ended,
        "release": {
            "alias": moved.alias,
            "model_version": moved.model_version,
            "previous": moved.previous,
            "embedder_version": moved.embedder_version,
        },  # fmt: skip
    }


# Where an experiment stands -------------------------------------------------------------------------------


def status(
    settings: Settings,
    experiment: str | None = None,
    *,
    alias: str = aliases.DEFAULT_ALIAS,
    kb: KB | None = None,
) -> dict[str, Any]:
    """The report of an experiment (the one named, else the one running on ``alias``, else its latest):
    per arm units, interactions and errors; per metric each arm's value, the interval of the difference
    and its verdict; the primary verdict, the guardrails, the sample-ratio check per ramp stage."""
    with session_scope(settings.db_url) as s:
        row = _find(s, experiment, alias, running_only=False).to_dict()
    return _json_safe(report(row, read_requests(settings, row["id"], kb)))


def _per_unit(units: list[str], values: list[float], how: str) -> np.ndarray:
    if how == "mean":
        return stats.per_unit(units, values)
    groups: dict[str, list[float]] = {}
    for unit, v in zip(units, values, strict=True):
        if math.isfinite(v):
            groups.setdefault(unit, []).append(v)
    return np.array([float(np.median(g)) for g in groups.values()])


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _arm_values(requests: list[Request], metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per arm: one observation per unit, and the values per request (finite ones)."""
    out = {}
    for arm in ARMS:
        mine = [r for r in requests if r.arm == arm]
        values = [value(metric, r) for r in mine]
        per_request = np.array([v for v in values if math.isfinite(v)])
        out[arm] = (_per_unit([r.unit for r in mine], values, METRICS[metric].per_unit), per_request)
    return out


def report(
    experiment: dict[str, Any], requests: list[Request], now: datetime | None = None
) -> dict[str, Any]:
    """Where ``experiment`` (its ``to_dict()``) stands given its ``requests`` (``metrics.read_requests``).
    Pure: the check and ``status`` share it, and what it returns is what a snapshot keeps."""
    config = experiment.get("config") or {}
    tuning_n = config.get("tuning_n", stats.DEFAULT_TUNING_N)
    limits = config.get("limits") or {}
    primary, guardrails = experiment["primary_metric"], list(experiment.get("guardrails") or [])
    sequential = [g for g in guardrails if not METRICS[g].hard_limit]
    alpha, alpha_guardrail = stats.split_alpha(experiment["alpha"], len(sequential))

    arms = {}
    for arm in ARMS:
        mine = [r for r in requests if r.arm == arm]
        arms[arm] = {
            "model_version": (experiment["arms"].get(arm) or {}).get("model_version"),
            "embedder_version": (experiment["arms"].get(arm) or {}).get("embedder_version"),
            "units": len({r.unit for r in mine}),
            "interactions": sum(not r.failed for r in mine),
            "errors": sum(r.failed for r in mine),
        }

    metrics: dict[str, dict[str, Any]] = {}
    harms: list[str] = []
    for name, metric in METRICS.items():
        values = _arm_values(requests, name)
        level = alpha_guardrail if name in sequential else alpha
        entry: dict[str, Any] = {
            "higher_is_better": metric.higher_is_better,
            "primary": name == primary,
            "guardrail": ("limit" if metric.hard_limit else "sequence") if name in guardrails else None,
        }
        for arm in ARMS:
            units, per_request = values[arm]
            entry[arm] = {
                "units": int(units.size),
                "mean": _num(float(units.mean())) if units.size else None,
                "requests": int(per_request.size),
            }
        if name == "latency_p95":  # a hard limit only: a unit's p95 of a few requests means nothing
            entry.update(alpha=None, interval=None, verdict="inconclusive")
        else:
            interval = stats.confidence_sequence(
                values["control"][0], values["candidate"][0], level, tuning_n
            )
            entry.update(
                alpha=level,
                interval=interval.as_dict(),
                verdict=stats.verdict(interval, metric.higher_is_better),
            )
        if metric.hard_limit:
            _hard_limit(name, entry, values, limits)
        if name in sequential and entry["verdict"] == "worse":
            iv = entry["interval"]
            harms.append(
                f"{name}: candidate − control {iv['estimate']:+.3g}, its {1 - level:.4g} confidence sequence "
                f"[{iv['lo']:.3g}, {iv['hi']:.3g}] excludes 0 on the harmful side "
                f"({entry['control']['units']} control and {entry['candidate']['units']} candidate units)"
            )
        if name in guardrails and metric.hard_limit and entry["breaks"]:
            harms.append(entry["limit_reason"])
        metrics[name] = entry

    units = sum(metrics[primary][arm]["units"] for arm in ARMS)
    held = units < experiment["min_units"]
    verdict = "inconclusive" if held else metrics[primary]["verdict"]
    srm = _srm(experiment, requests)
    return {
        "experiment": experiment,
        "at": (now or utcnow()).isoformat() + "Z",
        "arms": arms,
        "primary": {
            "metric": primary,
            "verdict": verdict,
            "units": units,
            "min_units": experiment["min_units"],
            "held": held and metrics[primary]["verdict"] != "inconclusive",
        },
        "guardrails": {"metrics": guardrails, "alpha_each": alpha_guardrail, "harm": harms},
        "metrics": metrics,
        "srm": srm,
    }


def _hard_limit(
    name: str, entry: dict[str, Any], values: dict[str, tuple[np.ndarray, np.ndarray]], limits: dict
) -> None:
    """Set ``limit``, ``breaks`` and ``limit_reason`` of a hard-limit metric: the candidate's p95 latency
    against ``latency_p95_ms`` or ``latency_p95_ratio`` × the control's p95; its error rate against the
    control's plus ``error_rate_margin``. Judged on at least ``stats.HARD_LIMIT_MIN_N`` requests of the arm
    (and, for a limit relative to the control, of the control)."""
    control, candidate = values["control"][1], values["candidate"][1]
    enough = control.size >= stats.HARD_LIMIT_MIN_N
    if name == "latency_p95":
        quantile = 0.95
        ctrl = float(np.quantile(control, quantile)) if control.size else math.nan
        cand = float(np.quantile(candidate, quantile)) if candidate.size else math.nan
        fixed = limits.get("latency_p95_ms")
        ratio = limits.get("latency_p95_ratio", 1.5)
        limit = fixed if fixed is not None else (ratio * ctrl if enough else None)
        basis = f"{limit} ms" if fixed is not None else f"{ratio} × the control's p95 {ctrl:.0f} ms"
        reason = (
            f"latency_p95: the candidate's p95 latency {cand:.0f} ms over {candidate.size} requests is above "
            f"the limit of {basis}"
        )
    else:
        quantile = None
        ctrl = float(control.mean()) if control.size else 0.0
        cand = float(candidate.mean()) if candidate.size else math.nan
        margin = limits.get("error_rate_margin", 0.02)
        # the control's rate needs as many requests as the latency's before it sets the bar
        limit = ctrl + margin if enough else None
        reason = (
            f"error_rate: the candidate's error rate {cand:.3f} over {candidate.size} requests is above the "
            f"limit of the control's {ctrl:.3f} + {margin}"
        )
    breaks = limit is not None and stats.breaks_limit(candidate, limit, quantile=quantile)
    entry["control"]["value"] = _num(ctrl)
    entry["candidate"]["value"] = _num(cand)
    entry.update(limit=_num(limit), breaks=bool(breaks), limit_reason=reason if breaks else None)
    if breaks:
        entry["verdict"] = "worse"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.rstrip("Z"))


def _srm(experiment: dict[str, Any], requests: list[Request]) -> dict[str, Any]:
    """The sample-ratio check per ramp stage: units counted in the stage they were first seen in, with the
    arm they were given then, against that stage's share (``stats.srm_pvalue``). A stage at share 0 (after
    a rollback) expects no candidate and is not tested."""
    stages = (experiment.get("config") or {}).get("stages") or [
        {"stage": experiment["stage"], "share": experiment["share"], "at": experiment["started_at"]}
    ]
    starts = [_at(s["at"]) for s in stages]
    first: dict[str, tuple[datetime, str]] = {}
    for r in requests:  # oldest first
        first.setdefault(r.unit, (r.at, r.arm))
    counts = [{"control": 0, "candidate": 0} for _ in stages]
    for at, arm in first.values():
        index = max((i for i, start in enumerate(starts) if start <= at), default=0)
        counts[index][arm] += 1
    out = []
    for stage, count in zip(stages, counts, strict=True):
        share = stage["share"]
        p = stats.srm_pvalue(count["control"], count["candidate"], share) if 0 < share < 1 else None
        out.append({**stage, **count, "p": p, "flagged": p is not None and p < stats.SRM_P})
    return {"threshold": stats.SRM_P, "flagged": any(s["flagged"] for s in out), "stages": out}


# The periodic check ---------------------------------------------------------------------------------------


def check(settings: Settings, experiment_id: str, *, kb: KB | None = None) -> dict[str, Any]:
    """Check one experiment now: compute its report, record it as a snapshot, and act on it. Returns the
    report with ``action`` (None, ``rollback``, ``ramp``, ``stop``) and ``reason``.

    Rollback: a guardrail shows harm (``report``'s ``guardrails.harm``) → the candidate's share goes to 0,
    the experiment ends ``rolled_back`` (``stopped_by`` guardrail) and from the next request every unit is
    served the control, which is the alias's version. Stop: past ``max_days``. Ramp: the current stage has
    served ``stage_units`` candidate units with no harm and no sample-ratio mismatch → next stage's share."""
    with session_scope(settings.db_url) as s:
        row = experiments.get_experiment(s, experiment_id).to_dict()
    now = utcnow()
    data = report(row, read_requests(settings, experiment_id, kb), now)
    action, reason = _decide(row, data, now)
    with session_scope(settings.db_url) as s:
        experiment = s.get(Experiment, experiment_id, with_for_update=True)
        if experiment is None or experiment.status != experiments.RUNNING:
            return {**data, "action": None, "reason": None}  # ended meanwhile (a person, a release)
        if action == "rollback":
            experiments.set_share(s, experiment_id, 0.0, experiment.stage)
            experiments.stop_experiment(
                s, experiment_id, status="rolled_back", decision="rollback", reason=reason, by="guardrail"
            )
        elif action == "stop":
            experiments.stop_experiment(
                s, experiment_id, status="stopped", decision="stop", reason=reason, by="max_days"
            )
        elif action == "ramp":
            stage = experiment.stage + 1
            experiments.set_share(s, experiment_id, experiment.ramp[stage], stage)
        data = {**data, "action": action, "reason": reason}
        # The experiment's own record is kept once, in its row; a snapshot keeps what changes.
        kept = {k: v for k, v in data.items() if k != "experiment"}
        state = {"status": experiment.status, "share": experiment.share, "stage": experiment.stage}
        s.add(ExperimentSnapshot(experiment_id=experiment_id, at=now, data=_json_safe({**kept, **state})))
    if action in ("rollback", "stop"):
        _alert(settings, row, data)
    return data


def _alert(settings: Settings, row: dict[str, Any], data: dict[str, Any]) -> None:
    """A rollback, or an end at the maximum duration, happened with nobody watching: an alert (kind
    ``guardrail``) tells someone, with the arms' counts and the reason (aggregates only)."""
    rollback = data["action"] == "rollback"
    primary = data["primary"]
    alerts.raise_alert(
        settings,
        "guardrail",
        f"experiment {row['id']} on {row['alias']}",
        f"{'Candidate rolled back' if rollback else 'Experiment ended'}: {data['reason']}",
        {
            "experiment_id": row["id"],
            "alias": row["alias"],
            "candidate": row["arms"]["candidate"]["model_version"],
            "action": data["action"],
            "arms": {
                arm: {k: a[k] for k in ("units", "interactions", "errors")} for arm, a in data["arms"].items()
            },
            "primary": {k: primary[k] for k in ("metric", "verdict", "units")},
        },
        severity="critical" if rollback else "info",
        dedupe_key=f"ab:{row['id']}:{data['action']}",
    )


def _decide(row: dict[str, Any], data: dict[str, Any], now: datetime) -> tuple[str | None, str | None]:
    harms = data["guardrails"]["harm"]
    if harms:
        return "rollback", "guardrail: " + "; ".join(harms)
    primary = data["primary"]
    if row["max_days"] is not None and now - _at(row["started_at"]) >= timedelta(days=row["max_days"]):
        return "stop", (
            f"ran its maximum of {row['max_days']:g} days; primary {primary['metric']}: {primary['verdict']} "
            f"over {primary['units']} units"
        )
    ramp, stage = row.get("ramp") or [], row["stage"]
    if stage + 1 < len(ramp):
        current = data["srm"]["stages"][-1]
        needed = (row.get("config") or {}).get("stage_units", 100)
        if current["candidate"] >= needed and not data["srm"]["flagged"]:
            return "ramp", (
                f"stage {stage} served {current['candidate']} candidate units (>= {needed}) without harm: "
                f"share {ramp[stage]} → {ramp[stage + 1]}"
            )
    return None, None


def _json_safe(data: Any) -> Any:
    """NaN and infinities as None: JSON columns (PostgreSQL's above all) refuse them."""
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_json_safe(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def check_running(settings: Settings, *, kb: KB | None = None) -> list[dict[str, Any]]:
    """Check every running experiment (the periodic task's work); one failing does not stop the others
    from being checked, and is raised after them so the task records the error."""
    with session_scope(settings.db_url) as s:
        running = [e.id for e in experiments.list_experiments(s) if e.status == experiments.RUNNING]
    results, failed = [], None
    for experiment_id in running:
        try:
            results.append(check(settings, experiment_id, kb=kb))
        except Exception as exc:  # noqa: BLE001 - the next experiment is still checked
            failed = exc
    if failed is not None:
        raise failed
    return results


def check_task(settings: Settings, *, kb: KB | None = None) -> Task:
    """The check as a periodic task of a running server (``claims.Scheduler``): every ``[ab]
    check_interval_s`` seconds, in one server of all those sharing the database."""
    return Task(CHECK_TASK, settings.ab.check_interval_s, lambda: check_running(settings, kb=kb))


def snapshots(settings: Settings, experiment: str, limit: int = 1000) -> list[dict[str, Any]]:
    """An experiment's snapshots, oldest first (the last ``limit``): the history its charts are drawn from."""
    with session_scope(settings.db_url) as s:
        found = experiments.get_experiment(s, experiment)
        rows = s.scalars(
            select(ExperimentSnapshot)
            .where(ExperimentSnapshot.experiment_id == found.id)
            .order_by(ExperimentSnapshot.id.desc())
            .limit(limit)
        )
        return [{"at": r.at.isoformat() + "Z", **r.data} for r in reversed(list(rows))]


def list_all(settings: Settings, *, limit: int = 200) -> list[dict[str, Any]]:
    """Every experiment (its ``to_dict()``), newest first, with ``verdict``: the primary metric's verdict at
    its latest snapshot (None before its first check). For listings (the dashboard): no requests are read."""
    with session_scope(settings.db_url) as s:
        rows = experiments.list_experiments(s)[:limit]
        out = []
        for row in rows:
            latest = s.scalars(
                select(ExperimentSnapshot)
                .where(ExperimentSnapshot.experiment_id == row.id)
                .order_by(ExperimentSnapshot.id.desc())
                .limit(1)
            ).first()
            verdict = ((latest.data or {}).get("primary") or {}).get("verdict") if latest else None
            out.append({**row.to_dict(), "verdict": verdict})
        return out
