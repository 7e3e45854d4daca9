"""Drift statistics on real MiniLM embeddings of real text: GDPR article sentences are the reference domain
(what a GDPR-trained version saw), PubMedQA and HotpotQA questions another domain. A shifted window must be
drift; windows drawn from the reference's own distribution must not be, and the false-alarm rate over 20
seeds is measured and bounded. Dense scores are real too: the best cosine score of each text against the
GDPR recitals, standing in for the knowledge base."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from ragloop.config import EmbeddingSettings
from ragloop.ingest.embed import get_embedder
from ragloop.monitoring.drift_stats import (
    VERDICTS,
    Signal,
    centroid_distance,
    coverage_gap,
    domain_classifier,
    overall,
    rate_shift,
    score_shift,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
N_REF, N_CUR, SEEDS = 300, 100, 20
# A check at level 0.05 false-alarms in 1 of 20 windows on average; 2 of 20 leaves room for the seeds' luck
# (if the true rate were 0.05, 3 or more of 20 would happen 7.5 % of the time), and 3 would mean a rate
# well above the stated level. The seeds are fixed, so the count is the same on every run.
MAX_FALSE_ALARMS = 2


def _gdpr_sentences() -> list[str]:
    texts: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("point", "subpoint") and isinstance(node.get("text"), str):
                texts.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads((DATA / "gdpr" / "gdpr.json").read_text())["chapters"])
    return texts


@pytest.fixture(scope="module")
def corpus() -> dict:
    """Texts and their embeddings, once per module (embedding is most of this file's time)."""
    if not (DATA / "gdpr" / "gdpr.json").exists():
        pytest.fail(f"test data missing at {DATA} (shared/data next to the repository)")
    rng = random.Random(0)
    gdpr = [t for t in _gdpr_sentences() if len(t.split()) <= 80]
    gdpr = rng.sample(gdpr, N_REF + N_CUR + 20)
    pubmed = [v["QUESTION"] for v in json.loads((DATA / "pubmedqa" / "pqal_train.json").read_text()).values()]
    pubmed = rng.sample(pubmed, N_CUR)
    with open(DATA / "hotpotqa_distractor" / "dev.jsonl") as f:
        hotpot = rng.sample([json.loads(line)["question"] for line in f], 40)
    recitals = json.loads((DATA / "gdpr" / "gdpr.json").read_text())["recitals"]
    kb = [" ".join(r["text"].split()[:60]) for r in recitals]
    embedder = get_embedder(EmbeddingSettings())
    emb = {
        name: embedder.encode(texts)
        for name, texts in (("gdpr", gdpr), ("pubmed", pubmed), ("hotpot", hotpot), ("kb", kb))
    }
    best = {name: (emb[name] @ emb["kb"].T).max(axis=1) for name in ("gdpr", "pubmed", "hotpot")}
    return {"texts": {"gdpr": gdpr, "pubmed": pubmed, "hotpot": hotpot}, "emb": emb, "best": best}


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[:N_REF], order[N_REF : N_REF + N_CUR]


def test_a_window_of_another_domain_is_drift(corpus):
    emb = corpus["emb"]
    ref, _ = _split(len(emb["gdpr"]), 0)
    for other in ("pubmed", "hotpot"):
        cur = emb[other][:N_CUR]
        domain = domain_classifier(emb["gdpr"][ref], cur)
        assert domain.verdict == "drift", domain
        assert domain.value > 0.95 and domain.details["p_value"] < 1e-6
        centroid = centroid_distance(emb["gdpr"][ref], cur)
        assert centroid.verdict == "drift", centroid
        assert centroid.value > 5 * centroid.threshold
    # A window of mostly GDPR text with a third of another domain mixed in is still told apart.
    mixed = np.vstack([emb["gdpr"][_split(len(emb["gdpr"]), 1)[1][:67]], emb["pubmed"][:33]])
    assert domain_classifier(emb["gdpr"][ref], mixed).verdict == "drift"


def test_windows_from_the_reference_distribution_are_rarely_called_drift(corpus):
    emb, best = corpus["emb"]["gdpr"], corpus["best"]["gdpr"]
    texts = corpus["texts"]["gdpr"]
    verdicts: dict[str, list[str]] = {}
    for seed in range(SEEDS):
        ref, cur = _split(len(emb), seed)
        signals = [
            domain_classifier(emb[ref], emb[cur], seed=seed),
            centroid_distance(emb[ref], emb[cur], seed=seed),
            score_shift(best[ref], best[cur], name="retrieval_top1"),
            coverage_gap(best[ref], best[cur], [texts[i] for i in cur], emb[cur]),
        ]
        for s in signals:
            verdicts.setdefault(s.name, []).append(s.verdict)
        verdicts.setdefault("query", []).append(overall(signals[:2]))
    drift = {name: v.count("drift") for name, v in verdicts.items()}
    warn = {name: v.count("warn") for name, v in verdicts.items()}
    print(f"\nfalse alarms over {SEEDS} seeds (GDPR {N_REF} vs GDPR {N_CUR}): drift {drift}, warn {warn}")
    assert drift["query"] <= MAX_FALSE_ALARMS, drift
    for name in ("query_domain", "query_centroid", "retrieval_top1", "coverage_gap"):
        assert drift[name] <= MAX_FALSE_ALARMS, (name, drift)
    # warn is the significance test alone (level 0.05): bounded the same way.
    assert warn["query_domain"] + drift["query_domain"] <= MAX_FALSE_ALARMS + 1, (warn, drift)


def test_dense_scores_of_another_domain_shift_down(corpus):
    best = corpus["best"]
    ref, cur = _split(len(best["gdpr"]), 0)
    shifted = score_shift(best["gdpr"][ref], best["pubmed"][:N_CUR], name="retrieval_top1")
    assert shifted.verdict == "drift", shifted
    assert shifted.details["direction"] == "lower" and shifted.details["ks_p_value"] < 1e-6
    same = score_shift(best["gdpr"][ref], best["gdpr"][cur], name="retrieval_top1")
    assert same.verdict == "ok", same
    # A small but real move (scores lower by 0.06 of their spread) is significant over 20,000 records yet
    # under Evidently's 0.1 normed Wasserstein: warn, not drift.
    rng = np.random.default_rng(0)
    moved = rng.choice(best["gdpr"], 20_000) - 0.06 * best["gdpr"].std()
    small = score_shift(rng.choice(best["gdpr"], 20_000), moved, name="retrieval_topk")
    assert small.verdict == "warn", small


def test_coverage_gap_groups_uncovered_questions_into_topics(corpus):
    emb, best, texts = corpus["emb"], corpus["best"], corpus["texts"]
    ref, cur = _split(len(emb["gdpr"]), 0)
    window = {"gdpr": cur[:60], "pubmed": np.arange(40), "hotpot": np.arange(40)}
    cur_texts = [texts[src][i] for src, idx in window.items() for i in idx]
    cur_emb = np.vstack([emb[src][idx] for src, idx in window.items()])
    cur_best = np.concatenate([best[src][idx] for src, idx in window.items()])
    gap = coverage_gap(best["gdpr"][ref], cur_best, cur_texts, cur_emb)
    assert gap.verdict == "drift", gap
    assert gap.value > 0.4 and gap.details["n_uncovered"] >= 60
    topics = gap.details["topics"]
    source = {t: src for src, idx in window.items() for t in (texts[src][i] for i in idx)}
    # The largest topics are each about one other domain (their examples come from one source), and both
    # other domains are among them: a topic is a kind of question the knowledge base lacks.
    top = [{source[e] for e in t["examples"]} for t in topics[:4]]
    assert all(len(s) == 1 for s in top) and set().union(*top) == {"pubmed", "hotpot"}, topics
    assert all(t["label"] and t["n"] >= len(t["examples"]) > 0 for t in topics)
    assert sum(t["n"] for t in topics) <= gap.details["n_uncovered"]
    assert gap.details["n_topics"] >= len(topics) > 2
    json.dumps(gap.to_dict())  # question texts and all: JSON-safe for the stored report


def test_rate_shift_alarms_on_worse_rates_only():
    worse = rate_shift("thumbs_down_rate", 20, 400, 45, 400)
    assert worse.verdict == "drift" and worse.details["current_rate"] > worse.details["reference_rate"]
    better = rate_shift("thumbs_down_rate", 45, 400, 20, 400)
    assert better.verdict == "ok" and better.value > 0.9
    unchanged = rate_shift("correction_rate", 20, 400, 21, 400)
    assert unchanged.verdict == "ok"
    # Citation-verified: lower is worse.
    dropped = rate_shift("citation_verified_rate", 360, 400, 320, 400, higher_is_worse=False)
    rose = rate_shift("citation_verified_rate", 320, 400, 360, 400, higher_is_worse=False)
    assert dropped.verdict == "drift" and rose.verdict == "ok"
    # Between the level and twice it: warn.
    marginal = rate_shift("abstention_rate", 20, 400, 31, 400)
    assert 0.05 <= marginal.value < 0.10 and marginal.verdict == "warn", marginal


def test_too_little_data_gives_no_verdict(corpus):
    emb, best, texts = corpus["emb"]["gdpr"], corpus["best"]["gdpr"], corpus["texts"]["gdpr"]
    few = slice(0, 12)
    signals = [
        domain_classifier(emb[:300], emb[few]),
        centroid_distance(emb[few], emb[300:]),
        score_shift(best[:300], best[few], name="retrieval_top1"),
        coverage_gap(best[:300], best[few], texts[few], emb[few]),
        rate_shift("thumbs_down_rate", 3, 400, 1, 12),
    ]
    for s in signals:
        assert s.verdict == "not enough data" and s.value is None, s
        assert 12 in (s.n_reference, s.n_current) and "12" in s.details["reason"]
        json.dumps(s.to_dict())
    assert overall(signals) == "not enough data" and overall([]) == "not enough data"
    ok = rate_shift("thumbs_down_rate", 20, 400, 20, 400)
    assert overall([*signals, ok]) == "ok"
    assert overall([ok, rate_shift("x", 20, 400, 31, 400), signals[0]]) == "warn"
    assert set(VERDICTS) == {"ok", "warn", "drift", "not enough data"}


def test_signal_to_dict_is_json_safe():
    s = Signal(
        "x", "y", np.float32(0.5), float("nan"), "src", "ok", 40, 50, {"a": np.arange(2), "b": np.bool_(1)}
    )
    d = s.to_dict()
    assert d["value"] == 0.5 and d["threshold"] is None and d["details"] == {"a": [0, 1], "b": True}
    json.dumps(d)


def test_domain_classifier_subsamples_thousands_of_rows(corpus):
    """Large windows are cut to 2,000 rows a side (seeded), which keeps a check well under a second; the
    time itself is a benchmark's business, not a test's."""
    emb = corpus["emb"]
    rng = np.random.default_rng(0)
    ref = emb["gdpr"][rng.integers(0, len(emb["gdpr"]), 5000)]  # subsampled to 2000 inside
    cur = np.vstack(
        [emb["gdpr"][rng.integers(0, len(emb["gdpr"]), 1500)], emb["pubmed"][rng.integers(0, N_CUR, 500)]]
    )
    signal = domain_classifier(ref, cur)
    assert signal.details["rows_used"] == {"reference": 2000, "current": 2000}
    assert signal.verdict == "drift"  # a quarter from another domain


def test_coverage_gap_keeps_its_level_with_a_small_reference():
    """The 5th percentile of 30 reference scores is itself noisy: judged as if it were exact (a binomial test
    against 5 %), unchanged windows of 100 were called drift in about 28 % of draws. Synthetic scores, no
    embedder: the level is a property of the test, not of the text."""
    rng = np.random.default_rng(0)
    draws, alarms = 300, 0
    for _ in range(draws):
        ref, cur = rng.normal(size=30), rng.normal(size=100)
        emb = rng.normal(size=(100, 8)).astype(np.float32)
        gap = coverage_gap(ref, cur, [f"question {i}" for i in range(100)], emb, max_topics=1)
        alarms += gap.verdict != "ok"
    # At level 0.05 the expected count is at most 15; 30 (10 %) would be twice the level.
    assert alarms <= 0.10 * draws, alarms
    # A real gap is still found: a third of the window far below every reference score.
    cur = np.r_[rng.normal(size=67), rng.normal(size=33) - 5]
    emb = rng.normal(size=(100, 8)).astype(np.float32)
    gap = coverage_gap(rng.normal(size=30), cur, [f"q {i}" for i in range(100)], emb)
    assert gap.verdict == "drift", gap
