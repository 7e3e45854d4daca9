"""The dashboard (issue 19): its SQL aggregates on SQLite and PostgreSQL, checked against the same numbers
computed in Python from the seeded records; the answer signals filled after the fact; the SVG charts'
markup; and every page in a real headless Chromium (Debian's), signed in with an admin key and with a key
scoped to one collection, which must see no record, passage or chart point of the other.

Records are written directly (no generator), except one real answer through the API for the replay.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ragloop.config import Settings, init_home, load_settings
from ragloop.monitoring import dashboard
from ragloop.monitoring.signals import fill_signals
from ragloop.serve import charts
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, EvalRun, Feedback, Interaction, ModelVersion, Passage

NOW = datetime.now(UTC).replace(tzinfo=None)
VERSIONS = ("v-base", "v-tuned")


def _interaction(i: int, *, days_ago: int, version: str, collections: list[str], latency: float,
                 question: str, verified: bool | None = None, source: str = "api",
                 chunk_ids: list[str] | None = None) -> Interaction:  # fmt: skip
    created = NOW - timedelta(days=days_ago, minutes=i)
    if days_ago == 0 and created.date() != NOW.date():  # just after midnight: keep it today
        created = NOW - timedelta(seconds=i + 1)
    row = Interaction(
        id=f"i{i:04d}", created_at=created, conversation_id=f"c{i}", turn_index=0, source=source,
        messages=[{"role": "user", "content": question}], thread_sha256=f"t{i}", retrieval_query=question,
        collections=sorted(set(collections)) or None, kb_version=1, template_id="cited-answer", template_version=1,
        prompt_sha256="0" * 64, model_version=version, model_alias="production", gen_params={},
        answer=f"Answer to {question} [1]", citations=[{"n": 1, "valid": True, "statement": question}],
        latency_total_ms=latency, verified=verified, abstained=False, signals_at=created,
    )  # fmt: skip
    row.passages = [
        Passage(rank=r, chunk_id=(chunk_ids or [])[r - 1] if chunk_ids else f"{i}-{r}", doc_id=f"d{r}",
                collection=c, source_path=f"{c}/doc{r}.md", text_sha256="0" * 64, kb_version=1,
                score=1 / (60 + r), score_dense=0.5, score_fulltext=3.0)
        for r, c in enumerate(collections, 1)
    ]  # fmt: skip
    return row


def seed_records(db_url: str) -> list[dict]:
    """~40 interactions over 4 days, two versions, passages from handbook, finance or both (and one with
    none), feedback on some; returns plain dicts of what was written, for the expected values."""
    rng = np.random.default_rng(7)
    rows, facts = [], []
    for i in range(40):
        days_ago = i % 4
        version = VERSIONS[0] if days_ago >= 2 or i % 3 == 0 else VERSIONS[1]
        kind = i % 5
        collections = {0: ["handbook"], 1: ["handbook", "handbook"], 2: ["finance"], 3: ["handbook", "finance"],
                       4: ["handbook"]}[kind]  # fmt: skip
        if i == 39:
            collections = []  # an answer that showed no passage: admin only
        latency = float(round(rng.uniform(100, 2000), 1))
        verified = None if i % 7 == 0 else bool(i % 2)
        question = (
            "overtime rules" if i % 8 == 0 else "fines turnover" if kind == 2 else "vacation days"
        ) + f" #{i}"
        rows.append(_interaction(i, days_ago=days_ago, version=version, collections=collections,
                                 latency=latency, question=question, verified=verified))  # fmt: skip
        down = i % 6 == 0
        fb = None
        if i % 3 == 0:
            fb = Feedback(interaction_id=f"i{i:04d}", reviewer_id="r", source="human", thumbs=-1 if down else 1,
                          corrected_answer="Fixed [1]." if i % 9 == 0 else None)  # fmt: skip
        facts.append({"id": f"i{i:04d}", "day": rows[-1].created_at.date(), "version": version, "latency": latency,
                      "collections": set(collections), "verified": verified, "question": question,
                      "thumbs": None if fb is None else fb.thumbs, "corrected": bool(fb and fb.corrected_answer),
                      "feedback": fb is not None})  # fmt: skip
        if fb is not None:
            rows.append(fb)
    # Not traffic: an eval shadow and automatic feedback never count.
    rows.append(_interaction(99, days_ago=0, version=VERSIONS[0], collections=["eval"], latency=5.0,
                             question="eval question", source="eval"))  # fmt: skip
    rows.append(Feedback(interaction_id="i0001", reviewer_id="bot", source="auto", thumbs=-1))
    with session_scope(db_url) as s:
        s.add_all([r for r in rows if isinstance(r, Interaction)])
        s.flush()  # interactions before the feedback that points at them
        s.add_all([r for r in rows if isinstance(r, Feedback)])
    return facts


def visible(facts: list[dict], scope: list[str] | None) -> list[dict]:
    """The scope rule, in Python: every passage in scope, and at least one passage."""
    if scope is None:
        return facts
    return [f for f in facts if f["collections"] and f["collections"] <= set(scope)]


def nearest_rank(values: list[float], p: float) -> float:
    return float(np.percentile(values, 100 * p, method="inverted_cdf"))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return load_settings(init_home(tmp_path / "home"), database_url=db_url)


# SQL aggregates ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", [None, ["handbook"]])
def test_overview_matches_the_records(settings: Settings, scope: list[str] | None) -> None:
    facts = visible(seed_records(settings.db_url), scope)
    data = dashboard.overview(settings, days=30, collections=scope)
    for version in VERSIONS:
        expected: dict[date, int] = {}
        for f in facts:
            if f["version"] == version:
                expected[f["day"]] = expected.get(f["day"], 0) + 1
        assert dict(data["requests"][version]) == expected
    assert data["totals"]["requests"] == len(facts)
    for d, n, p50, p95 in data["latency"]:
        values = [f["latency"] for f in facts if f["day"] == d]
        assert n == len(values)
        assert (p50, p95) == (nearest_rank(values, 0.5), nearest_rank(values, 0.95))
    for d, down_rate, corrected_rate, rated, reviewed in data["feedback"]:
        day = [f for f in facts if f["day"] == d and f["feedback"]]
        assert rated == reviewed == len(day)
        expected_down = sum(f["thumbs"] == -1 for f in day) / len(day) if day else None
        assert down_rate == pytest.approx(expected_down) if day else down_rate is None
        assert corrected_rate == (pytest.approx(sum(f["corrected"] for f in day) / len(day)) if day else None)
    for d, share, checked in data["verified"]:
        known = [f["verified"] for f in facts if f["day"] == d and f["verified"] is not None]
        assert checked == len(known) and share == pytest.approx(sum(known) / len(known))
    # Past days come from the cache on a second view: the same numbers.
    assert dashboard.overview(settings, days=30, collections=scope)["requests"] == data["requests"]


def test_search_filters_and_scope(settings: Settings) -> None:
    facts = seed_records(settings.db_url)

    def ids(**kw) -> list[str]:  # type: ignore[no-untyped-def]
        return [r["id"] for r in dashboard.search_interactions(settings, limit=200, **kw)["rows"]]

    assert len(ids()) == len(facts) + 1  # the eval shadow is a record too
    assert sorted(ids(text="OVERTIME")) == sorted(f["id"] for f in facts if "overtime" in f["question"])
    assert ids(text="100%_") == []  # LIKE wildcards are searched for literally
    assert sorted(ids(model=VERSIONS[1])) == sorted(f["id"] for f in facts if f["version"] == VERSIONS[1])
    assert len(ids(model="production")) == len(facts) + 1
    assert sorted(ids(feedback="down")) == sorted(
        f["id"] for f in facts if f["thumbs"] == -1
    )  # not the bot's
    assert sorted(ids(feedback="corrected")) == sorted(f["id"] for f in facts if f["corrected"])
    assert len(ids(feedback="none")) == len(facts) + 1 - sum(f["feedback"] for f in facts)
    today = datetime.combine(NOW.date(), datetime.min.time())
    assert sorted(ids(since=today - timedelta(days=1))) == sorted(
        [f["id"] for f in facts if f["day"] >= NOW.date() - timedelta(days=1)] + ["i0099"]
    )
    assert sorted(ids(until=today - timedelta(days=1))) == sorted(
        f["id"] for f in facts if f["day"] < NOW.date() - timedelta(days=1)
    )
    scoped = ids(collections=["handbook"])
    assert sorted(scoped) == sorted(f["id"] for f in visible(facts, ["handbook"]))
    assert "i0039" not in scoped and "i0039" in ids()  # no passage: admin only
    page1 = dashboard.search_interactions(settings, limit=15)
    page2 = dashboard.search_interactions(settings, limit=15, offset=15)
    assert page1["has_more"] and not set(r["id"] for r in page1["rows"]) & set(r["id"] for r in page2["rows"])
    # One record: hidden from a scope that does not hold all its passages, as if absent.
    assert (
        dashboard.interaction_detail(settings, "i0003", collections=["handbook"]) is None
    )  # handbook+finance
    detail = dashboard.interaction_detail(settings, "i0000", collections=["handbook"])
    assert detail is not None and [p["collection"] for p in detail["passages"]] == ["handbook"]
    assert detail["replay"]["identical"] is False  # no such chunk in this home's (empty) knowledge base


def test_a_text_search_reads_one_bounded_stretch_at_a_time(settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seed_records(settings.db_url)
    everything = [
        r["id"] for r in dashboard.search_interactions(settings, text="vacation", limit=200)["rows"]
    ]
    monkeypatch.setattr(dashboard, "TEXT_SCAN_ROWS", 10)  # 41 records: five stretches, newest first
    seen, before, stretches = [], None, 0
    while True:
        found = dashboard.search_interactions(settings, text="vacation", limit=200, before=before)
        seen += [r["id"] for r in found["rows"]]
        stretches += 1
        if found["older_before"] is None:
            break
        before = found["older_before"]
    assert stretches == 5 and seen == everything


def seed_models(db_url: str) -> None:
    """Two versions (the second trained on a dataset), each with three finished eval runs."""
    with session_scope(db_url) as s:
        s.add(DatasetVersion(id="ds1", name="sft-set", content_hash="h", policy={"min_rating": 4},
                             source="interactions", kb_version=3, path="/x"))  # fmt: skip
        s.add(ModelVersion(id=VERSIONS[0], base_model="org/base", created_at=NOW - timedelta(days=2)))
        s.add(ModelVersion(id=VERSIONS[1], base_model="org/base", parent_id=VERSIONS[0], dataset_id="ds1",
                           adapter_path="/a", created_at=NOW - timedelta(days=1)))  # fmt: skip
        for i, version in enumerate(VERSIONS):
            for condition, k in (("distractors", 0), ("distractors", 4), ("no-gold", 4)):
                s.add(EvalRun(model_version=version, dataset="/d/qa.jsonl", dataset_hash="dh", condition=condition,
                              n_distractors=k, status="done", n_examples=10,
                              metrics={"n": 10, "f1": 0.5 + 0.1 * i - 0.01 * k, "em": 0.3}))  # fmt: skip


def test_models_view_lineage_metric_and_robustness(settings: Settings) -> None:
    seed_models(settings.db_url)
    data = dashboard.models_view(settings)
    tuned = next(v for v in data["versions"] if v["id"] == VERSIONS[1])
    assert (tuned["parent_id"], tuned["dataset_name"], tuned["kb_version"], tuned["policy"]) == (
        VERSIONS[0], "sft-set", 3, {"min_rating": 4})  # fmt: skip
    assert data["metric"] == "f1" and len(data["runs"]) == 6
    assert {label: len(points) for label, points in data["across"].items()} == {
        "distractors k=0": 2, "distractors k=4": 2, "no-gold k=4": 2}  # fmt: skip
    assert data["robustness"][VERSIONS[1]] == [(0, pytest.approx(0.6)), (4, pytest.approx(0.56))]
    assert data["robustness"][f"{VERSIONS[0]} · gold removed"] == [(4, pytest.approx(0.46))]
    compared = dashboard.models_view(settings, a=VERSIONS[0], b=VERSIONS[1])["compare"]
    assert compared["a"]["id"] == VERSIONS[0] and compared["runs"] is not None  # runs share questions
    assert dashboard.models_view(settings, collections=["handbook"])["runs"] is None  # scoped: no eval runs


def test_fill_signals_writes_each_answer_once(settings: Settings) -> None:
    passage = "Passwords must be rotated every ninety days."
    with session_scope(settings.db_url) as s:
        supported = _interaction(1, days_ago=0, version="v", collections=["eval"], latency=1.0, question="q",
                                 source="eval")  # fmt: skip
        supported.answer = "Passwords must be rotated every ninety days [1]."
        supported.filters = {"eval_passages": [{"passage_id": "p1", "text": passage}]}
        unsupported = _interaction(2, days_ago=0, version="v", collections=["eval"], latency=1.0, question="q",
                                   source="eval")  # fmt: skip
        unsupported.answer = "Laptops are replaced every 24 months [1]."
        unsupported.filters = {"eval_passages": [{"passage_id": "p1", "text": passage}]}
        refusal = _interaction(3, days_ago=0, version="v", collections=[], latency=1.0, question="q")
        refusal.answer = "I cannot answer this from the provided documents."
        for row in (supported, unsupported, refusal):
            row.verified = row.abstained = row.signals_at = None
        s.add_all([supported, unsupported, refusal])
    assert fill_signals(settings) == 3
    assert fill_signals(settings) == 0  # computed once
    with session_scope(settings.db_url) as s:
        got = {i.id: (i.verified, i.abstained) for i in s.query(Interaction)}
    assert got == {"i0001": (True, False), "i0002": (False, False), "i0003": (None, True)}


# Charts -------------------------------------------------------------------------------------------------


def test_charts_markup_counts_series_and_points() -> None:
    import re

    svg = str(charts.line_chart("Requests", "requests", [
        charts.Series("a", [(date(2026, 1, 1), 3), (date(2026, 1, 2), None), (date(2026, 1, 3), 5)]),
        charts.Series("b <script>", [(date(2026, 1, 2), 1)])], x_label="day", band=charts.Band("ci", [
            (date(2026, 1, 1), 1, 4), (date(2026, 1, 3), 2, 6)]), threshold=charts.Threshold("limit", 4.5)))  # fmt: skip
    assert 'data-chart="requests"' in svg and "<script>" not in svg  # labels are escaped
    assert re.findall(r'data-series="([^"]+)" data-points="(\d+)"', svg) == [
        ("ci", "2"),
        ("a", "2"),
        ("b &lt;script&gt;", "1"),
    ]
    assert svg.count('class="pt"') == 3 and "requests" in svg and "day" in svg and 'class="legend"' in svg
    assert svg.count("<polyline") == 0  # the gap splits a's line into single points; b has one point
    bars = str(
        charts.bar_chart("F1", "f1", [charts.Series("k=0", [("v1", 0.5), ("v2", 0.6)])], x_label="version")
    )
    assert bars.count('<rect class="pt"') == 2
    hist = str(
        charts.histogram("Scores", "share", [0, 0.5, 1], [("ref", [3, 1]), ("cur", [0, 2])], x_label="s")
    )
    assert re.findall(r'data-series="([^"]+)" data-points="(\d+)"', hist) == [("ref", "2"), ("cur", "2")]
    assert 'class="chart empty"' in str(charts.line_chart("Empty", "x", [], x_label="day"))
    assert not math.isnan(float(re.search(r'data-y="([^"]+)"', svg).group(1)))
    # Many long labels (model versions): the legend wraps within the chart's width, which grows to hold
    # the extra rows; one row ran past the right edge and cut the last labels off.
    labels = [f"gdpr-demo-v{i}-tuned-on-reviewed-answers" for i in range(6)]
    wide = str(charts.line_chart("Versions", "requests", [charts.Series(v, [(1, i)]) for i, v in enumerate(labels)],
                                 x_label="day"))  # fmt: skip
    legend = re.search(r'<g class="legend">(.*?)</g>', wide).group(1)
    entries = re.findall(r'<text x="([\d.]+)" y="([\d.]+)">([^<]+)</text>', legend)
    assert [t for _, _, t in entries] == labels
    assert all(float(x) + charts.CHAR_W * len(t) <= charts.WIDTH for x, _, t in entries)
    height = float(re.search(r'viewBox="0 0 \d+ (\d+)"', wide).group(1))
    assert len({y for _, y, _ in entries}) > 1 and max(float(y) for _, y, _ in entries) < height
    # A long title (a drift signal's name and statistic) is fitted to the width, empty or not; a short one is not.
    long = "kb_changed: share of training examples whose gold passage changed or was deleted since training"
    for svg_text in (str(charts.line_chart(long, "share", [], x_label="report")), wide):
        fitted = re.search(r'<text class="chart-title"[^>]*>', svg_text).group(0)
        assert ('textLength="' in fitted) == (svg_text != wide), fitted


# Browser ------------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, kb_template: Path):  # type: ignore[no-untyped-def]
    """One server (auth on) over a home with the test KB, the seeded records and one real answer; keys."""
    import uvicorn

    from conftest import make_home, with_overrides
    from ragloop.serve.app import create_app
    from ragloop.store.keys import create_key

    folder = tmp_path_factory.mktemp("dash")
    settings = make_home(folder, tiny_model_dir)
    shutil.copytree(kb_template, settings.data_dir, dirs_exist_ok=True)
    settings = with_overrides(settings, server={"auth": "on"})
    facts = seed_records(settings.db_url)
    seed_models(settings.db_url)
    with session_scope(settings.db_url) as s:
        _, admin = create_key(s, "admin", admin=True)
        _, scoped = create_key(s, "handbook-team", admin=True, collections=["handbook"])
        _, user = create_key(s, "user")
        _, scoped_user = create_key(s, "handbook-user", collections=["handbook"])
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    import httpx

    r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {admin}"}, timeout=120, json={
        "messages": [{"role": "user", "content": "How often must passwords be rotated?"}], "max_tokens": 4,
        "ragloop": {"collections": ["handbook"]}})  # fmt: skip
    assert r.status_code == 200, r.text
    live_id = r.json()["ragloop"]["interaction_id"]
    fill_signals(settings)  # before any page is read, so the server's own task has nothing left to change
    yield {"url": url, "settings": settings, "facts": facts, "admin": admin, "scoped": scoped, "user": user,
           "scoped_user": scoped_user, "live_id": live_id}  # fmt: skip
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is required: apt-get install chromium (make test does it)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _signed_in(browser, site, key: str):  # type: ignore[no-untyped-def]
    page = browser.new_context().new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site['url']}/dashboard/models")
    assert "/dashboard/login" in page.url
    page.fill("input[name=key]", key)
    page.click("button.primary")
    page.wait_for_url("**/dashboard/models")
    return page, errors


def _series(page, chart: str) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """{series label: [y of each point]} of one chart, as drawn."""
    return page.evaluate("""(name) => {
        const out = {};
        for (const g of document.querySelectorAll(`svg[data-chart="${name}"] g.series`)) {
            const ys = [...g.querySelectorAll('.pt')].map(p => Number(p.dataset.y));
            if (ys.length !== Number(g.dataset.points)) throw new Error('data-points disagrees');
            out[g.dataset.series] = ys;
        }
        return out; }""", chart)  # fmt: skip


def _shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("RAGLOOP_SCREENSHOTS"):
        Path(os.environ["RAGLOOP_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(Path(os.environ["RAGLOOP_SCREENSHOTS"]) / f"dashboard-{name}.png"), full_page=True
        )


def _live(site) -> list[dict]:  # type: ignore[no-untyped-def]
    """The seeded records plus the real answer (today, handbook passages, the base version)."""
    with session_scope(site["settings"].db_url) as s:
        live = s.get(Interaction, site["live_id"])
        fact = {"id": live.id, "day": live.created_at.date(), "version": live.model_version,
                "collections": {p.collection for p in live.passages}, "verified": live.verified}  # fmt: skip
    return [*site["facts"], fact]


@pytest.mark.browser
def test_pages_load_and_charts_show_the_records(site, browser) -> None:  # type: ignore[no-untyped-def]
    page, errors = _signed_in(browser, site, site["admin"])
    facts = _live(site)
    page.goto(f"{site['url']}/dashboard")
    requests = _series(page, "requests")
    expected: dict[str, dict[date, int]] = {}
    for f in facts:
        expected.setdefault(f["version"], {}).setdefault(f["day"], 0)
        expected[f["version"]][f["day"]] += 1
    assert {k: sorted(v) for k, v in requests.items()} == {
        k: sorted(v.values()) for k, v in expected.items()}  # fmt: skip
    days = {f["day"] for f in facts}
    assert {k: len(v) for k, v in _series(page, "latency").items()} == {"p50": len(days), "p95": len(days)}
    assert len(_series(page, "feedback")["thumbs down (of rated)"]) == len(
        {f["day"] for f in facts if f.get("feedback")}
    )
    assert len(_series(page, "verified")["verified (abstentions aside)"]) == len(
        {f["day"] for f in facts if f["verified"] is not None})  # fmt: skip
    assert page.inner_text("#total-requests") == str(len(facts))
    _shoot(page, "overview")

    page.goto(f"{site['url']}/dashboard/interactions?text=overtime")
    rows = page.locator("tr.result")
    assert rows.count() == sum("overtime" in f.get("question", "") for f in facts)
    page.fill("input[name=text]", "")
    page.fill("input[name=model]", VERSIONS[1])
    page.click("form.filters button")
    page.wait_for_url("**model=v-tuned**")
    assert page.locator("tr.result").count() == sum(f["version"] == VERSIONS[1] for f in facts)
    # Each row names the version that answered (an alias alone hides which arm of an A/B it was).
    assert {t.split()[0] for t in page.locator("tr.result td.model").all_inner_texts()} == {VERSIONS[1]}
    page.select_option("select[name=feedback]", "down")
    page.click("form.filters button")
    page.wait_for_url("**feedback=down**")
    assert page.locator("tr.result").count() == sum(
        f["version"] == VERSIONS[1] and f.get("thumbs") == -1 for f in facts)  # fmt: skip
    # In words: an emoji thumb is an empty box on a machine without an emoji font (Debian's default).
    page.goto(f"{site['url']}/dashboard/interactions?feedback=down")
    n_down = sum(f.get("thumbs") == -1 for f in facts)
    assert n_down and page.locator("tr.result [data-thumbs=down]").all_inner_texts() == ["down"] * n_down
    _shoot(page, "interactions")

    page.goto(f"{site['url']}/dashboard/interactions/{site['live_id']}")
    assert "rebuilds sha256-identical" in page.inner_text("#replay-verdict")
    assert page.locator("tr.passage-row").count() >= 1 and "ninety days" in page.inner_text("main")
    _shoot(page, "interaction")

    page.goto(f"{site['url']}/dashboard/models?a={VERSIONS[0]}&b={VERSIONS[1]}")
    assert page.locator("#versions tr[data-version]").count() >= 2
    across = _series(page, "metric-across-versions")
    assert {k: len(v) for k, v in across.items()} == {
        "distractors k=0": 2,
        "distractors k=4": 2,
        "no-gold k=4": 2,
    }
    assert _series(page, "robustness")[VERSIONS[1]] == [pytest.approx(0.6), pytest.approx(0.56)]
    assert page.locator("#compare").count() == 1
    _shoot(page, "models")
    assert errors == []
    page.close()


@pytest.mark.browser
def test_a_scoped_key_sees_nothing_of_another_collection(site, browser) -> None:  # type: ignore[no-untyped-def]
    page, errors = _signed_in(browser, site, site["scoped"])
    facts = visible(_live(site), ["handbook"])
    assert facts and len(facts) < len(site["facts"])
    page.goto(f"{site['url']}/dashboard")
    assert sum(sum(v) for v in _series(page, "requests").values()) == len(facts)
    assert page.inner_text("#total-requests") == str(len(facts))
    page.goto(f"{site['url']}/dashboard/interactions")
    shown = page.eval_on_selector_all("tr.result", "rows => rows.map(r => r.dataset.id)")
    assert sorted(shown) == sorted(f["id"] for f in facts)
    page.goto(f"{site['url']}/dashboard/interactions?text=fines")  # finance questions: none visible
    assert page.locator("tr.result").count() == 0
    mixed = next(f["id"] for f in site["facts"] if f["collections"] == {"handbook", "finance"})
    response = page.goto(f"{site['url']}/dashboard/interactions/{mixed}")
    assert response.status == 404 and "finance" not in page.inner_text("main")
    ok = facts[0]["id"]
    page.goto(f"{site['url']}/dashboard/interactions/{ok}")
    assert set(page.eval_on_selector_all("tr.passage-row", "r => r.map(x => x.dataset.collection)")) == {
        "handbook"
    }
    page.goto(f"{site['url']}/dashboard/models")
    assert page.locator("#runs").count() == 0 and "admin keys only" in page.inner_text("main")
    _shoot(page, "scoped-overview")
    errors = [e for e in errors if "404" not in e]  # the refused record's own status
    assert errors == []
    # A user key reads only its own records through the API; the dashboard shows everyone's: refused,
    # scoped or not (an end user of the chat with a key scoped to handbook reads no one else's questions).
    for key in (site["user"], site["scoped_user"]):
        page.goto(f"{site['url']}/dashboard/logout")
        page.fill("input[name=key]", key)
        page.click("button.primary")
        assert "needs an admin key" in page.inner_text(".error")
        assert page.goto(f"{site['url']}/dashboard/interactions").url.endswith(
            "/dashboard/login?next=/dashboard/interactions"
        )
    page.close()


def test_the_sign_in_form_refuses_another_site_and_user_keys(site) -> None:  # type: ignore[no-untyped-def]
    """Login CSRF: another site's form must not sign this browser in with a key of its choosing; and the
    header path takes no user key either (no browser: plain HTTP)."""
    import httpx

    url = f"{site['url']}/dashboard/login"
    body = {"key": site["admin"], "next": "/dashboard"}
    for evil in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):
        r = httpx.post(url, data=body, headers=evil)
        assert r.status_code == 403 and "set-cookie" not in r.headers, evil
    same = {"Sec-Fetch-Site": "same-origin", "Origin": site["url"]}
    r = httpx.post(url, data=body, headers=same)
    assert r.status_code == 303 and "ragloop_key=" in r.headers["set-cookie"]
    r = httpx.post(url, data={**body, "key": site["scoped_user"]}, headers=same)
    assert r.status_code == 400 and "set-cookie" not in r.headers
    for key in (site["scoped_user"], site["user"]):
        r = httpx.get(f"{site['url']}/dashboard/interactions", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 303 and "vacation" not in r.text
