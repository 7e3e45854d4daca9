"""The end users' chat page (/chat) in a real headless Chromium (Debian's), driven by Playwright, over the
real server with keys on: a non-admin key signs in, the recording notice is shown, an answer streams in
token by token through /v1/chat/completions and is recorded for the key's name, a citation opens its
passage (a hostile one stays text), thumbs and a correction are recorded as an end user's, and the
conversation continues. Also: a cookie without the page's header is refused, and (no browser) curation
does not take an end user's correction as a training target until a reviewer has accepted it.

The generator is the machine's edge: a small OpenAI-compatible server that streams a fixed cited answer
word by word, a few milliseconds apart, so the streaming is observable (the tiny random model would give
nothing to cite). A missing Chromium fails the browser test rather than skipping it, as test_review_ui."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ragloop.config import Settings
from ragloop.curation.pipeline import apply_filters, load_candidates
from ragloop.curation.policy import Policy, parse_policy
from ragloop.feedback.review import end_user_suggestion, pending, save_review
from ragloop.feedback.service import add_feedback, judgement
from ragloop.store.db import session_scope
from ragloop.store.keys import create_key
from ragloop.store.models import Feedback, Interaction, ReviewItem
from test_review_ui import ARGS, CHROMIUM
from test_vllm_release import BASE, openai_home

HOSTILE = (
    'Visitor badge rules. <script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> '
    "Visitors must wear a visitor badge at all times and return it at the front desk."
)
ANSWER_WORDS = ["Visitors", " wear", " a", " badge", " [1]", " and", " return", " it", " [2]", " [3]."]


class _StreamingGenerator(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server streaming ``ANSWER_WORDS`` one delta at a time."""

    def do_GET(self) -> None:
        data = json.dumps({"object": "list", "data": [{"id": BASE, "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        head = {"id": "c-1", "created": 0, "model": body["model"], "object": "chat.completion.chunk"}
        usage = {"prompt_tokens": 50, "completion_tokens": len(ANSWER_WORDS), "total_tokens": 60}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(ANSWER_WORDS)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            data = json.dumps({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())
            return
        self.send_response(200)  # HTTP/1.0: the body ends with the connection
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ANSWER_WORDS:
            chunk = {**head, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.06)
        end = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        last = {**head, "choices": [], "usage": usage}
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def generator_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StreamingGenerator)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def chat_home(kb_home: Settings, generator_url: str) -> Settings:
    """``kb_home`` with a hostile document in ``handbook``, answering through the streaming generator."""
    from ragloop.ingest.pipeline import ingest_uploads

    report = ingest_uploads(kb_home, [("visitors.txt", HOSTILE.encode())], collection="handbook")
    assert report.ok, report.errors
    return openai_home(kb_home, generator_url, runtime_lora=False)


# Counts the answer's updates while it streams (each delta is one DOM change) and keeps what it showed.
OBSERVE = """() => {
  window.__updates = [];
  new MutationObserver(records => {
    for (const r of records) {
      const node = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      const answer = node && node.closest('.answer');
      if (answer && answer.dataset.state === 'streaming') window.__updates.push(answer.textContent);
    }
  }).observe(document.getElementById('log'), {childList: true, characterData: true, subtree: true});
}"""


@pytest.mark.browser
def test_chat_page_streams_cites_records_feedback_and_continues(chat_home, start_server, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required: apt-get install chromium"
    server = start_server(chat_home, server={"auth": "on"})
    with session_scope(chat_home.db_url) as s:
        alice, alice_secret = create_key(s, "alice")  # a user key: not admin
        alice_id = alice.id
        _, bob_secret = create_key(s, "bob")
        _, admin_secret = create_key(s, "reviewer", admin=True)
        _, elsewhere_secret = create_key(s, "other-team", admin=True, collections=["elsewhere"])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        # Sign in: the notice is on the sign-in page, and again above the (empty) conversation.
        page.goto(f"{server.url}/chat")
        assert "recorded" in page.inner_text("#notice") and "improve" in page.inner_text("#notice")
        page.fill("input[name=key]", alice_secret)
        page.click("#sign-in-button")
        page.wait_for_selector("#question")
        assert page.inner_text("#user") == "alice"
        assert page.is_visible("#notice") and page.locator(".turn").count() == 0
        [cookie] = context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("ragloop_chat", True, "Strict")
        assert alice_secret not in page.evaluate("document.cookie") and alice_secret not in page.url

        # An answer streams in: the page showed it growing before it was complete.
        page.evaluate(OBSERVE)
        page.fill("#question", "What are the visitor badge rules?")
        page.keyboard.press("Enter")
        page.wait_for_selector(".turn:nth-child(1) .answer[data-state=done]", timeout=20000)
        partial = [t for t in dict.fromkeys(page.evaluate("window.__updates")) if t]
        assert len(partial) >= 2 and all(t.startswith("Visitors") for t in partial), partial
        assert page.inner_text(".turn:nth-child(1) .answer") == "".join(ANSWER_WORDS)
        first_id = page.get_attribute(".turn:nth-child(1)", "data-interaction-id")
        with session_scope(chat_home.db_url) as s:
            first = s.get(Interaction, first_id)
            assert (first.user_id, first.api_key_id, first.turn_index) == ("alice", alice_id, 0)
            hostile_rank = next(p.rank for p in first.passages if p.source_path == "visitors.txt")

        # The citation of the hostile passage opens it, as text: nothing of it runs or renders as HTML.
        page.click(f".turn:nth-child(1) button.cite[data-n='{hostile_rank}']")
        page.wait_for_selector(".turn:nth-child(1) .passage-view .text")
        shown = page.inner_text(".turn:nth-child(1) .passage-view .text")
        assert "<script>window.__pwned = 1</script>" in shown and "onerror=" in shown
        assert page.locator(".passage-view script, .passage-view img").count() == 0
        assert page.evaluate("window.__pwned") is None

        # Thumbs down, then a correction: both an end user's feedback, the correction queued for review.
        page.click(".turn:nth-child(1) .thumbs-down")
        page.wait_for_selector(".turn:nth-child(1) .thumbs-down[aria-pressed=true]")
        page.click(".turn:nth-child(1) button.correct")
        page.fill(".turn:nth-child(1) textarea.correction", "Visitors wear a badge and return it [1].")
        page.click(".turn:nth-child(1) .send-correction")
        page.wait_for_selector(".turn:nth-child(1) .correction-box", state="hidden")
        with session_scope(chat_home.db_url) as s:
            rows = s.scalars(select(Feedback).where(Feedback.interaction_id == first_id)).all()
            assert [(f.source, f.reviewer_id, f.thumbs, f.corrected_answer) for f in rows] == [
                ("end_user", alice_id, -1, None),
                ("end_user", alice_id, None, "Visitors wear a badge and return it [1]."),
            ]
            item = s.scalars(select(ReviewItem).where(ReviewItem.interaction_id == first_id)).one()
            assert (item.status, item.reason) == ("pending", "end_user_correction")
            item_id = item.id

        # The conversation continues: the second turn is turn 1 of the same conversation.
        page.fill("#question", "And where do they return it?")
        page.click("#send")
        page.wait_for_selector(".turn:nth-child(2) .answer[data-state=done]", timeout=20000)
        second_id = page.get_attribute(".turn:nth-child(2)", "data-interaction-id")
        with session_scope(chat_home.db_url) as s:
            second = s.get(Interaction, second_id)
            assert (second.turn_index, second.conversation_id) == (1, first.conversation_id)
            assert second.user_id == "alice" and [m["role"] for m in second.messages] == [
                "user",
                "assistant",
                "user",
            ]
        assert page.get_attribute("#conversation", "data-id") == first.conversation_id
        if os.environ.get("RAGLOOP_SCREENSHOTS"):  # RAGLOOP_SCREENSHOTS=/tmp/shots keeps a picture
            Path(os.environ["RAGLOOP_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(os.environ["RAGLOOP_SCREENSHOTS"]) / "chat.png"), full_page=True)

        page.click("#new-conversation")
        assert page.locator(".turn").count() == 0 and page.inner_text("#conversation") == "(new)"
        assert not errors, errors
        browser.close()

    # The cookie alone signs nothing in: another site's forged request lacks the page's header. With the
    # header, a session cannot claim another user: the key's name is recorded, not the body's `user`.
    cookies = {"ragloop_chat": alice_secret}
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=60) as c:
        r = c.post(f"/api/interactions/{first_id}/feedback", json={"thumbs": "up"})
        assert r.status_code == 401 and "X-Requested-With" in r.json()["error"]["message"], r.text
        question = {"messages": [{"role": "user", "content": "Badge rules?"}], "user": "mallory"}
        assert c.post("/v1/chat/completions", json=question).status_code == 401
        header = {"X-Requested-With": "ragloop-chat"}
        r = c.post("/v1/chat/completions", json=question, headers=header)
        assert r.status_code == 200, r.text
        with session_scope(chat_home.db_url) as s:
            assert s.get(Interaction, r.json()["ragloop"]["interaction_id"]).user_id == "alice"
        r = c.post(
            f"/api/interactions/{first_id}/feedback", json={"thumbs": "up", "source": "human"}, headers=header
        )
        assert r.status_code == 201 and r.json()["source"] == "end_user", r.text
        for evil in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):  # login CSRF
            assert c.post("/chat/login", data={"key": alice_secret}, headers=evil).status_code == 403

    # The reviewer's page offers the user's correction, ready to accept or edit.
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_secret}"}) as c:
        review = c.get(f"/review/item/{item_id}").text
        assert 'id="suggested-note"' in review
        assert ">Visitors wear a badge and return it [1].</textarea>" in review

    # Two people who open alike (the same question, the same answer: greedy decoding gives it) keep a
    # conversation each: bob's second turn continues bob's first, not alice's older one.
    header = {"X-Requested-With": "ragloop-chat"}
    with httpx.Client(base_url=server.url, cookies={"ragloop_chat": bob_secret}, headers=header) as c:
        opening = [{"role": "user", "content": "What are the visitor badge rules?"}]
        bob_first = c.post("/v1/chat/completions", json={"messages": opening}, timeout=60).json()["ragloop"]
        thread = [
            *opening,
            {"role": "assistant", "content": "".join(ANSWER_WORDS)},
            {"role": "user", "content": "And where do they return it?"},
        ]
        bob_next = c.post("/v1/chat/completions", json={"messages": thread}, timeout=60).json()["ragloop"]
        assert c.get(f"/chat/passages/{first_id}/1").status_code == 404  # alice's turn: not bob's to read
    # An admin key scoped to another collection: as if absent too (a 403 said the turn exists).
    other = httpx.get(
        f"{server.url}/chat/passages/{first_id}/1", headers={"Authorization": f"Bearer {elsewhere_secret}"}
    )
    assert other.status_code == 404 and "badge" not in other.text
    assert bob_next["turn_index"] == 1
    assert bob_next["conversation_id"] == bob_first["conversation_id"] != first.conversation_id


def _answer(settings: Settings) -> str:
    """One recorded turn, answered by the tiny model through the assistant (no server needed)."""
    from ragloop.generation.assistant import AnswerRequest, Assistant

    question = [{"role": "user", "content": "How many days of paid vacation do employees receive?"}]
    return Assistant(settings).answer(AnswerRequest(messages=question, max_tokens=4)).interaction_id


def test_an_end_user_correction_is_a_target_only_once_a_reviewer_accepts_it(kb_home: Settings) -> None:
    iid = _answer(kb_home)
    fix = "Employees receive twenty-five days of paid vacation per year [1]."
    add_feedback(kb_home.db_url, iid, {"reviewer_id": "alice", "thumbs": "down", "source": "end_user"})
    add_feedback(kb_home.db_url, iid, {"reviewer_id": "alice", "corrected_answer": fix, "source": "end_user"})

    def candidate(policy: Policy) -> Any:
        [c] = load_candidates(kb_home, [iid], policy=policy)
        return c

    # Default policy ("review"): not a target, and held out until reviewed.
    c = candidate(Policy())
    assert c.answer != fix and not c.from_correction and c.judgement.awaiting_review
    kept, reports = apply_filters([c], Policy())
    assert kept == [] and reports[0].reasons == {"end-user correction awaiting review": 1}
    # "trust" takes it as a reviewer's; "ignore" neither uses it nor waits for a review.
    assert candidate(parse_policy({"end_user_corrections": "trust"})).answer == fix
    ignored = candidate(parse_policy({"end_user_corrections": "ignore"}))
    assert ignored.answer != fix and not ignored.judgement.awaiting_review

    # The reviewer finds it first in the queue, with the user's text offered; saving it accepts it.
    [item] = pending(kb_home.db_url)
    assert (item.interaction_id, item.reason) == (iid, "end_user_correction")
    assert end_user_suggestion(kb_home.db_url, iid) == fix
    save_review(kb_home.db_url, item.id, {"reviewer_id": "rev", "corrected_answer": fix})
    c = candidate(Policy())
    assert (c.answer, c.from_correction, c.judgement.awaiting_review) == (fix, True, False)
    assert apply_filters([c], Policy())[1][0].reasons == {}


def test_an_end_users_feedback_neither_closes_a_review_nor_outranks_a_later_review() -> None:
    """Pure fold: a reviewer's correction followed by a user's: under "review" the reviewer's stands and
    the answer waits for a reviewer again; a policy value outside the three is refused."""
    from datetime import datetime, timedelta

    t0 = datetime(2026, 1, 1)
    rows = [
        Feedback(id=1, reviewer_id="rev", source="human", corrected_answer="A.", created_at=t0),
        Feedback(
            id=2, reviewer_id="u", source="end_user", corrected_answer="B.", created_at=t0 + timedelta(1)
        ),
    ]
    j = judgement(rows, end_user_corrections="review")
    assert (j.corrected_answer, j.awaiting_review) == ("A.", True)
    assert judgement(rows).corrected_answer == "B."  # as given (the A/B correction rate's reading)
    assert rows[1].corrected_answer == "B."  # the records themselves are untouched
    # An end user's passage marks correct the retrieval: not a target either until a reviewer has looked.
    marks = [Feedback(id=3, reviewer_id="u", source="end_user", thumbs=1, gold_ranks=[2], irrelevant_ranks=[1],
                      created_at=t0)]  # fmt: skip
    j = judgement(marks, end_user_corrections="review")
    assert (j.gold_ranks, j.irrelevant_ranks, j.accepted) == ([], [], True)
    assert judgement(marks).gold_ranks == [2]
    with pytest.raises(Exception, match="end_user_corrections"):
        parse_policy({"end_user_corrections": "always"})
