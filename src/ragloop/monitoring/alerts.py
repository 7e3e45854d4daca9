"""Alerts: what a person should look at, raised by the checks that run without one (a drift verdict, a guardrail
rollback, an experiment ended by its maximum duration). Each is a row of ``alerts`` (the dashboard lists them,
``ragloop alerts`` and ``/api/alerts`` too) and, when ``[alerts] webhook_url`` is set, a JSON POST to it.

An open condition raises one alert: while an alert with the same ``dedupe_key`` is unacknowledged, raising it
again does nothing, so an hourly check of a drifted model does not page someone every hour. The webhook is
posted from a daemon thread, so a check never waits on a slow endpoint; what happened (``delivered_at`` or
``delivery_error``) is written to the alert, so a failed delivery is visible where the alert is and nothing is
lost. Alerts leave the machine: the payload holds the alert's kind, severity, subject, message, aggregate
numbers and a dashboard path, never a question's text; the URL itself may hold a token and is never logged.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select, text

from ragloop.config import Settings
from ragloop.errors import NotFound
from ragloop.store.db import session_scope
from ragloop.store.models import Alert, utcnow

log = logging.getLogger("ragloop.alerts")

SEVERITIES = ("info", "warn", "critical")
VERDICTS = ("ok", "warn", "drift", "not enough data")  # the drift verdicts, kept in a payload's data


def link(kind: str, data: dict[str, Any] | None) -> str | None:
    """The dashboard page that shows what the alert is about (a path: the server's address is the reader's)."""
    data = data or {}
    if kind == "drift":
        return "/dashboard/drift"
    if kind == "guardrail" and data.get("experiment_id"):
        return f"/dashboard/experiments/{data['experiment_id']}"
    return None


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat() + "Z"


def alert_dict(alert: Alert) -> dict[str, Any]:
    """An alert as JSON-ready data (the API's, the CLI's and the dashboard's shape)."""
    return {
        "id": alert.id,
        "created_at": _iso(alert.created_at),
        "kind": alert.kind,
        "severity": alert.severity,
        "subject": alert.subject,
        "message": alert.message,
        "data": alert.data or {},
        "link": link(alert.kind, alert.data),
        "dedupe_key": alert.dedupe_key,
        "acknowledged_at": _iso(alert.acknowledged_at),
        "delivered_at": _iso(alert.delivered_at),
        "delivery_error": alert.delivery_error,
    }


def _aggregate(value: Any) -> Any:
    """``value`` with only what may leave the machine: numbers, booleans, verdicts and identifiers. A string
    with whitespace in it (a question, an answer, a passage) is dropped, whatever key it sits under."""
    if isinstance(value, dict):
        kept = {str(k): _aggregate(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not _DROP}
    if isinstance(value, list | tuple):
        return [v for v in (_aggregate(x) for x in value) if v is not _DROP]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and (value in VERDICTS or (value and not any(c.isspace() for c in value))):
        return value[:200]
    return _DROP


_DROP = object()


def payload(alert: Alert) -> dict[str, Any]:
    """What the webhook receives. ``message`` is written by the check from aggregates (rates, statistics,
    thresholds), never from records' texts; ``data`` is filtered again here (``_aggregate``)."""
    return {
        "id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity,
        "subject": alert.subject,
        "message": alert.message,
        "data": _aggregate(alert.data or {}),
        "created_at": _iso(alert.created_at),
        "link": link(alert.kind, alert.data),
        "source": "ragloop",
    }


# Raising --------------------------------------------------------------------------------------------------


def raise_alert(
    settings: Settings,
    kind: str,
    subject: str,
    message: str,
    data: dict[str, Any] | None = None,
    *,
    severity: str = "warn",
    dedupe_key: str | None = None,
) -> Alert | None:
    """Record an alert and post it to the webhook, if one is set. None, and nothing recorded or posted, when
    an unacknowledged alert with the same ``dedupe_key`` exists: the condition is already on someone's list.
    ``subject``, ``message`` and ``data`` leave the machine: give aggregates and identifiers, no texts."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    with session_scope(settings.db_url) as s:
        if dedupe_key is not None and s.get_bind().dialect.name == "postgresql":
            # Raisers of one key queue here until the first commits, so only one of them finds no open alert.
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"alert:{dedupe_key}"})
        alert = Alert(kind=kind, severity=severity, subject=subject[:160], message=message, data=data or {},
                      dedupe_key=dedupe_key)  # fmt: skip
        s.add(alert)
        # Written first, checked after: on SQLite the write takes the one writer's lock, so every other
        # raiser's alert is committed (and seen below) or waits for this one.
        s.flush()
        if dedupe_key is not None:
            open_before = s.scalar(
                select(func.count())
                .select_from(Alert)
                .where(Alert.dedupe_key == dedupe_key, Alert.acknowledged_at.is_(None), Alert.id != alert.id)
            )
            if open_before:
                s.rollback()
                return None
    log.info("alert %s raised: %s %s on %s", alert.id, severity, kind, alert.subject)
    url = settings.alerts.webhook_url
    if url:
        _post_later(settings.db_url, url, settings.alerts.webhook_timeout_s, alert)
    return alert


# Delivery -------------------------------------------------------------------------------------------------

_pending: set[threading.Thread] = set()
_pending_lock = threading.Lock()
_hidden_urls: set[str] = set()


class _HideWebhookURL(logging.Filter):
    """httpx logs every request's URL at INFO; a webhook URL may carry a token (Slack's do), so it is masked
    in httpx's records before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(url in message for url in _hidden_urls):
            for url in _hidden_urls:
                message = message.replace(url, "<alerts.webhook_url>")
            record.msg, record.args = message, None
        return True


_url_filter = _HideWebhookURL()


def _post_later(db_url: str, url: str, timeout_s: float, alert: Alert) -> None:
    body = payload(alert)
    with _pending_lock:
        if url not in _hidden_urls:
            _hidden_urls.update({url, str(httpx.URL(url))})  # as given, and as httpx writes it
            for name in ("httpx", "httpcore"):
                if _url_filter not in logging.getLogger(name).filters:
                    logging.getLogger(name).addFilter(_url_filter)
    thread = threading.Thread(
        target=_deliver, args=(db_url, url, timeout_s, alert.id, body), name=f"alert-{alert.id}", daemon=True
    )
    with _pending_lock:
        _pending.add(thread)
    thread.start()


def _deliver(db_url: str, url: str, timeout_s: float, alert_id: int, body: dict[str, Any]) -> None:
    error = None
    try:
        response = httpx.post(url, json=body, timeout=timeout_s)
        if response.status_code >= 300:
            error = f"the webhook answered HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        # The exception's text may quote the URL: only its kind and reason are kept.
        reason = str(exc).replace(url, "<alerts.webhook_url>")
        error = f"{type(exc).__name__}: {reason}"[:2000]
    except Exception as exc:  # noqa: BLE001 - whatever happened is written to the alert, not lost
        error = f"{type(exc).__name__}"
    try:
        with session_scope(db_url) as s:
            alert = s.get(Alert, alert_id)
            if alert is not None:
                alert.delivered_at = utcnow() if error is None else None
                alert.delivery_error = error
        if error:
            log.warning("alert %s: webhook delivery failed: %s", alert_id, error)
    except Exception:  # the database away: the alert row stays without a delivery result
        log.exception("alert %s: could not record the webhook delivery", alert_id)
    finally:
        with _pending_lock:
            _pending.discard(threading.current_thread())


def wait_for_deliveries(timeout_s: float | None = None) -> bool:
    """Wait for the webhook posts under way (a short-lived process, such as ``ragloop drift``, at its end).
    True when none is left."""
    with _pending_lock:
        threads = list(_pending)
    for thread in threads:
        thread.join(timeout_s)
    with _pending_lock:
        return not _pending


# A process that exits right after raising an alert still posts it (daemon threads die at exit; this runs
# before they do). Each post is bounded by ``webhook_timeout_s``.
atexit.register(wait_for_deliveries, 30.0)


# Reading and acknowledging --------------------------------------------------------------------------------


def list_alerts(
    settings: Settings, *, limit: int = 100, kind: str | None = None, unacknowledged: bool = False
) -> list[dict[str, Any]]:
    """Alerts, newest first (of ``kind``; only the open ones with ``unacknowledged``)."""
    query = select(Alert).order_by(Alert.id.desc()).limit(max(1, limit))
    if kind:
        query = query.where(Alert.kind == kind)
    if unacknowledged:
        query = query.where(Alert.acknowledged_at.is_(None))
    with session_scope(settings.db_url) as s:
        return [alert_dict(a) for a in s.scalars(query)]


def acknowledge(settings: Settings, alert_id: int) -> dict[str, Any]:
    """Mark an alert seen: it leaves the open list, and the same condition may raise a new one. Acknowledging
    it again changes nothing."""
    with session_scope(settings.db_url) as s:
        alert = s.get(Alert, alert_id)
        if alert is None:
            raise NotFound(f"No alert {alert_id}; `ragloop alerts` lists them.")
        if alert.acknowledged_at is None:
            alert.acknowledged_at = utcnow()
        return alert_dict(alert)
