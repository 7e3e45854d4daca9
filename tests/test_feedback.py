"""Feedback over HTTP and the CLI: several reviewers kept apart, bad feedback refused with nothing written."""

from __future__ import annotations

from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.feedback.review import pending, sample_queue
from ragloop.feedback.service import feedback_for, judgement
from ragloop.store.db import session_scope


def ask(client, text="How many days of paid vacation do employees receive?", **ragloop) -> dict:
    """One chat turn; ``ragloop`` options (``k=1``, ``collections=[...]``) go in the request's extension."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 4}
    if ragloop:
        body["ragloop"] = ragloop
    r = client.post("/v1/chat/completions", json=body)
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


def _chunk_id(settings, source_path: str) -> str:
    from ragloop.ingest.kb import KnowledgeBase

    rows = KnowledgeBase(settings).table().search().select(["chunk_id", "source_path"]).limit(None).to_list()
    return next(r["chunk_id"] for r in rows if r["source_path"] == source_path)


def test_evidence_pins_an_unshown_passage_in_scope_and_refuses_the_rest(live_server):
    """A reviewer names the passage the retriever missed: it is pinned with its KB version and hash. An
    unknown id, or a passage of a collection the answer was not scoped to, is refused with nothing written;
    naming a shown passage counts as marking it gold."""
    settings = live_server.settings
    fines = _chunk_id(settings, "fines.txt")  # collection "finance"
    with live_server.client() as c:
        record = ask(c, "How many vacation days?", collections=["handbook"], k=1)
        iid = record["interaction_id"]
        shown = c.get(f"/api/interactions/{iid}").json()["passages"]
        assert len(shown) == 1
        unshown = _chunk_id(
            settings, "security.txt" if shown[0]["source_path"] == "vacation.md" else "vacation.md"
        )
        for body in (
            {"evidence": "abc"},
            {"evidence": ["x" * 65]},
            {"evidence": ["nope"]},  # not in the knowledge base
            {"evidence": [fines]},  # another collection than the answer's scope
            {"evidence": [shown[0]["chunk_id"]], "irrelevant": [1]},  # gold (as evidence) and irrelevant
        ):
            r = c.post(f"/api/interactions/{iid}/feedback", json={"thumbs": "down", **body})
            assert r.status_code == 400, (body, r.text)
        with session_scope(settings.db_url) as s:
            assert feedback_for(s, iid) == []
        r = c.post(
            f"/api/interactions/{iid}/feedback",
            json={
                "thumbs": "down",
                "corrected_answer": "See the policy.",
                "evidence": [unshown, shown[0]["chunk_id"]],
            },
        )
        assert r.status_code == 201, r.text
        saved = r.json()
    assert [e["chunk_id"] for e in saved["evidence"]] == [unshown]
    assert (
        saved["evidence"][0]["kb_version"] == record["kb_version"]
        and len(saved["evidence"][0]["text_sha256"]) == 64
    )
    assert saved["gold_ranks"] == [1]  # the shown passage named as evidence is simply gold


def test_cli_kb_search_finds_the_evidence_to_pin(kb_home, live_server):
    """`ragloop kb search` shows chunk ids without answering; `ragloop feedback --evidence` pins one."""
    import json

    with live_server.client() as c:
        iid = ask(c, "lost badge?", k=1)["interaction_id"]
        shown = {p["chunk_id"] for p in c.get(f"/api/interactions/{iid}").json()["passages"]}
    runner = CliRunner()
    home = ["--home", str(kb_home.home)]
    r = runner.invoke(app, ["kb", "search", "worldwide annual turnover", "--k", "2", "--json", *home])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert len(hits) == 2 and hits[0]["source_path"] == "fines.txt"
    r = runner.invoke(app, ["kb", "search", "worldwide annual turnover", "--collection", "handbook", *home])
    assert r.exit_code == 0 and "fines.txt" not in r.output
    r = runner.invoke(app, ["kb", "search", "x", "--mode", "psychic", *home])
    assert r.exit_code == 1 and "Unknown retrieval mode" in r.output
    evidence = hits[0]["chunk_id"]
    assert evidence not in shown  # the badge passage was shown, the fines passage was not
    r = runner.invoke(
        app, ["feedback", iid, "--thumbs", "down", "--evidence", evidence, "--reviewer", "cli1", *home]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["feedback", iid, "--thumbs", "down", "--evidence", "no-such-chunk", *home])
    assert r.exit_code == 1 and "no-such-chunk" in r.output
    with session_scope(kb_home.db_url) as s:
        [fb] = feedback_for(s, iid)
        assert [e["chunk_id"] for e in fb.evidence] == [evidence]


def test_a_scoped_reviewer_can_neither_pin_nor_search_another_collection(kb_home, start_server):
    """An admin key scoped to ``handbook`` reviews an answer made without a collection scope: neither the
    feedback API nor the review UI's evidence search reaches the ``finance`` collection through it."""
    from ragloop.store.keys import create_key

    server = start_server(kb_home, server={"auth": "on"})
    with session_scope(kb_home.db_url) as s:
        _, admin = create_key(s, "admin", admin=True)
        _, scoped = create_key(s, "handbook-admin", admin=True, collections=["handbook"])
    fines, vacation = _chunk_id(kb_home, "fines.txt"), _chunk_id(kb_home, "vacation.md")
    with server.client(admin) as c:
        iid = ask(c, "lost badge?", k=1)["interaction_id"]
    with session_scope(kb_home.db_url) as s:
        sample_queue(s, 5)
        [item] = pending(s)
    with server.client(scoped) as c:
        r = c.post(f"/api/interactions/{iid}/feedback", json={"thumbs": "down", "evidence": [fines]})
        assert r.status_code == 400 and "handbook" in r.json()["error"]["message"], r.text
        r = c.get(f"/review/item/{item.id}/search", params={"evidence_query": "worldwide annual turnover"})
        assert r.status_code == 200 and "fines.txt" not in r.text and "20 000 000" not in r.text
        r = c.post(f"/api/interactions/{iid}/feedback", json={"thumbs": "down", "evidence": [vacation]})
        assert r.status_code == 201, r.text
    with server.client(admin) as c:  # the same search with an unscoped key does find it
        r = c.get(f"/review/item/{item.id}/search", params={"evidence_query": "worldwide annual turnover"})
        assert "fines.txt" in r.text


def test_evidence_goes_with_its_own_correction():
    """Two reviewers correct differently, each pinning a passage: the latest correction wins and keeps its
    own evidence only; a reviewer who corrected nothing still contributes theirs."""
    from datetime import datetime, timedelta

    from ragloop.store.models import Feedback

    t0 = datetime(2026, 1, 1)

    def fb(n: int, reviewer: str, correction: str | None, chunk: str) -> Feedback:
        pin = [{"chunk_id": chunk, "kb_version": 1, "text_sha256": "0" * 64}]
        return Feedback(
            id=n,
            reviewer_id=reviewer,
            thumbs=-1,
            corrected_answer=correction,
            evidence=pin,
            created_at=t0 + timedelta(minutes=n),
        )

    rows = [fb(1, "ann", "Ten days.", "a0"), fb(2, "bob", "Twenty days.", "b"), fb(3, "ann", "Ten.", "a")]
    rows.append(fb(4, "cy", None, "c"))
    j = judgement(rows)
    assert j.corrected_answer == "Ten."  # ann's latest, made after bob's
    assert [e["chunk_id"] for e in j.evidence] == ["a", "c"]
