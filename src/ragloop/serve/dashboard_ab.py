"""The dashboard's Experiments and Drift pages: where each A/B experiment stands and how it got there, and
whether the served model's traffic and knowledge base have moved away from what it was trained on.

Views only: they call the stages (``monitoring.ab``, ``monitoring.drift``, ``monitoring.alerts``) and draw
what those return with ``serve.charts``. The buttons (start, stop, promote an experiment; run a drift check;
acknowledge an alert) call the same stage functions as the CLI and ``/api``.

Who may look: an admin key with no collection scope, the rule of ``/api/ab``. An experiment and a drift
report are aggregates over all the traffic of an alias, whatever collections its questions read (a drift
report even quotes uncovered questions), so a scoped key could learn about collections it may not read; it
is refused (403), as is a non-admin key.

CSRF: a state-changing request is a POST from a form that carries a token, ``csrf``, equal to the
``ragloop_csrf`` cookie (random, set with the first page, HttpOnly, SameSite=Strict). Every POST here checks
it before anything else; without it (a plain POST, even with a valid key) the answer is 403. Another site
can neither read the cookie to copy it into a form nor make the browser send it on a cross-site request.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.monitoring import ab, alerts
from ragloop.serve import charts
from ragloop.serve.auth import Caller
from ragloop.serve.dashboard import dashboard_caller, login_redirect, render
from ragloop.store import aliases, experiments

CSRF_COOKIE = "ragloop_csrf"
CSRF_FIELD = "csrf"
FLASH_COOKIE = "ragloop_flash"

router = APIRouter(include_in_schema=False)


# Who may look, and the CSRF token ------------------------------------------------------------------------


def _csrf_token(request: Request) -> str:
    """The token of this browser: its cookie's, else a new one (set on the response by ``_page``)."""
    token = request.cookies.get(CSRF_COOKIE) or ""
    if len(token) < 32:
        token = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


def _csrf_ok(request: Request, form: Any) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    sent = str(form.get(CSRF_FIELD) or "")
    return len(cookie) >= 32 and hmac.compare_digest(cookie.encode(), sent.encode())


def _refusal(request: Request, message: str, status: int = 403) -> Response:
    if not hasattr(request.state, "caller"):  # render's navigation reads who is signed in
        request.state.caller = None
    return render(request, "dashboard/ab_refused.html", {"message": message}, status_code=status)


def _viewer(request: Request) -> Caller | Response:
    """The caller, or the response that refuses them: sign-in first, then an unscoped admin key."""
    who = dashboard_caller(request)
    if who is None:
        return login_redirect(request)
    if not who.admin or who.collections is not None:
        return _refusal(
            request,
            "Experiments and drift are aggregates over all the traffic of an alias: they need an admin key "
            "with no collection scope (ragloop keys create NAME --admin).",
        )
    return who


async def _post(request: Request) -> tuple[Any, Response | None]:
    """The form of a state-changing POST, or the response refusing it (bad CSRF token, wrong key)."""
    form = await request.form()
    if not _csrf_ok(request, form):
        return form, _refusal(request, "Missing or wrong CSRF token: reload the page and try again.")
    who = _viewer(request)
    if not isinstance(who, Caller):  # not signed in, or not an unscoped admin: nothing to redirect to
        return form, _refusal(request, "This needs an admin key with no collection scope.")
    return form, None


def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    flash = unquote(request.cookies.get(FLASH_COOKIE) or "") or None
    context = {"flash": flash, **context, "csrf": _csrf_token(request)}
    response = render(request, template, context, status_code=status)
    if flash:
        response.delete_cookie(FLASH_COOKIE)
    new = getattr(request.state, "new_csrf", None)
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", path="/")
    return response


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _assistant(request: Request) -> Any:
    return request.app.state.assistant


def _back(path: str, message: str | None = None) -> RedirectResponse:
    """Back to a page after an action; its outcome rides in a one-read cookie, not in the URL, where a
    crafted link could make a trusted page show any text."""
    response = RedirectResponse(path, status_code=303)
    if message:
        response.set_cookie(FLASH_COOKIE, quote(message[:500]), max_age=60, httponly=True, samesite="strict")
    return response


# Experiments ---------------------------------------------------------------------------------------------


def _start_form_context(request: Request) -> dict[str, Any]:
    versions = [(mv.id, names) for mv, names in aliases.list_models(_settings(request).db_url)]
    return {
        "versions": versions,
        "metrics": sorted(experiments.KNOWN_METRICS),
        "default_guardrails": list(experiments.DEFAULT_GUARDRAILS),
        "default_min_units": experiments.DEFAULT_MIN_UNITS,
    }


@router.get("/dashboard/experiments", response_class=HTMLResponse)
def experiments_page(request: Request) -> Response:
    who = _viewer(request)
    if not isinstance(who, Caller):
        return who
    rows = ab.list_all(_settings(request))
    return _page(
        request,
        "dashboard/ab_list.html",
        {"rows": rows, "form": {}, **_start_form_context(request)},
    )


@router.post("/dashboard/experiments", response_class=HTMLResponse)
async def experiment_start(request: Request) -> Response:
    form, refused = await _post(request)
    if refused is not None:
        return refused
    settings, assistant = _settings(request), _assistant(request)

    def start() -> dict[str, Any]:
        return ab.start(
            settings,
            candidate=str(form.get("candidate") or "").strip(),
            alias=str(form.get("alias") or aliases.DEFAULT_ALIAS).strip(),
            share=_float(form.get("share"), "share"),
            ramp=[_float(x, "ramp") for x in str(form.get("ramp") or "").replace(",", " ").split()],
            primary=str(form.get("primary") or "thumbs_up"),
            guardrails=[str(g) for g in form.getlist("guardrails")],
            min_units=int(_float(form.get("min_units") or experiments.DEFAULT_MIN_UNITS, "min_units")),
            max_days=_float(form.get("max_days"), "max_days") if form.get("max_days") else None,
            load=assistant.backend_for,
        )

    try:  # the candidate is loaded first (seconds): in a worker thread, the event loop stays free
        started = await anyio.to_thread.run_sync(start)
    except RagloopError as exc:
        rows = ab.list_all(settings)
        context = {"rows": rows, "error": str(exc), "form": dict(form), **_start_form_context(request)}
        return _page(request, "dashboard/ab_list.html", context, status=exc.status)
    return _back(f"/dashboard/experiments/{started['id']}", "Experiment started.")


def _float(value: Any, name: str) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise RagloopError(f"{name}: {value!r} is not a number.")
    return number


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.rstrip("Z"))


def _interval_chart(name: str, title: str, unit: str, snaps: list[dict[str, Any]], metric: str) -> Markup:
    """A metric's confidence sequence through the snapshots: the estimate of candidate − control at each
    check, its band, and 0. A check whose interval was still unbounded (an arm under the minimum units)
    has a point but no band there."""
    points, band = [], []
    for snap in snaps:
        interval = ((snap.get("metrics") or {}).get(metric) or {}).get("interval") or {}
        if interval.get("estimate") is None:
            continue
        at = _at(snap["at"])
        points.append((at, interval["estimate"]))
        if interval.get("lo") is not None and interval.get("hi") is not None:
            band.append((at, interval["lo"], interval["hi"]))
    return charts.line_chart(
        title,
        unit,
        [charts.Series("candidate − control", points)],
        x_label="check time (UTC)",
        band=charts.Band("confidence sequence", band),
        threshold=charts.Threshold("0 (no difference)", 0.0),
        name=name,
    )


def _limit_chart(name: str, title: str, unit: str, snaps: list[dict[str, Any]], metric: str) -> Markup:
    """A hard-limit guardrail through the snapshots: the candidate's value and the limit it was held to."""
    values, limits = [], []
    for snap in snaps:
        entry = (snap.get("metrics") or {}).get(metric) or {}
        value = (entry.get("candidate") or {}).get("value")
        if value is None:
            continue
        at = _at(snap["at"])
        values.append((at, value))
        limits.append((at, entry.get("limit")))
    series = [charts.Series("candidate", values)]
    if any(v is not None for _, v in limits):  # no legend entry for a limit that is drawn nowhere
        series.append(charts.Series("limit", limits, dashed=True))
    return charts.line_chart(title, unit, series, x_label="check time (UTC)", name=name)


_UNITS = {
    "latency_p50": "ms",
    "latency_p95": "ms",
    "answer_length": "characters",
    "rating": "points (1-5)",
    "cites": "citations per answer",
}


@router.get("/dashboard/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment_page(request: Request, experiment_id: str) -> Response:
    who = _viewer(request)
    if not isinstance(who, Caller):
        return who
    settings = _settings(request)
    try:
        report = ab.status(settings, experiment_id, kb=lambda: _assistant(request).kb)
    except RagloopError as exc:
        return _refusal(request, str(exc), exc.status)
    row = report["experiment"]
    snaps = ab.snapshots(settings, row["id"])
    primary = row["primary_metric"]
    unit = _UNITS.get(primary, "difference of shares")
    primary_chart = _interval_chart(
        "confidence-sequence",
        f"{primary}: candidate − control, with its confidence sequence",
        unit,
        snaps,
        primary,
    )
    guardrails = []
    for name in row.get("guardrails") or []:
        entry = report["metrics"][name]
        if entry.get("guardrail") == "limit":
            chart = _limit_chart(
                f"guardrail-{name}",
                f"{name}: the candidate against its limit",
                _UNITS.get(name, "share of requests"),
                snaps,
                name,
            )
        else:
            chart = _interval_chart(
                f"guardrail-{name}",
                f"{name}: candidate − control (guardrail)",
                _UNITS.get(name, "difference of shares"),
                snaps,
                name,
            )
        guardrails.append({"name": name, "entry": entry, "chart": chart})
    # Its alerts (a rollback, an end at the maximum duration) where someone looking at it will see them.
    raised = [
        a
        for a in alerts.list_alerts(settings, kind="guardrail", limit=500)
        if (a.get("data") or {}).get("experiment_id") == row["id"]
    ]
    # The checks that acted (ramp, rollback, stop), with the first and the latest for context.
    history = [snap for i, snap in enumerate(snaps) if snap.get("action") or i in (0, len(snaps) - 1)]
    context = {
        "row": row,
        "report": report,
        "snaps": snaps,
        "history": history,
        "alerts": raised,
        "primary_chart": primary_chart,
        "guardrails": guardrails,
    }
    return _page(request, "dashboard/ab_detail.html", context)


def _experiment_action(
    action: Callable[[Any, str, Any], Any],
) -> Callable[[Request, str], Any]:
    async def handler(request: Request, experiment_id: str) -> Response:
        form, refused = await _post(request)
        if refused is not None:
            return refused
        path = f"/dashboard/experiments/{quote(experiment_id)}"
        try:  # a promotion loads the candidate (seconds): in a worker thread
            message = await anyio.to_thread.run_sync(action, request, experiment_id, form)
        except RagloopError as exc:
            return _back(path, f"Refused: {exc}")
        return _back(path, message)

    return handler


def _stop(request: Request, experiment_id: str, form: Any) -> str:
    reason = str(form.get("reason") or "").strip() or "stopped from the dashboard"
    ab.stop(_settings(request), experiment_id, reason=reason, by="dashboard")
    return "Experiment stopped."


def _promote(request: Request, experiment_id: str, form: Any) -> str:
    moved = ab.promote(
        _settings(request), experiment_id, note="dashboard", load=_assistant(request).backend_for
    )
    release = moved["release"]
    return f"{release['alias']} now serves {release['model_version']}."


router.add_api_route(
    "/dashboard/experiments/{experiment_id}/stop",
    _experiment_action(_stop),
    methods=["POST"],
    response_class=HTMLResponse,
)
router.add_api_route(
    "/dashboard/experiments/{experiment_id}/promote",
    _experiment_action(_promote),
    methods=["POST"],
    response_class=HTMLResponse,
)


# Drift ---------------------------------------------------------------------------------------------------


def _signal_charts(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart per signal any report has (in the newest report's order first): its value in each report,
    oldest first, against the threshold of the newest report that has it. A report without enough data for
    a verdict adds no point, and does not hide the history before it."""
    newest: dict[str, dict[str, Any]] = {}
    for rep in reports:  # newest first
        for signal in rep.get("signals") or []:
            newest.setdefault(signal["name"], {**signal, "report_at": rep["created_at"]})
    out = []
    for name, latest in newest.items():
        points = []
        for rep in reversed(reports):
            found = next((s for s in rep.get("signals") or [] if s.get("name") == name), None)
            if found is not None and found.get("value") is not None:
                points.append((_at(rep["created_at"]), found["value"]))
        threshold = latest.get("threshold")
        chart = charts.line_chart(
            f"{name}: {latest.get('statistic', '')}",
            latest.get("statistic", ""),
            [charts.Series(name, points)],
            x_label="report time (UTC)",
            threshold=charts.Threshold("threshold", threshold) if threshold is not None else None,
            name=f"signal-{name}",
        )
        out.append({"signal": latest, "chart": chart})
    return out


def _histogram(reports: list[dict[str, Any]]) -> tuple[Markup | None, str | None]:
    """The reference vs current histogram of the newest report that has one, and that report's time."""
    for report in reports:
        hist = (report.get("histograms") or {}).get("retrieval_top1")
        if hist and hist.get("edges"):
            break
    else:
        return None, None
    return charts.histogram(
        "Dense score of the top passage: reference vs current",
        "share of questions",
        hist["edges"],
        [("reference", hist["reference"]), ("current", hist["current"])],
        x_label="cosine similarity of the top passage",
        name="retrieval-top1",
    ), report["created_at"]


@router.get("/dashboard/drift", response_class=HTMLResponse)
def drift_page(request: Request, alias: str | None = None) -> Response:
    who = _viewer(request)
    if not isinstance(who, Caller):
        return who
    from ragloop.monitoring import drift  # scipy and scikit-learn load with the first drift page, not the app

    settings = _settings(request)
    everything = drift.latest_reports(settings, limit=200)
    known = list(dict.fromkeys(r.get("alias") for r in everything if r.get("alias")))
    alias = alias or (known[0] if known else aliases.DEFAULT_ALIAS)
    reports = [r for r in everything if r.get("alias") == alias]
    latest = reports[0] if reports else None
    histogram, histogram_at = _histogram(reports)
    context = {
        "alias": alias,
        "aliases": known,
        "latest": latest,
        "reports": reports,
        "signals": _signal_charts(reports),
        "histogram": histogram,
        "histogram_at": histogram_at,
        "alerts": alerts.list_alerts(settings, limit=100),
    }
    return _page(request, "dashboard/drift_page.html", context)


@router.post("/dashboard/drift/run", response_class=HTMLResponse)
async def drift_run(request: Request) -> Response:
    form, refused = await _post(request)
    if refused is not None:
        return refused
    from ragloop.monitoring import drift

    alias = str(form.get("alias") or aliases.DEFAULT_ALIAS)
    settings, assistant = _settings(request), _assistant(request)
    try:  # seconds (embeddings, retrieval): in a worker thread, the event loop stays free
        report = await anyio.to_thread.run_sync(
            lambda: drift.run_drift(settings, alias=alias, kb=lambda: assistant.kb, source="dashboard")
        )
    except RagloopError as exc:
        return _back(f"/dashboard/drift?alias={quote(alias)}", f"Refused: {exc}")
    return _back(f"/dashboard/drift?alias={quote(alias)}", f"Drift check done: {report['verdict']}.")


@router.post("/dashboard/alerts/{alert_id}/ack", response_class=HTMLResponse)
async def alert_ack(request: Request, alert_id: int) -> Response:
    form, refused = await _post(request)
    if refused is not None:
        return refused
    try:
        await anyio.to_thread.run_sync(alerts.acknowledge, _settings(request), alert_id)
    except RagloopError as exc:
        return _back("/dashboard/drift", f"Refused: {exc}")
    back = str(form.get("next") or "")
    back = back if back.startswith("/dashboard/") else "/dashboard/drift"  # never off this site
    return _back(back, f"Alert {alert_id} acknowledged.")
