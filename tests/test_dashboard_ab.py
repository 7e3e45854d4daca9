"""The dashboard's Experiments and Drift pages in a real headless Chromium (Debian's), driven by Playwright,
over a real server with API keys on.

Experiments: an experiment started with ``monitoring.ab.start`` and checked three times by ``ab.check`` (the
server's periodic check, called directly so the number of snapshots is known) on interactions written
straight into the database, as tests/test_ab.py does. Its page draws one point per snapshot in the primary
metric's confidence-sequence chart, shows the decision, and its buttons stop it, start another and promote
that one's candidate (a real LoRA adapter, loaded by the server). Drift: reports seeded as DriftReport rows in
the report format of ``monitoring.drift``, and an alert raised with ``monitoring.alerts``.

Refusals go through plain HTTP: a POST without the form's CSRF token is 403 even with an admin key, and a
non-admin or collection-scoped key is refused the pages and the buttons.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LiveServer
from ragloop.config import Settings
from ragloop.monitoring import ab, alerts, drift
from ragloop.serve.dashboard_ab import CSRF_COOKIE, CSRF_FIELD
from ragloop.serve.ui import COOKIE
from ragloop.store.db import session_scope
from ragloop.store.keys import create_key
from ragloop.store.models import Alert, DriftReport, Experiment, ModelAlias, utcnow
from test_ab import serve
from test_lineage import register_adapter
from test_review_ui import browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.browser

# Keys on; the server's own periodic A/B and drift checks out of the way, so the test knows every snapshot
# and report there is.
QUIET = {"ab": {"check_interval_s": 3600.0}, "drift": {"aliases": []}, "server": {"auth": "on"}}


def keys(settings: Settings) -> dict[str, str]:
    with session_scope(settings.db_url) as s:
        return {
            "admin": create_key(s, "ops", admin=True)[1],
            "scoped": create_key(s, "handbook-admin", admin=True, collections=["handbook"])[1],
            "reader": create_key(s, "reader")[1],
        }


def signed_in(browser, server: LiveServer, secret: str, path: str, errors: list[str]):  # noqa: F811
    """A page at ``path``, signed in through the dashboard's login it is sent to, recording console errors
    and uncaught exceptions."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.goto(f"{server.url}{path}")
    assert "/dashboard/login" in page.url
    page.fill("input[name=key]", secret)
    page.click("button.primary")
    page.wait_for_url(f"{server.url}{path}")
    return page


def shot(page, name: str) -> None:
    if os.environ.get("RAGLOOP_SCREENSHOTS"):  # keep them to look at: RAGLOOP_SCREENSHOTS=/tmp/shots
        folder = Path(os.environ["RAGLOOP_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)


def session_client(server: LiveServer, secret: str | None) -> httpx.Client:
    """A client holding the sign-in cookie (as the browser does) and a CSRF cookie of its own."""
    client = server.client(follow_redirects=False)
    if secret:
        client.cookies.set(COOKIE, secret)
    client.cookies.set(CSRF_COOKIE, "t" * 43)
    return client


def status_of(settings: Settings, experiment_id: str) -> str:
    with session_scope(settings.db_url) as s:
        return s.get(Experiment, experiment_id).status


def seed_experiment(settings: Settings, candidate: str) -> str:
    """An experiment on production whose candidate writes longer answers, checked after each of three
    batches of units: three snapshots, the first before the arms have the units a bounded interval needs."""
    exp = ab.start(
        settings, candidate=candidate, share=0.5, primary="answer_length", guardrails=["latency_p95"],
        min_units=60, load=lambda version: None,
    )["id"]  # fmt: skip
    start = 0
    for size in (10, 25, 30):
        units = range(start, start + size)
        for k in range(5):  # answers of a few lengths per arm, so each arm's values vary
            serve(
                settings,
                exp,
                "control",
                [n for n in units if n % 5 == k],
                answer="Twenty-five days." + " x" * k,
            )
        for k in range(7):
            serve(settings, exp, "candidate", [n for n in units if n % 7 == k],
                  answer="Twenty-five days of paid leave." + " y" * k)  # fmt: skip
        start += size
        ab.check(settings, exp)
    return exp


def test_experiments_pages_show_the_sequence_and_decision_and_the_buttons_work(
    home: Settings,
    tmp_path: Path,
    start_server: Callable[..., LiveServer],
    browser,  # noqa: F811
) -> None:
    server = start_server(home, **QUIET)
    settings = server.settings
    secret = keys(settings)
    candidate = register_adapter(settings, tmp_path, 1, name="v").id
    exp = seed_experiment(settings, candidate)
    snaps = ab.snapshots(settings, exp)
    with_estimate = [s for s in snaps if s["metrics"]["answer_length"]["interval"]["estimate"] is not None]
    assert len(snaps) == 3 and len(with_estimate) == 3

    # A guardrail alert of this experiment (the check raises one when it rolls back) is shown on its page.
    raised = alerts.raise_alert(settings, "guardrail", f"experiment {exp}", "Candidate rolled back: test",
                                {"experiment_id": exp}, severity="critical")  # fmt: skip

    errors: list[str] = []
    page = signed_in(browser, server, secret["admin"], "/dashboard/experiments", errors)
    row = page.locator(f"tr[data-experiment='{exp}']")
    assert row.locator(".status").inner_text() == "running"
    page.click(f"tr[data-experiment='{exp}'] a")
    page.wait_for_selector("#ab-panel")
    chart = page.locator("svg.chart[data-chart='confidence-sequence']")
    assert chart.locator("g.series[data-series='candidate − control']").get_attribute("data-points") == "3"
    assert chart.locator("circle.pt").count() == 3
    assert (
        chart.locator("g.band").get_attribute("data-points") == "2"
    )  # the first check had < 30 units an arm
    assert chart.locator("g.threshold").get_attribute("data-y") == "0.0"
    last = snaps[-1]["metrics"]["answer_length"]["interval"]["estimate"]
    assert float(chart.locator("circle.pt").last.get_attribute("data-y")) == pytest.approx(last)
    assert page.inner_text("#status") == "running"
    # The decision: the candidate's answers are longer (worse for answer_length), and 130 units passed the 60.
    assert "worse" in page.inner_text("#verdict")
    assert page.locator("svg.chart[data-chart='guardrail-latency_p95'] g.series circle.pt").count() == 3
    assert page.locator("#srm .srm-p").count() == 1
    assert "Candidate rolled back" in page.inner_text(f"#alerts tr[data-alert='{raised.id}']")
    shot(page, "dashboard-experiment.png")

    # Refused: no CSRF token (a plain POST, even with the admin key), a non-admin key, a scoped admin key.
    with server.client(secret["admin"], follow_redirects=False) as plain:
        assert plain.post(f"/dashboard/experiments/{exp}/stop").status_code == 403
        assert (
            plain.post(f"/dashboard/experiments/{exp}/stop", data={CSRF_FIELD: "guess" * 9}).status_code
            == 403
        )
    with session_client(server, secret["admin"]) as c:
        assert c.post(f"/dashboard/experiments/{exp}/stop", data={CSRF_FIELD: "u" * 43}).status_code == 403
    for who in ("reader", "scoped", None):
        with session_client(server, secret[who] if who else None) as c:
            assert (
                c.post(f"/dashboard/experiments/{exp}/stop", data={CSRF_FIELD: "t" * 43}).status_code == 403
            )
            assert (
                c.post(f"/dashboard/experiments/{exp}/promote", data={CSRF_FIELD: "t" * 43}).status_code
                == 403
            )
            # A user key is not signed in to the dashboard at all; a scoped admin key is, but not here.
            for path in (f"/dashboard/experiments/{exp}", "/dashboard/experiments"):
                response = c.get(path)
                assert response.status_code == (403 if who == "scoped" else 303), (who, path)
                assert exp not in response.text
    assert status_of(settings, exp) == "running"

    # Stop from the page.
    page.fill("#stop-form input[name=reason]", "seen enough")
    with page.expect_navigation():  # the redirect back lands on a fresh page
        page.click("#stop")
    assert page.inner_text("#flash") == "Experiment stopped."
    assert page.inner_text("#status") == "stopped" and status_of(settings, exp) == "stopped"
    assert "seen enough" in page.inner_text("#reason")
    assert page.locator("#stop").count() == 0 and page.locator("#promote").count() == 0
    page.reload()  # the outcome is shown once, and is in no URL a link could carry
    assert page.locator("#flash").count() == 0 and "flash" not in page.url

    # Start another from the list's form, then promote its candidate from its page.
    page.goto(f"{server.url}/dashboard/experiments")
    page.select_option("#candidate", candidate)
    page.fill("#share", "0.3")
    with page.expect_navigation():
        page.click("#start")
    second = re.search(r"/dashboard/experiments/([0-9a-f]+)", page.url).group(1)
    assert second != exp and status_of(settings, second) == "running"
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.click("#promote")
    assert page.inner_text("#flash") == f"production now serves {candidate}."
    assert page.inner_text("#status") == "promoted" and status_of(settings, second) == "promoted"
    with session_scope(settings.db_url) as s:
        assert s.get(ModelAlias, "production").model_version_id == candidate
    page.goto(f"{server.url}/dashboard/experiments")
    shot(page, "dashboard-experiments.png")
    assert [r.inner_text() for r in page.locator("#experiments td.status").all()] == ["promoted", "stopped"]
    assert errors == []
    page.close()


def report(n: int, created, *, auc: float, verdict: str) -> dict[str, Any]:
    """A drift report in ``monitoring.drift``'s format (the contract of docs/drift.md)."""

    def signal(name: str, statistic: str, value: float, threshold: float, v: str) -> dict[str, Any]:
        return {"name": name, "statistic": statistic, "value": value, "threshold": threshold,
                "threshold_source": "Evidently's default", "verdict": v, "n_reference": 200, "n_current": 80,
                "details": {}}  # fmt: skip

    return {
        "id": f"r{n}",
        "created_at": created.isoformat() + "Z",
        "alias": "production",
        "model_version": "v",
        "embedder": "minilm",
        "kb_version_trained": "kb-v1",
        "kb_version_now": "kb-v3",
        "reference": {"dataset_id": "ds", "n_questions": 200, "kb_version": "kb-v1"},
        "window": {"since": created.isoformat(), "until": created.isoformat(), "last_n": None, "n": 80},
        "verdict": verdict,
        "signals": [
            signal("query_domain", "ROC AUC of a domain classifier", auc, 0.55, verdict),
            signal("retrieval_top1", "KS p-value", 0.2 - 0.05 * n, 0.05, "ok"),
        ],
        "histograms": {
            "retrieval_top1": {
                "edges": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                "reference": [1, 4, 20, 50, 25],
                "current": [5, 20, 30, 20, 5],
            }
        },
        "coverage": {
            "uncovered_share": 0.3,
            "threshold_score": 0.41,
            "topics": [{"label": "crypto wallets", "n": 12, "examples": ["How do I reset my wallet seed?"]}],
        },
        "kb_changes": {
            "added": 3,
            "replaced": 2,
            "removed": 1,
            "training_examples": 40,
            "gold_changed": 6,
            "gold_deleted": 2,
            "share": 0.2,
            "changed_documents": [{"doc_id": "d1", "source_path": "vacation.md", "change": "replaced"}],
        },
        "recommendation": {
            "retrain": verdict == "drift",
            "reasons": ["query drift"],
            "commands": ["ragloop datasets build --from ds", "ragloop train sft --dataset NEW"],
        },
        "not_enough_data": False,
    }


def test_drift_page_draws_stored_reports_and_alerts_are_acknowledged(
    home: Settings,
    start_server: Callable[..., LiveServer],
    browser,  # noqa: F811
) -> None:
    server = start_server(home, **QUIET)
    settings = server.settings
    secret = keys(settings)
    now = utcnow()
    with session_scope(settings.db_url) as s:
        for n, (auc, verdict) in enumerate([(0.5, "ok"), (0.58, "warn"), (0.81, "drift")]):
            created = now - timedelta(hours=3 - n)
            data = report(n, created, auc=auc, verdict=verdict)
            s.add(DriftReport(id=data["id"], created_at=created, alias="production", model_version="v",
                              embedder="minilm", window=data["window"], verdict=verdict,
                              retrain=verdict == "drift", report=data, source="server"))  # fmt: skip
    alert = alerts.raise_alert(settings, "drift", "production", "Query drift on production: AUC 0.81 > 0.55")
    assert alert is not None

    errors: list[str] = []
    page = signed_in(browser, server, secret["admin"], "/dashboard/drift", errors)
    page.wait_for_selector("#signals")
    domain = page.locator("svg.chart[data-chart='signal-query_domain']")
    assert domain.locator("g.series").get_attribute("data-points") == "3"
    assert [float(c.get_attribute("data-y")) for c in domain.locator("circle.pt").all()] == [0.5, 0.58, 0.81]
    assert domain.locator("g.threshold").get_attribute("data-y") == "0.55"
    assert page.locator("svg.chart[data-chart='signal-retrieval_top1'] circle.pt").count() == 3
    hist = page.locator("svg.chart[data-chart='retrieval-top1']")
    assert [g.get_attribute("data-series") for g in hist.locator("g.series").all()] == [
        "reference",
        "current",
    ]
    assert hist.locator("g.series[data-series='current'] rect.pt").count() == 5
    assert "drift" in page.inner_text("#drift-summary") and "Retraining recommended" in page.inner_text(
        "#recommendation"
    )
    assert "vacation.md" in page.inner_text("#kb-changes") and "crypto wallets" in page.inner_text(
        "#coverage"
    )
    shot(page, "dashboard-drift.png")

    # The scoped key and the reader see nothing of it; a POST without the token acknowledges nothing.
    for who in ("reader", "scoped"):
        with session_client(server, secret[who]) as c:
            response = c.get("/dashboard/drift")
            assert response.status_code == (403 if who == "scoped" else 303) and "wallet" not in response.text
            assert c.post(f"/dashboard/alerts/{alert.id}/ack", data={CSRF_FIELD: "t" * 43}).status_code == 403
    with server.client(secret["admin"]) as plain:
        assert plain.post(f"/dashboard/alerts/{alert.id}/ack").status_code == 403
        assert plain.post("/dashboard/drift/run", data={"alias": "production"}).status_code == 403
    assert len(drift.latest_reports(settings)) == 3
    with session_scope(settings.db_url) as s:
        assert s.get(Alert, alert.id).acknowledged_at is None

    with page.expect_navigation():
        page.click(f"tr[data-alert='{alert.id}'] button.ack")
    assert "acknowledged" in page.inner_text(f"tr[data-alert='{alert.id}']")
    with session_scope(settings.db_url) as s:
        assert s.get(Alert, alert.id).acknowledged_at is not None

    # Run a check now: a report of the served version is computed in the server and stored.
    with page.expect_navigation(timeout=60_000):
        page.click("#run-drift")
    assert "Drift check done" in page.inner_text("#flash")
    newest = drift.latest_reports(settings, limit=1)[0]
    assert newest["source"] == "dashboard" and len(drift.latest_reports(settings)) == 4
    # A newer report without enough data for a verdict does not hide the signals' history.
    assert page.locator("svg.chart[data-chart='signal-query_domain'] circle.pt").count() >= 3
    assert errors == []
    page.close()


def test_a_guardrail_chart_draws_its_limit_only_when_it_has_one() -> None:
    """A hard-limit guardrail with no limit set (an experiment started without one) drew a 'limit' legend
    entry with no line anywhere; with a limit, both series are drawn."""
    from ragloop.serve.dashboard_ab import _limit_chart

    def snaps(limit: float | None) -> list[dict[str, Any]]:
        return [{"at": f"2026-01-01T10:0{i}:00Z",
                 "metrics": {"latency_p95": {"candidate": {"value": 100.0 + i}, "limit": limit}}}
                for i in range(3)]  # fmt: skip

    def series(svg: str) -> list[tuple[str, str]]:
        return re.findall(r'<g class="series" data-series="([^"]+)" data-points="(\d+)"', svg)

    assert series(str(_limit_chart("g", "p95", "ms", snaps(None), "latency_p95"))) == [("candidate", "3")]
    assert series(str(_limit_chart("g", "p95", "ms", snaps(500.0), "latency_p95"))) == [
        ("candidate", "3"),
        ("limit", "3"),
    ]
