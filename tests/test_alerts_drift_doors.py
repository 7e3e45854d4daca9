"""Issue 18, the doors: alerts (webhook, dedupe, guardrail rollbacks), ``ragloop drift`` / ``ragloop alerts``,
``/api/drift`` and ``/api/alerts``, and the server's periodic drift check.

The webhook receiver is a small HTTP server started here, at the machine's edge; everything else is real (the
database on SQLite and PostgreSQL, the CLI through Typer's runner, the app over a socket).
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import LiveServer, with_overrides
from ragloop.cli.main import app
from ragloop.config import Settings
from ragloop.monitoring import ab, alerts
from ragloop.monitoring.drift import latest_reports
from ragloop.store.db import session_scope
from ragloop.store.keys import create_key
from ragloop.store.models import (
    Interaction,
    ModelAlias,
    ModelVersion,
    Passage,
    PeriodicTask,
    RegistryEvent,
    utcnow,
)
from test_ab import serve, start, versions_home  # noqa: F401 - the fixture is used by name

TOKEN = "T0KEN-s3cret-hook"
QUESTION = "Can my employer read the private e-mails of Ms. Jane Roe?"


# The machine's edge: a webhook receiver -------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint on loopback: records what it is sent and answers ``status``."""

    url: str
    status: int = 200
    received: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.received.append((self.path, body))
            self.send_response(got.status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # A token in the path and the query, as Slack's and others' hooks carry one.
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/{TOKEN}?token={TOKEN}"
    yield got
    server.shutdown()
    server.server_close()


def webhook(settings: Settings, url: str) -> Settings:
    return with_overrides(settings, alerts={"webhook_url": url, "webhook_timeout_s": 5.0})


# Alerts -----------------------------------------------------------------------------------------------------


def test_the_webhook_gets_the_alert_without_texts_and_the_url_is_never_logged(
    home: Settings, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = webhook(home, receiver.url)
    data = {"auc": 0.81, "n_current": 40, "verdict": "drift", "model_version": "v-7",
            "examples": [QUESTION], "topics": [{"label": QUESTION, "n": 3}]}  # fmt: skip
    alert = alerts.raise_alert(settings, "drift", "production", "Query drift: ROC AUC 0.81 > 0.55", data,
                               severity="warn", dedupe_key="drift:production:v-7")  # fmt: skip
    assert alert is not None and alerts.wait_for_deliveries(10)

    (path, body), = receiver.received  # fmt: skip
    assert TOKEN in path  # delivered to the URL as configured
    sent = json.loads(body)
    assert {k: sent[k] for k in ("id", "kind", "severity", "subject", "link")} == {
        "id": alert.id, "kind": "drift", "severity": "warn", "subject": "production", "link": "/dashboard/drift"
    }  # fmt: skip
    assert sent["message"] == "Query drift: ROC AUC 0.81 > 0.55" and sent["created_at"].endswith("Z")
    # Numbers, verdicts and identifiers go; texts (a question under any key) stay on the machine.
    assert sent["data"] == {"auc": 0.81, "n_current": 40, "verdict": "drift", "model_version": "v-7",
                            "examples": [], "topics": [{"n": 3}]}  # fmt: skip
    assert "Jane Roe" not in body.decode()

    (row,) = alerts.list_alerts(settings)
    assert row["delivered_at"] and row["delivery_error"] is None and row["data"]["examples"] == [QUESTION]
    # httpx logs every request's URL at INFO: masked, token gone from every record.
    assert TOKEN not in caplog.text
    assert "<alerts.webhook_url>" in caplog.text

    # Dedupe: the condition is open, raising it again does nothing; acknowledged, it may be raised anew.
    again = alerts.raise_alert(settings, "drift", "production", "Query drift again", data,
                               dedupe_key="drift:production:v-7")  # fmt: skip
    assert again is None and len(alerts.list_alerts(settings)) == 1
    other = alerts.raise_alert(
        settings, "drift", "staging", "Coverage gap", {}, dedupe_key="drift:staging:v-2"
    )
    assert other is not None
    assert alerts.acknowledge(settings, alert.id)["acknowledged_at"]
    assert [a["id"] for a in alerts.list_alerts(settings, unacknowledged=True)] == [other.id]
    reopened = alerts.raise_alert(settings, "drift", "production", "Query drift, still", data,
                                  dedupe_key="drift:production:v-7")  # fmt: skip
    assert reopened is not None and reopened.id > other.id
    assert alerts.wait_for_deliveries(10) and len(receiver.received) == 3


def test_a_failing_webhook_is_recorded_on_the_alert_and_nothing_is_lost(
    home: Settings, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.status = 500
    settings = webhook(home, receiver.url)
    first = alerts.raise_alert(settings, "drift", "production", "Retrieval drift", {"ks_p": 0.001})
    # An endpoint that is not there at all: the port of a closed server.
    closed = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    closed.server_close()
    unreachable = f"http://127.0.0.1:{closed.server_address[1]}/hooks/{TOKEN}"
    second = alerts.raise_alert(webhook(home, unreachable), "guardrail", "experiment e1", "Rolled back", {})
    assert first and second and alerts.wait_for_deliveries(10)

    rows = {a["id"]: a for a in alerts.list_alerts(settings)}
    assert rows[first.id]["delivery_error"] == "the webhook answered HTTP 500"
    assert rows[second.id]["delivery_error"].startswith("ConnectError")
    assert rows[first.id]["delivered_at"] is None and rows[second.id]["message"] == "Rolled back"
    assert TOKEN not in rows[second.id]["delivery_error"] and TOKEN not in caplog.text
    assert "webhook delivery failed" in caplog.text


def test_a_guardrail_rollback_and_a_maximum_duration_end_raise_alerts(
    versions_home: Settings,  # noqa: F811 - the fixture imported from test_ab
    receiver: Receiver,
) -> None:
    settings = webhook(versions_home, receiver.url)
    exp = start(settings, guardrails=["latency_p95"])
    serve(settings, exp, "control", range(100), latency=100.0)
    serve(settings, exp, "candidate", range(100), latency=400.0)
    assert ab.check(settings, exp)["action"] == "rollback"
    assert alerts.wait_for_deliveries(10)

    (alert,) = alerts.list_alerts(settings, kind="guardrail")
    assert alert["severity"] == "critical" and alert["subject"] == f"experiment {exp} on production"
    assert alert["message"].startswith("Candidate rolled back: guardrail: latency_p95")
    assert alert["link"] == f"/dashboard/experiments/{exp}" and alert["delivered_at"]
    assert alert["data"]["arms"]["candidate"] == {"units": 100, "interactions": 100, "errors": 0}
    (_, body), = receiver.received  # fmt: skip
    assert json.loads(body)["data"]["experiment_id"] == exp

    # An experiment past its maximum duration ends and says so, as information.
    exp = start(settings, guardrails=[], max_days=1e-9)
    assert ab.check(settings, exp)["action"] == "stop"
    ended = alerts.list_alerts(settings, kind="guardrail")[0]
    assert (ended["severity"], ended["data"]["experiment_id"]) == ("info", exp)
    assert ended["message"].startswith("Experiment ended: ran its maximum")


# Drift through the doors --------------------------------------------------------------------------------------

HR = ["vacation days", "sick leave", "parental leave", "overtime pay", "remote work", "notice period",
      "expense claims", "health insurance", "training budget", "public holidays"]  # fmt: skip
WHO = ["part-time staff", "new employees", "managers", "contractors"]
SCIENCE = ["boiling point", "atomic mass", "melting point", "density", "half-life", "electron count",
           "crystal structure", "discovery year", "isotope count", "valence"]  # fmt: skip
ELEMENTS = ["mercury", "argon", "tungsten", "cobalt", "xenon", "bismuth", "iridium", "lithium"]


def live(settings: Settings, version: str, questions: list[str], start: datetime, score: float) -> None:
    """Live interactions of ``version``, a minute apart from ``start``, each showing one passage of dense
    score about ``score`` (as the retriever records it)."""
    with session_scope(settings.db_url) as s:
        for i, q in enumerate(questions):
            s.add(Interaction(
                created_at=start + timedelta(minutes=i), conversation_id=f"c-{start:%d%H}-{i}", turn_index=0,
                source="api", messages=[{"role": "user", "content": q}], thread_sha256="t" * 64,
                retrieval_query=q, template_id="cited-answer", template_version=1, prompt_sha256="p" * 64,
                model_version=version, model_alias="production", gen_params={}, answer="An answer [1].",
                citations=[{"n": 1, "valid": True}],
                passages=[Passage(rank=1, chunk_id=f"ch{i}", doc_id="d", collection="handbook",
                                  source_path="handbook.md", text_sha256="h" * 64, kb_version=1,
                                  score=0.03, score_dense=score + 0.002 * (i % 10))],
            ))  # fmt: skip


@pytest.fixture
def drifted(home: Settings) -> Settings:
    """A home whose production (``v1``, no training dataset: its reference is the first window after its
    promotion 20 days ago) was asked HR questions then, and chemistry questions this week, with worse
    retrieval scores."""
    # Small windows keep the test quick (embedding is its cost): judged from 12 records on, not 30.
    with (home.home / "ragloop.toml").open("a") as toml:
        toml.write("\n[drift]\nmin_records = 12\n")
    home = with_overrides(home, drift={"min_records": 12})
    promoted = utcnow() - timedelta(days=20)
    with session_scope(home.db_url) as s:
        s.add(ModelVersion(id="v1", base_model="tiny", base_hash="h"))
        s.flush()
        s.add(ModelAlias(name="production", model_version_id="v1"))
        s.add(RegistryEvent(created_at=promoted, action="promote", alias="production", model_version_id="v1"))
    then = [f"How do {w} claim {t}?" for t, w in zip(HR * 2, WHO * 5, strict=True)]
    now = [f"What is the {p} of {e}?" for p, e in zip(SCIENCE * 2, ELEMENTS * 3, strict=False)]
    live(home, "v1", then, promoted + timedelta(hours=1), score=0.78)
    live(home, "v1", now, utcnow() - timedelta(days=2), score=0.31)
    return home


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, [*args, "--home", str(settings.home)])


def test_ragloop_drift_prints_the_signals_and_exits_3_on_drift(
    drifted: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(drifted, "drift", "--window", "7d", "--json")
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "drift" and report["model_version"] == "v1" and report["window"]["n"] == 20
    signals = {s["name"]: s for s in report["signals"]}
    assert signals["query_domain"]["verdict"] == "drift" and signals["retrieval_top1"]["verdict"] == "drift"
    # Stored, and the verdict raised one alert (through the same function as the server's check).
    assert [r["id"] for r in latest_reports(drifted)] == [report["id"]]
    assert [a["kind"] for a in alerts.list_alerts(drifted)] == ["drift"]

    table = cli(drifted, "drift", "--model", "v1", "--window", "168h")
    assert table.exit_code == 3, table.output
    assert "query_domain" in table.stdout and "retrieval_top1" in table.stdout and "drift" in table.stdout
    # Each signal's statistic is shown, in an 80-column terminal too (COLUMNS=80, set by the test).
    signals_table = table.stdout.split("└")[0]  # the reasons below the table quote statistics too
    assert "ROC AUC of a domain" in signals_table and "normed Wasserstein" in signals_table
    assert max(map(len, table.stdout.splitlines())) <= 80
    # The last 40 records hold both weeks: the reference window (the first after promotion, as long as the
    # current one) has nothing before them, so no verdict yet.
    early = cli(drifted, "drift", "--window", "40", "--json")
    assert early.exit_code == 0, early.output
    assert json.loads(early.stdout)["verdict"] == "not enough data"
    assert json.loads(early.stdout)["window"] == {**json.loads(early.stdout)["window"], "last_n": 40, "n": 40}
    assert cli(drifted, "drift", "--window", "7 weeks").exit_code == 2  # a usage error
    assert cli(drifted, "drift", "--model", "nope").exit_code == 1  # an error, named

    listed = cli(drifted, "alerts")
    assert listed.exit_code == 0 and "critical · drift · production · open" in listed.stdout, listed.output
    (alert,) = json.loads(cli(drifted, "alerts", "--json").stdout)
    assert cli(drifted, "alerts", "--ack", str(alert["id"])).exit_code == 0
    assert json.loads(cli(drifted, "alerts", "--open", "--json").stdout) == []
    assert cli(drifted, "alerts", "--ack", "999").exit_code == 1


def test_the_drift_and_alert_routes_answer_admin_keys_only(
    drifted: Settings, start_server: Callable[..., LiveServer]
) -> None:
    with session_scope(drifted.db_url) as s:
        _, admin = create_key(s, "ops", admin=True)
        _, scoped = create_key(s, "handbook-admin", admin=True, collections=["handbook"])
        _, reader = create_key(s, "reader")
    server = start_server(drifted, server={"auth": "on"}, drift={"aliases": []})  # no periodic check here
    with server.client(admin) as client:
        run = client.post("/api/drift/run", json={"model": "production", "window_days": 7})
        assert run.status_code == 201, run.text
        assert run.json()["verdict"] == "drift" and run.json()["alias"] == "production"
        listed = client.get("/api/drift", params={"alias": "production"}).json()["data"]
        assert [r["id"] for r in listed] == [run.json()["id"]] and listed[0]["source"] == "api"
        assert client.post("/api/drift/run", json={"model": "nope"}).status_code == 404
        assert client.post("/api/drift/run", json={"window_days": -1}).status_code == 400
        (alert,) = client.get("/api/alerts").json()["data"]
        assert alert["kind"] == "drift" and alert["link"] == "/dashboard/drift"
        acked = client.post(f"/api/alerts/{alert['id']}/ack")
        assert acked.status_code == 200 and acked.json()["acknowledged_at"]
        assert client.get("/api/alerts", params={"open": True}).json()["data"] == []
        assert client.post("/api/alerts/999/ack").status_code == 404
    for key, status in ((reader, 403), (scoped, 403), (None, 401)):
        with server.client(key) as client:
            for method, path in (("get", "/api/drift"), ("post", "/api/drift/run"), ("get", "/api/alerts"),
                                 ("post", f"/api/alerts/{alert['id']}/ack")):  # fmt: skip
                assert client.request(method, path).status_code == status, (key, path)


def test_the_servers_drift_check_runs_once_across_two_servers(
    drifted: Settings, start_server: Callable[..., LiveServer]
) -> None:
    """Two servers on one database start their schedulers at once: the drift check (due at start, then
    every hour) runs in one of them, stores one report and raises one alert."""
    sections = {"drift": {"check_interval_s": 3600, "aliases": ["production"]}}
    for _ in range(2):
        start_server(drifted, **sections)
    deadline = time.monotonic() + 180  # a limit on the wait, not a speed claim: generous under load
    while True:
        with session_scope(drifted.db_url) as s:
            task = s.get(PeriodicTask, "drift-check")
            if task is not None and task.last_run_at is not None and task.status == "idle":
                break
        assert time.monotonic() < deadline, "no server ran the drift check"
        time.sleep(0.1)
    assert task.last_error is None and task.next_due > task.last_run_at
    reports = latest_reports(drifted)
    assert [(r["source"], r["verdict"]) for r in reports] == [("server", "drift")]
    assert len(alerts.list_alerts(drifted, kind="drift")) == 1
