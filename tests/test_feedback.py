"""Feedback over HTTP and the CLI: several reviewers kept apart, bad feedback refused with nothing written."""

from __future__ import annotations

from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.feedback.review import pending, sample_queue
from ragloop.feedback.service import feedback_for, judgement
from ragloop.store.db import session_scope


def ask(client, text="How many days of paid vacation do employees receive?") -> dict:
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": text}], "max_tokens": 4}
    )
    assert r.status_code == 200, r.text
    return r.json()["ragloop"]


def test_feedback_from_two_reviewers_is_kept_apart(live_server):
    with live_server.client() as c:
        iid = ask(c)["interaction_id"]
        r1 = c.post(
            f"/api/interactions/{iid}/feedback",
            json={
                "reviewer_id": "ann",
                "thumbs": "down",
                "rating": 2,
                "corrected_answer": "Twenty-five days [1].",
                "gold": [1],
            },
        )
        r2 = c.post(
            f"/api/interactions/{iid}/feedback", json={"reviewer_id": "bob", "thumbs": "up", "tags": ["ok"]}
        )
        r3 = c.post(f"/api/interactions/{iid}/feedback", json={"reviewer_id": "ann", "rating": 3})
        assert (r1.status_code, r2.status_code, r3.status_code) == (201, 201, 201), r1.text
    with session_scope(live_server.settings.db_url) as s:
        rows = feedback_for(s, iid)
        assert [(f.reviewer_id, f.rating) for f in rows] == [("ann", 2), ("bob", None), ("ann", 3)]
        j = judgement(rows)
    assert j.reviewers == ["ann", "bob"] and j.mean_rating == 3
    assert j.corrected_answer is None  # ann's latest feedback has no correction
    assert j.accepted is False  # ann's latest rating (3) is below 4


def test_bad_feedback_is_refused_and_nothing_is_written(live_server):
    with live_server.client() as c:
        iid = ask(c)["interaction_id"]
        bad = [
            {"thumbs": "sideways"},
            {"rating": 7},
            {"rating": True},
            {"gold": [9]},
            {"gold": "1"},
            {},
            {"thumbs": "up", "colour": "red"},
            {"gold": [1], "irrelevant": [1]},
            ["thumbs", "up"],
        ]
        for body in bad:
            r = c.post(f"/api/interactions/{iid}/feedback", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["message"]
        r = c.post(
            f"/api/interactions/{iid}/feedback",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400
        r = c.post("/api/interactions/nope/feedback", json={"thumbs": "up"})
        assert r.status_code == 404
    with session_scope(live_server.settings.db_url) as s:
        assert feedback_for(s, iid) == []


def test_review_queue_puts_thumbs_down_first(live_server):
    with live_server.client() as c:
        ids = [ask(c, q)["interaction_id"] for q in ("vacation days?", "password rotation?", "lost badge?")]
        c.post(f"/api/interactions/{ids[2]}/feedback", json={"thumbs": "down"})
    with session_scope(live_server.settings.db_url) as s:
        report = sample_queue(s, 3)
        assert report.total == 3 and report.thumbs_down == 1
        first = pending(s)[0]
        assert first.interaction_id == ids[2] and first.reason == "thumbs_down"
        assert sample_queue(s, 3).total == 0  # nothing is queued twice


def test_cli_feedback(kb_home, live_server):
    with live_server.client() as c:
        iid = ask(c)["interaction_id"]
    runner = CliRunner()
    home = ["--home", str(kb_home.home)]
    r = runner.invoke(
        app, ["feedback", iid, "--thumbs", "up", "--rating", "5", "--gold", "1", "--reviewer", "cli1", *home]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["feedback", iid, "--rating", "9", *home])
    assert r.exit_code != 0
    with session_scope(kb_home.db_url) as s:
        assert [(f.reviewer_id, f.gold_ranks) for f in feedback_for(s, iid)] == [("cli1", [1])]
