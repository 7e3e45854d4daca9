"""The review queue in a real headless Chromium (Debian's), driven by Playwright: a reviewer rates with the
keyboard, marks a gold passage with a click, saves a correction, and moves on to the next item.

A missing Chromium fails this test rather than skipping it: `make test` installs Debian's package."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ragloop.feedback.service import feedback_for
from ragloop.store.db import session_scope
from ragloop.store.models import ReviewItem

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is required: apt-get install chromium (make test does it)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_reviewer_rates_marks_gold_and_corrects(live_server, browser, tmp_path):
    with live_server.client() as c:
        ids = []
        for q in (
            "How many days of paid vacation do employees receive?",
            "How often must passwords be rotated?",
        ):
            r = c.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": q}], "max_tokens": 4}
            )
            ids.append(r.json()["ragloop"]["interaction_id"])
        c.post(f"/api/interactions/{ids[1]}/feedback", json={"reviewer_id": "user", "thumbs": "down"})

    page = browser.new_page()
    page.goto(f"{live_server.url}/review")
    assert "Nothing pending" in page.content()
    page.fill("input[name=n]", "5")
    page.click("#sample")
    page.wait_for_selector("#question")
    # thumbs-down first
    assert page.inner_text("#question") == "How often must passwords be rotated?"
    assert page.locator(".passage").count() == 3
    assert "Passwords must be rotated" in page.inner_text("#passage-1")

    page.keyboard.press("u")  # thumbs up
    page.keyboard.press("4")  # rating
    page.click("#gold-1")  # mark passage 1 gold by clicking
    page.keyboard.press("g")  # ... and passage 2 with the keyboard
    page.keyboard.press("2")
    page.keyboard.press("c")
    page.keyboard.type("Every ninety days [1].")
    assert page.get_attribute("#thumbs-up", "aria-pressed") == "true"
    assert "gold" in page.get_attribute("#passage-1", "class")
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
    assert (tmp_path / "review.png").stat().st_size > 10_000
    if os.environ.get("RAGLOOP_SCREENSHOTS"):  # keep it to look at: RAGLOOP_SCREENSHOTS=/tmp/shots
        Path(os.environ["RAGLOOP_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "review.png", Path(os.environ["RAGLOOP_SCREENSHOTS"]) / "review.png")
    page.keyboard.press("Control+Enter")  # save from inside the textarea
    page.wait_for_url(
        lambda url: "/review/item/" in url and url.rstrip("/").split("/")[-1] != "1", timeout=15000
    )
    page.wait_for_selector("#question")
    assert page.inner_text("#question") == "How many days of paid vacation do employees receive?"

    with session_scope(live_server.settings.db_url) as s:
        (fb,) = [f for f in feedback_for(s, ids[1]) if f.reviewer_id != "user"]
        assert (fb.thumbs, fb.rating, fb.gold_ranks, fb.corrected_answer) == (
            1,
            4,
            [1, 2],
            "Every ninety days [1].",
        )
        done = s.query(ReviewItem).filter_by(interaction_id=ids[1]).one()
        assert done.status == "done"

    page.keyboard.press("n")  # skip the second item
    page.wait_for_selector("text=Nothing pending")
    page.close()


def test_review_ui_needs_an_admin_key_when_auth_is_on(kb_home, start_server, browser):
    from ragloop.store.keys import create_key

    server = start_server(kb_home, server={"auth": "on"})
    with session_scope(kb_home.db_url) as s:
        _, user_secret = create_key(s, "user")
        _, admin_secret = create_key(s, "admin", admin=True)
    page = browser.new_page()
    page.goto(f"{server.url}/review")
    assert page.url.endswith("/login")
    page.fill("input[name=key]", user_secret)
    page.click("button")
    assert "admin" in page.inner_text(".error")
    page.fill("input[name=key]", admin_secret)
    page.click("button")
    page.wait_for_selector("text=Review queue")
    assert admin_secret not in page.url
    page.close()


def test_reviewer_finds_the_passage_the_retriever_missed(live_server, browser):
    """The answer was made from the wrong passage. The reviewer opens the evidence search (`e`), finds the
    right one by their own words, ticks it (it stays picked across searches), corrects and saves: the
    feedback pins it as evidence. The search keeps to the answer's collections."""
    with live_server.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "How often must passwords be rotated?"}],
                "max_tokens": 4,
                "ragloop": {"k": 1, "collections": ["handbook"]},
            },
        )
        iid = r.json()["ragloop"]["interaction_id"]
        shown = c.get(f"/api/interactions/{iid}").json()["passages"][0]["source_path"]
    assert shown == "security.txt"

    page = browser.new_page()
    page.goto(f"{live_server.url}/review")
    page.click("#sample")
    page.wait_for_selector("#question")
    posted: list[str] = []  # every POST the page sends from here on: a review submission is one
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)
    assert page.locator(".passage").count() == 1
    page.keyboard.press("e")
    assert page.evaluate("document.activeElement.id") == "evidence-query"
    page.keyboard.type("fines turnover")  # the finance collection is out of this answer's scope
    page.wait_for_selector("#evidence-hits .evidence-hit")
    assert "20 000 000 EUR" not in page.inner_text("#evidence-hits")
    page.fill("#evidence-query", "paid vacation days per year")
    page.wait_for_selector("#evidence-hits >> text=twenty-five days")
    hit = page.locator("#evidence-hits .evidence-hit", has_text="twenty-five days")
    hit.locator("input").check()
    with page.expect_response(lambda resp: "/search?" in resp.url):
        page.fill("#evidence-query", "annual leave")  # a new search must not wash the picked passage away
    # A submission would leave in the same keypress as the search: whichever answers first, it is seen.
    with page.expect_response(lambda resp: "/search?" in resp.url or resp.request.method == "POST"):
        page.press("#evidence-query", "Enter")  # searches; must not submit the half-done review
    assert posted == []
    with session_scope(live_server.settings.db_url) as s:
        assert feedback_for(s, iid) == []
    assert page.inner_text("#result") == "" and page.locator("#question").count() == 1
    assert "twenty-five days" in page.inner_text("#evidence-picked")
    assert "twenty-five days" not in page.inner_text("#evidence-hits")  # nor offer it twice
    page.click("#thumbs-down")
    page.fill("#correction", "Every ninety days.")
    if os.environ.get("RAGLOOP_SCREENSHOTS"):
        page.screenshot(
            path=str(Path(os.environ["RAGLOOP_SCREENSHOTS"]) / "review-evidence.png"), full_page=True
        )
    page.click("#save")
    page.wait_for_selector("text=Nothing pending")
    assert len(posted) == 1 and "/review/item/" in posted[0]  # the save, and nothing before it
    page.close()

    from ragloop.ingest.kb import KnowledgeBase

    rows = (
        KnowledgeBase(live_server.settings)
        .table()
        .search()
        .select(["chunk_id", "source_path"])
        .limit(None)
        .to_list()
    )
    vacation = next(x["chunk_id"] for x in rows if x["source_path"] == "vacation.md")
    with session_scope(live_server.settings.db_url) as s:
        (fb,) = feedback_for(s, iid)
        assert fb.thumbs == -1 and [e["chunk_id"] for e in fb.evidence] == [vacation]
