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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import with_overrides
from ragloop.config import Settings
from ragloop.monitoring import ab, alerts
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
