"""The versioned knowledge base on a real LanceDB table in a temporary home.

Vectors here are random unit vectors: the table does not care where they come from, and the retrieval and
pipeline tests cover the real embedding model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ragloop.config import Settings, init_home, load_settings
from ragloop.errors import NotFound
from ragloop.ingest.chunking import Chunk
from ragloop.ingest.kb import COMMITTED_TAG, KnowledgeBase

DIM = 384


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(init_home(tmp_path / "home"))


def chunks_for(doc_id: str, texts: list[str], collection: str = "c") -> list[Chunk]:
    out = []
    for i, text in enumerate(texts):
        out.append(
            Chunk(
                chunk_id=hashlib.sha256(f"{doc_id}\x00{i}\x00{text}".encode()).hexdigest()[:32],
                doc_id=doc_id,
                collection=collection,
                source_path=f"{doc_id}.txt",
                title=doc_id,
                section="",
                text=text,
                char_start=0,
                char_end=len(text),
                chunk_index=i,
                text_sha256=hashlib.sha256(text.encode()).hexdigest(),
            )
        )
    return out


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def apply(kb: KnowledgeBase, chunks: list[Chunk], delete: list[str] = ()) -> int:  # type: ignore[assignment]
    return kb.apply(chunks, vectors(len(chunks)), list(delete))


def test_empty_knowledge_base(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    assert kb.version == 0 and kb.count() == 0
    assert kb.get_chunks(["x"]) == {} and kb.random_chunks(3, seed=0) == []
    assert kb.apply([], vectors(0), ["nothing"]) == 0  # removing from nothing creates no table


def test_every_change_is_a_new_version_and_old_versions_stay_readable(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    a1 = chunks_for("A", ["alpha one", "alpha two"])
    v1 = apply(kb, a1)
    v2 = apply(kb, chunks_for("B", ["beta"]))
    a2 = chunks_for("A", ["alpha rewritten"])
    v3 = apply(kb, a2, delete=["A"])
    assert 0 < v1 < v2 < v3 == kb.version
    assert kb.count() == 2

    now = kb.get_chunks([c.chunk_id for c in a1 + a2])
    assert set(now) == {a2[0].chunk_id}  # the replaced chunks are gone at the new version...
    then = kb.get_chunks([c.chunk_id for c in a1], version=v1)
    assert {r["text"] for r in then.values()} == {"alpha one", "alpha two"}  # ...and still there at v1
    assert "vector" not in next(iter(then.values()))
    assert kb.version == v3  # reading history did not move the live table


def test_unchanged_chunks_survive_a_replacement(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    apply(kb, chunks_for("A", ["same", "old tail"]))
    new = chunks_for("A", ["same", "new tail"])
    apply(kb, new, delete=["A"])
    rows = kb.table().search().select(["chunk_id", "text"]).to_list()
    assert sorted(r["text"] for r in rows) == ["new tail", "same"]


def test_delete_only(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    apply(kb, chunks_for("A", ["a"]) + chunks_for("B", ["b"]))
    before = kb.version
    assert kb.apply([], vectors(0), ["A"]) > before
    assert {r["doc_id"] for r in kb.random_chunks(10, seed=1)} == {"B"}


def test_restore_undoes_a_write(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    v1 = apply(kb, chunks_for("A", ["a"]))
    apply(kb, chunks_for("B", ["b"]), delete=["A"])
    restored = kb.restore(v1)
    assert restored > v1 and kb.version == restored
    assert {r["doc_id"] for r in kb.random_chunks(10, seed=0)} == {"A"}
    emptied = kb.restore(0)  # 0 = before the first write
    assert emptied > restored and kb.version == emptied and kb.count() == 0


def test_tag_is_idempotent_and_compact_keeps_tagged_versions(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    old = chunks_for("A", ["kept at v1"])
    v1 = apply(kb, old)
    assert kb.tag(v1) == kb.tag(v1) == f"kb-v{v1}"
    middle = chunks_for("A", ["middle"])
    v2 = apply(kb, middle, delete=["A"])  # untagged
    v3 = apply(kb, chunks_for("B", ["other"]))  # untagged
    apply(kb, chunks_for("A", ["latest"]), delete=["A"])
    kb.mark_committed()
    latest = kb.version
    assert kb.get_chunks([middle[0].chunk_id], version=v2)  # readable before compaction

    stats = kb.compact()
    assert stats.pruned  # pylance is a declared dependency: untagged history is really removed
    kept = _versions(kb)
    assert v1 in kept and not {v2, v3} & kept, (v1, v2, v3, kept)
    assert stats.versions_after == len(kept) < stats.versions_before and stats.bytes_removed > 0
    for version in (v2, v3):
        with pytest.raises(NotFound):
            kb.get_chunks([middle[0].chunk_id], version=version)
    assert kb.get_chunks([old[0].chunk_id], version=v1)[old[0].chunk_id]["text"] == "kept at v1"
    assert {r["text"] for r in kb.random_chunks(5, seed=0)} == {"latest", "other"}
    # Compaction moves the table forward without changing its data: it stays the committed version.
    assert kb.version >= latest and kb.committed_version == kb.version


def _versions(kb: KnowledgeBase) -> set[int]:
    return {int(v["version"]) for v in kb.table().list_versions()}


def test_mark_committed_moves_one_tag(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    v1 = apply(kb, chunks_for("A", ["a"]))
    kb.mark_committed()
    v2 = apply(kb, chunks_for("B", ["b"]))
    kb.mark_committed(v2)
    assert kb.committed_version == v2 and kb.tags()[COMMITTED_TAG] == v2 and v1 < v2


def test_random_chunks_are_reproducible_and_scoped(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    apply(kb, chunks_for("A", [f"a{i}" for i in range(10)], "x") + chunks_for("B", ["b0", "b1"], "y"))
    first = kb.random_chunks(4, seed=7)
    assert [r["chunk_id"] for r in first] == [r["chunk_id"] for r in kb.random_chunks(4, seed=7)]
    assert len(first) == 4
    excluded = {r["chunk_id"] for r in first}
    assert excluded.isdisjoint(r["chunk_id"] for r in kb.random_chunks(8, seed=7, exclude_ids=excluded))
    assert {r["collection"] for r in kb.random_chunks(10, seed=1, collections=["y"])} == {"y"}
    assert kb.random_chunks(3, seed=1, collections=[]) == []


def test_unknown_version_is_not_found(settings: Settings) -> None:
    kb = KnowledgeBase(settings)
    apply(kb, chunks_for("A", ["a"]))
    with pytest.raises(NotFound):
        kb.get_chunks(["x"], version=999)


def test_vector_index_is_built_when_big_and_rebuilt_only_after_much_growth(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"retrieval": settings.retrieval.model_copy(update={"ann_min_rows": 300})}
    )
    kb = KnowledgeBase(settings)
    apply(kb, chunks_for("A", [f"row {i}" for i in range(200)]))
    assert not _vector_index(kb)  # below ann_min_rows: exact search
    apply(kb, chunks_for("B", [f"row {i}" for i in range(150)]))
    built = _vector_index(kb)
    assert built and built.index_type == "IvfHnswSq"
    apply(kb, chunks_for("C", ["a few more"]))
    assert _vector_index(kb).index_uuid == built.index_uuid  # a small change keeps the index
    apply(kb, chunks_for("D", [f"row {i}" for i in range(200)]))
    assert _vector_index(kb).index_uuid != built.index_uuid  # grew by more than a quarter: rebuilt


def _vector_index(kb: KnowledgeBase):  # type: ignore[no-untyped-def]
    return next((i for i in kb.table().list_indices() if i.columns == ["vector"]), None)


def test_answers_tagging_the_same_version_at_once_all_succeed(settings: Settings) -> None:
    """Concurrent answers (and other processes: one KnowledgeBase each here) tag the KB version they read;
    the one that loses the race to create the tag must not fail its answer (it did: HTTP 500 under load)."""
    import threading

    versions = [apply(KnowledgeBase(settings), chunks_for(f"D{i}", [f"text {i}"])) for i in range(4)]
    kbs = [KnowledgeBase(settings) for _ in range(8)]
    errors: list[BaseException] = []
    for version in versions:
        barrier = threading.Barrier(len(kbs))

        def tag(kb: KnowledgeBase, version: int = version, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                assert kb.tag(version) == f"kb-v{version}"
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                errors.append(exc)

        threads = [threading.Thread(target=tag, args=(kb,)) for kb in kbs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert {v for name, v in KnowledgeBase(settings).tags().items() if name.startswith("kb-v")} >= set(
        versions
    )
