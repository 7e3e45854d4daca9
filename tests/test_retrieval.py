"""Hybrid search on a small real knowledge base (packaged MiniLM, real LanceDB), ingested once per module."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ragloop.config import Settings, init_home, load_settings
from ragloop.errors import RagloopError
from ragloop.ingest.kb import KnowledgeBase
from ragloop.ingest.pipeline import ingest_uploads
from ragloop.retrieval.search import Retriever, SearchTimings, fulltext_query, fuse

CORPUS: dict[str, list[tuple[str, bytes]]] = {
    "handbook": [
        ("vacation.md", b"# Vacation\n\nEmployees receive twenty-five days of annual leave per year.\n"),
        ("security.txt", b"Passwords must be rotated every ninety days. Laptops use full disk encryption.\n"),
        ("parking.txt", b"Parking permits cost 30 EUR per month. Paid parking is in garage B, level -2.\n"),
    ],
    "finance": [
        ("fines.txt", b"Fines can reach 20 000 000 EUR or 4 % of the worldwide annual turnover.\n"),
    ],
    "o'brien": [  # a collection name with a quote: must work as a scope, never as SQL
        ("notes.txt", b"The O'Brien account holiday calendar lists every public holiday.\n"),
    ],
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = load_settings(init_home(tmp_path_factory.mktemp("retrieval") / "home"))
    for collection, files in CORPUS.items():
        report = ingest_uploads(settings, files, collection=collection)
        assert report.ok, report.errors
    return settings


@pytest.fixture(scope="module")
def retriever(settings: Settings) -> Retriever:
    return Retriever(settings)


def with_weights(settings: Settings, **weights: float) -> Retriever:
    retrieval = settings.retrieval.model_copy(update=weights)
    return Retriever(settings.model_copy(update={"retrieval": retrieval}))


def test_hybrid_finds_the_answer_with_both_scores(retriever: Retriever) -> None:
    hits = retriever.search("How many vacation days do employees get?", 3)
    top = hits[0]
    assert top.source_path == "vacation.md" and top.collection == "handbook"
    assert top.rank_dense == 1 and top.rank_fulltext == 1
    assert 0 < top.score_dense <= 1 and top.score_fulltext > 0
    assert top.score == pytest.approx(2 / (60 + 1))  # weighted RRF with the default weights and rrf_k
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(top.text_sha256) == 64 and top.char_end > top.char_start


def test_single_methods_fill_only_their_own_scores(retriever: Retriever) -> None:
    dense = retriever.search("encryption of laptops", 2, mode="dense")
    assert all(h.score_fulltext is None and h.rank_fulltext is None for h in dense)
    assert [h.rank_dense for h in dense] == [1, 2]
    fulltext = retriever.search("encryption of laptops", 2, mode="fulltext")
    assert fulltext[0].source_path == "security.txt"
    assert all(h.score_dense is None for h in fulltext)
    with pytest.raises(RagloopError):
        retriever.search("x", mode="semantic")


def test_weights_change_the_order(settings: Settings, retriever: Retriever) -> None:
    # "paid" is the only word the parking notice shares with the query; the leave policy shares its
    # meaning. The two methods disagree, so the weights decide the order.
    query = "paid time off"
    dense = [h.chunk_id for h in retriever.search(query, 3, mode="dense")]
    fulltext = [h.chunk_id for h in retriever.search(query, 3, mode="fulltext")]
    assert dense[0] != fulltext[0]
    only_dense = with_weights(settings, dense_weight=1.0, fulltext_weight=0.0).search(query, 3)
    only_fulltext = with_weights(settings, dense_weight=0.0, fulltext_weight=1.0).search(query, 3)
    assert [h.chunk_id for h in only_dense] == dense  # a zero weight skips that method entirely
    assert [h.chunk_id for h in only_fulltext] == fulltext
    assert all(h.score_dense is None for h in only_fulltext)


def test_fusion_weights_and_rrf_k() -> None:
    def row(chunk_id: str, **score: float) -> dict:
        return {
            "chunk_id": chunk_id,
            "doc_id": chunk_id,
            "collection": "c",
            "source_path": "p",
            "title": "",
            "section": "",
            "text": "",
            "text_sha256": "",
            "char_start": 0,
            "char_end": 0,
            **score,
        }

    dense = [row("a", _distance=0.1), row("b", _distance=0.2)]
    fulltext = [row("b", _score=3.0)]
    by_dense = fuse(dense, fulltext, dense_weight=4.0, fulltext_weight=1.0, rrf_k=1)
    by_fulltext = fuse(dense, fulltext, dense_weight=1.0, fulltext_weight=4.0, rrf_k=1)
    assert [h.chunk_id for h in by_dense] == ["a", "b"]  # 4/2 beats 4/3 + 1/2
    assert [h.chunk_id for h in by_fulltext] == ["b", "a"]
    b = by_fulltext[0]
    assert b.score == pytest.approx(1 / 3 + 4 / 2) and b.rank_dense == 2 and b.rank_fulltext == 1
    assert b.score_dense == pytest.approx(0.8) and b.score_fulltext == 3.0


def test_collection_scope_is_enforced(retriever: Retriever) -> None:
    for mode in ("hybrid", "dense", "fulltext"):
        hits = retriever.search("fines turnover EUR", 10, collections=["handbook"], mode=mode)
        assert hits and {h.collection for h in hits} == {"handbook"}
    assert retriever.search("fines", 10, collections=[]) == []  # an empty scope is nothing, not everything
    assert {h.collection for h in retriever.search("fines", 10)} >= {"finance", "handbook"}


def test_quotes_in_scope_and_filters_are_values_not_sql(retriever: Retriever) -> None:
    hits = retriever.search("holiday calendar", 10, collections=["o'brien"])
    assert hits and {h.collection for h in hits} == {"o'brien"}
    for evil in ["handbook' OR '1'='1", "x') OR (collection = 'finance", 'handbook" OR 1=1 --']:
        assert retriever.search("fines", 10, collections=[evil]) == []
        assert retriever.search("fines", 10, filters={"source_path": evil}) == []


def test_filters(retriever: Retriever) -> None:
    hits = retriever.search("days", 10, filters={"source_path": "security.txt"})
    assert hits and {h.source_path for h in hits} == {"security.txt"}
    hits = retriever.search("days", 10, filters={"source_path": ["security.txt", "fines.txt"]})
    assert {h.source_path for h in hits} <= {"security.txt", "fines.txt"}
    # A filter on collection narrows the scope; it can never widen it.
    assert retriever.search("fines", 10, collections=["handbook"], filters={"collection": "finance"}) == []
    with pytest.raises(RagloopError, match="Unknown filter"):
        retriever.search("days", filters={"text": "x"})
    with pytest.raises(RagloopError, match="takes strings"):
        retriever.search("days", filters={"doc_id": 3})


@pytest.mark.parametrize(
    ("query", "terms", "found"),
    [
        ('"unbalanced', '"unbalanced', set()),
        ("AND OR NOT", "AND OR NOT", set()),
        ("((( )))", "", set()),
        ("title:vacation*", "title:vacation*", {"vacation.md"}),  # no field syntax, no wildcard
        # no fuzzy "~2", no "+" / "-" operators: "-fines" still finds fines, "2" parking's "level -2"
        ("vacation~2 +days -fines", "vacation~2 +days -fines",
         {"vacation.md", "fines.txt", "parking.txt", "security.txt"}),
        ("'; DROP TABLE x;--", "'; DROP TABLE x;--", set()),
        ("\x00\x01 days", "days", {"vacation.md", "security.txt"}),
        ("?!.,", "", set()),
        ("ünïcödé ☃ vacation", "ünïcödé ☃ vacation", {"vacation.md"}),
        ("x" * 5000, "x" * 2000, set()),
    ],
)  # fmt: skip
def test_punctuation_heavy_queries_are_searched_as_plain_terms(
    retriever: Retriever, query: str, terms: str, found: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    """What the sanitiser leaves is what BM25 searches: the words of the query, syntax characters kept
    as characters. LanceDB never rejects it (a rejected full-text query is logged and answered from
    the dense side alone, which would hide a sanitiser that lets syntax through)."""
    assert fulltext_query(query) == terms
    with caplog.at_level(logging.WARNING, logger="ragloop.retrieval.search"):
        hits = retriever.search(query, 10, mode="fulltext")
        assert {h.source_path for h in hits} == found
        assert len(retriever.search(query, 3, mode="hybrid")) == 3  # the dense side answers regardless
    assert not [r.getMessage() for r in caplog.records if r.name == "ragloop.retrieval.search"]


def test_fulltext_query_sanitising() -> None:
    assert fulltext_query("  a\x00b\tc  ") == "a b c"
    assert fulltext_query("?!*") == ""
    assert len(fulltext_query("y" * 10_000)) == 2000


def test_blank_query_and_empty_knowledge_base(tmp_path: Path, retriever: Retriever) -> None:
    assert retriever.search("   ") == []
    empty = Retriever(load_settings(init_home(tmp_path / "empty")))
    assert empty.search("anything") == []


def test_search_at_an_old_version(settings: Settings, retriever: Retriever) -> None:
    kb = KnowledgeBase(settings)
    version = kb.version
    assert retriever.search("vacation", 1, version=version)[0].source_path == "vacation.md"
    with pytest.raises(RagloopError):
        retriever.search("vacation", 1, version=10_000)


def test_timings_and_precomputed_query_vector(retriever: Retriever) -> None:
    timings = SearchTimings()
    vector = retriever.embed_query("vacation days")
    hits = retriever.search("vacation days", 2, query_vector=vector, timings=timings)
    assert hits[0].source_path == "vacation.md"
    assert timings.embed_ms < 1 and timings.dense_ms > 0 and timings.fulltext_ms > 0
    retriever.search("vacation days", 2, timings=timings)
    assert timings.embed_ms > 0
