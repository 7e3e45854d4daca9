"""The dashboard's door: server-rendered pages over ``monitoring.dashboard`` (Overview, Models,
Interactions), with charts from ``serve.charts``.

Sign-in is the review UI's: the key sits in the same HttpOnly cookie (``serve.ui.COOKIE``), given once on a
login page, never in a URL. The dashboard takes the review queue's keys: an admin key, unscoped
(everything) or scoped to collections (only records, passages and aggregates of those:
``monitoring.dashboard.visible_to``). A user key, scoped or not, is refused: through the API it reads only
its own records, while the dashboard shows every user's questions (an end user signed in to the chat must
not read the others' conversations here). Its own login page exists because the review UI's sends people
to the review queue.

Other dashboard pages (``serve.dashboard_ab``: experiments, drift) reuse ``dashboard_caller``,
``login_redirect`` and ``render`` from here, so every page signs in, scopes and looks the same.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.monitoring.dashboard import (
    FEEDBACK_FILTERS,
    interaction_detail,
    models_view,
    overview,
    search_interactions,
)
from ragloop.serve import charts
from ragloop.serve.auth import OPEN, Caller, authenticate, same_origin
from ragloop.serve.ui import COOKIE, TEMPLATES

# The pages of the dashboard's own navigation, in order: (path, label).
PAGES = (
    ("/dashboard", "Overview"),
    ("/dashboard/models", "Models"),
    ("/dashboard/experiments", "Experiments"),
    ("/dashboard/drift", "Drift"),
    ("/dashboard/interactions", "Interactions"),
)


def dashboard_caller(request: Request) -> Caller | None:
    """Who is looking at the dashboard, or None (the page then redirects to the login): auth off lets
    everyone in as admin; otherwise an admin key, or a non-admin key scoped to collections, from the
    ``Authorization`` header or the sign-in cookie. Kept on ``request.state.caller`` for ``render``."""
    settings: Settings = request.app.state.settings
    if not getattr(request.app.state, "auth", False):
        who: Caller | None = OPEN
    else:
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        try:
            who = authenticate(settings.db_url, secret)
        except RagloopError:
            who = None
        if who is not None and not who.admin:
            who = None  # a user key reads only its own records through the API: no one else's questions here
    request.state.caller = who
    return who


def login_redirect(request: Request) -> RedirectResponse:
    """To the dashboard's login, coming back to this page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/dashboard/login?next={quote(target)}", status_code=303)


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A dashboard page (a template extending ``dashboard/layout.html``) with the navigation and who is
    signed in; ``dashboard_caller`` must have run for this request."""
    who: Caller | None = getattr(request.state, "caller", None)
    page = {
        "pages": PAGES,
        "path": request.url.path,
        "who": who,
        "scope": None if who is None else who.collections,
        "signed_in": bool(getattr(request.app.state, "auth", False)),
    }
    return TEMPLATES.TemplateResponse(request, template, {**page, **context}, status_code=status_code)


def _date(value: str | None, field: str, errors: list[str]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors.append(f"{field}: {value!r} is not a date (YYYY-MM-DD).")
        return None


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def dashboard_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    opened: list[Any] = []  # the knowledge base replays read, when the app has no assistant to lend its own

    def knowledge_base(request: Request) -> Any:
        assistant = getattr(request.app.state, "assistant", None)
        if assistant is not None:
            return assistant.kb
        if not opened:
            from ragloop.ingest.kb import KnowledgeBase

            opened.append(KnowledgeBase(settings))
        return opened[0]

    @router.get("/dashboard/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/dashboard", error: str | None = None) -> HTMLResponse:
        request.state.caller = None
        return render(request, "dashboard/login.html", {"next": next, "error": error},
                      status_code=400 if error else 200)  # fmt: skip

    @router.post("/dashboard/login")
    def login(request: Request, key: str = Form(...), next: str = Form("/dashboard")) -> Response:
        # Login CSRF: another site must not sign this browser in with a key of its choosing (the person
        # would then read, and act on, that key's view of the records).
        if not same_origin(request):
            request.state.caller = None
            return render(request, "dashboard/login.html",
                          {"next": "/dashboard", "error": "Sign in from this server's own page."}, status_code=403)  # fmt: skip
        try:
            who = authenticate(settings.db_url, key)
        except RagloopError as exc:
            return login_page(request, next, str(exc))
        if not who.admin:
            return login_page(
                request, next, "The dashboard needs an admin key (scoped to collections or not)."
            )
        # Only back into the dashboard: a login link must not send people to another site.
        target = (
            next
            if next.startswith("/dashboard") and not next.startswith("/dashboard/login")
            else "/dashboard"
        )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return response

    @router.get("/dashboard/logout")
    def logout() -> Response:
        response = RedirectResponse("/dashboard/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @router.get("/dashboard", response_class=HTMLResponse)
    def overview_page(request: Request, days: int = 30) -> Response:
        who = dashboard_caller(request)
        if who is None:
            return login_redirect(request)
        days = max(1, min(days, 365))
        data = overview(settings, days=days, collections=who.collections)
        x_label = "day (UTC)"
        requests = charts.line_chart(
            "Requests per day, per model version", "requests",
            [charts.Series(version, points) for version, points in data["requests"].items()],
            x_label=x_label, name="requests",
        )  # fmt: skip
        latency = charts.line_chart(
            "Latency per day (all versions)", "ms",
            [charts.Series("p50", [(d, p50) for d, _, p50, _ in data["latency"]]),
             charts.Series("p95", [(d, p95) for d, _, _, p95 in data["latency"]], dashed=True)],
            x_label=x_label, name="latency",
        )  # fmt: skip
        feedback = charts.line_chart(
            "Feedback rates per day", "% of answers",
            [charts.Series("thumbs down (of rated)", [(d, _pct(r)) for d, r, _, _, _ in data["feedback"]]),
             charts.Series("corrected (of reviewed)", [(d, _pct(r)) for d, _, r, _, _ in data["feedback"]])],
            x_label=x_label, name="feedback", y_max=100,
        )  # fmt: skip
        verified = charts.line_chart(
            "Citation-verified share per day", "% of answers",
            [charts.Series("verified (abstentions aside)", [(d, _pct(r)) for d, r, _ in data["verified"]])],
            x_label=x_label, name="verified", y_max=100,
        )  # fmt: skip
        return render(request, "dashboard/overview.html",
                      {"data": data, "charts": [requests, latency, feedback, verified]})  # fmt: skip

    @router.get("/dashboard/models", response_class=HTMLResponse)
    def models_page(
        request: Request,
        metric: str | None = None,
        dataset: str | None = None,
        a: str | None = None,
        b: str | None = None,
    ) -> Response:
        who = dashboard_caller(request)
        if who is None:
            return login_redirect(request)
        data = models_view(settings, metric=metric or None, dataset=dataset or None, a=a or None, b=b or None,
                           collections=who.collections)  # fmt: skip
        m = data["metric"]
        across = charts.bar_chart(
            f"{m} across model versions", m,
            [charts.Series(label, points) for label, points in data["across"].items()],
            x_label="model version (newest run per condition)", name="metric-across-versions",
        )  # fmt: skip
        # One colour per version; its gold-removed runs dashed, with hollow points, in the same colour.
        order = list(dict.fromkeys(label.split(" · ")[0] for label in data["robustness"]))
        robustness = charts.line_chart(
            f"Robustness: {m} against the number of distractors (hollow: gold removed)", m,
            [charts.Series(label, points, dashed=label.endswith("gold removed"),
                           colour=charts.PALETTE[order.index(label.split(" · ")[0]) % len(charts.PALETTE)])
             for label, points in data["robustness"].items()],
            x_label="distractors shown (k; 0 = gold alone)", name="robustness",
        )  # fmt: skip
        return render(request, "dashboard/models.html",
                      {"data": data, "across": across, "robustness": robustness, "a": a, "b": b})  # fmt: skip

    @router.get("/dashboard/interactions", response_class=HTMLResponse)
    def interactions_page(
        request: Request,
        text: str | None = None,
        model: str | None = None,
        since: str | None = None,
        until: str | None = None,
        feedback: str | None = None,
        page: int = 1,
        before: str | None = None,
    ) -> Response:
        who = dashboard_caller(request)
        if who is None:
            return login_redirect(request)
        errors: list[str] = []
        start, end = _date(since, "since", errors), _date(until, "until", errors)
        if feedback and feedback not in FEEDBACK_FILTERS:
            errors.append(f"feedback: one of {', '.join(FEEDBACK_FILTERS)}.")
            feedback = None
        try:  # where an older stretch of a text search starts (``search_interactions``)
            stretch_end = datetime.fromisoformat(before) if before else None
        except ValueError:
            errors.append(f"before: {before!r} is not a date and time.")
            stretch_end = None
        page = max(1, page)
        per_page = 50
        found = search_interactions(
            settings, text=text or None, model=model or None,
            since=datetime.combine(start, time()) if start else None,
            until=datetime.combine(end + timedelta(days=1), time()) if end else None,  # the whole last day
            feedback=feedback or None, collections=who.collections,
            limit=per_page, offset=(page - 1) * per_page, before=stretch_end,
        )  # fmt: skip
        query = {k: v for k, v in {"text": text, "model": model, "since": since, "until": until,
                                   "feedback": feedback, "before": before}.items() if v}  # fmt: skip
        links = {
            "prev": f"?{urlencode({**query, 'page': page - 1})}" if page > 1 else None,
            "next": f"?{urlencode({**query, 'page': page + 1})}" if found["has_more"] else None,
            "older": f"?{urlencode({**query, 'before': found['older_before'].isoformat()})}"
            if found["older_before"] is not None
            else None,
        }
        return render(request, "dashboard/interactions.html",
                      {"found": found, "q": query, "page": page, "links": links, "errors": errors,
                       "feedback_filters": FEEDBACK_FILTERS})  # fmt: skip

    @router.get("/dashboard/interactions/{interaction_id}", response_class=HTMLResponse)
    def interaction_page(request: Request, interaction_id: str) -> Response:
        who = dashboard_caller(request)
        if who is None:
            return login_redirect(request)
        # Out of scope answers 404 like a missing record, so ids cannot be probed.
        data = interaction_detail(
            settings, interaction_id, collections=who.collections, kb=knowledge_base(request)
        )
        if data is None:
            return render(
                request, "dashboard/missing.html", {"interaction_id": interaction_id}, status_code=404
            )
        return render(request, "dashboard/interaction.html", {"data": data})

    return router


__all__ = ["PAGES", "dashboard_caller", "dashboard_router", "login_redirect", "render"]
