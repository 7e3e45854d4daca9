"""The ingest command's logic on a real home: files -> one KB version + one database record, and the
guarantees around it (no-op re-ingest, per-file errors, undo on a failed record, recovery after SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from ragloop.config import Settings, init_home, load_settings
from ragloop.ingest.kb import KnowledgeBase
from ragloop.ingest.pipeline import (
    ingest_paths,
    ingest_uploads,
    make_doc_id,
    reconcile,
    remove_documents,
    sanitise_upload_name,
)
from ragloop.retrieval.search import Retriever
from ragloop.store.db import session_scope
from ragloop.store.models import Document, KBVersion


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(init_home(tmp_path / "home"))


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "policies").mkdir(parents=True)
    (root / "vacation.md").write_text("# Vacation\n\nEmployees get twenty-five days of paid vacation.\n")
    (root / "policies" / "security.txt").write_text("Passwords must be rotated every ninety days.\n")
    (root / "faq.jsonl").write_text(
        '{"id": "q1", "title": "Badges", "text": "Report a lost badge the same day."}\n'
        '{"id": "q2", "title": "Parking", "text": "Parking permits cost 30 EUR a month."}\n'
    )
    (root / ".hidden.txt").write_text("never ingested")
    (root / ".git").mkdir()
    (root / ".git" / "config.txt").write_text("never ingested")
    (root / "image.png").write_bytes(b"\x89PNG not a supported suffix")
    return root


def documents(settings: Settings) -> dict[str, Document]:
    with session_scope(settings.db_url) as s:
        return {d.id: d for d in s.scalars(select(Document))}


def versions(settings: Settings) -> list[KBVersion]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(KBVersion).order_by(KBVersion.version)))


def kb_doc_ids(settings: Settings) -> set[str]:
    table = KnowledgeBase(settings).table()
    return set() if table is None else set(table.search().select(["doc_id"]).to_arrow()["doc_id"].to_pylist())


def test_ingest_a_folder(settings: Settings, docs: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    report = ingest_paths(settings, [docs], collection="hr", progress=lambda *a: seen.append(a))
    assert report.ok and report.kb_version is not None and report.n_chunks >= 4
    assert sorted(report.added) == ["docs/faq.jsonl", "docs/policies/security.txt", "docs/vacation.md"]
    assert [s[1] for s in seen] == [0, 1, 2, 3] and {s[2] for s in seen} == {3}

    kb = KnowledgeBase(settings)
    assert kb.version == report.kb_version and f"kb-v{report.kb_version}" in kb.tags()
    docs_by_id = documents(settings)
    assert len(docs_by_id) == 4  # two JSONL records are two documents
    assert kb_doc_ids(settings) == set(docs_by_id)
    assert make_doc_id("hr", "docs/faq.jsonl", "q2") in docs_by_id
    assert all(not Path(d.source_path).is_absolute() for d in docs_by_id.values())
    (record,) = versions(settings)
    assert record.version == report.kb_version and record.tag == f"kb-v{record.version}"
    assert sorted(record.change["added"]) == sorted(report.added) and record.n_chunks == kb.count()


def test_a_single_file_is_labelled_by_its_name(settings: Settings, docs: Path) -> None:
    report = ingest_paths(settings, [docs / "policies" / "security.txt"])
    assert report.added == ["security.txt"]
    assert {d.collection for d in documents(settings).values()} == {settings.ingest.default_collection}


def test_unchanged_reingest_is_a_no_op(settings: Settings, docs: Path) -> None:
    first = ingest_paths(settings, [docs])
    again = ingest_paths(settings, [docs])
    assert sorted(again.unchanged) == sorted(first.added) and not again.added and not again.replaced
    assert again.kb_version == first.kb_version == KnowledgeBase(settings).version
    assert len(versions(settings)) == 1


def test_a_changed_file_replaces_its_chunks(settings: Settings, docs: Path) -> None:
    first = ingest_paths(settings, [docs])
    kb = KnowledgeBase(settings)
    vacation = make_doc_id("default", "docs/vacation.md", "")
    old_ids = {r["chunk_id"] for r in kb.random_chunks(100, seed=0) if r["doc_id"] == vacation}

    (docs / "vacation.md").write_text("# Vacation\n\nEmployees now get thirty days of paid vacation.\n")
    (docs / "faq.jsonl").write_text(
        '{"id": "q1", "title": "Badges", "text": "Report a lost badge at once."}\n'
    )
    second = ingest_paths(settings, [docs])
    assert sorted(second.replaced) == ["docs/faq.jsonl", "docs/vacation.md"]
    assert second.unchanged == ["docs/policies/security.txt"]
    assert second.kb_version > first.kb_version

    assert kb.get_chunks(list(old_ids)) == {}  # gone now...
    kb.compact()
    assert set(kb.get_chunks(list(old_ids), version=first.kb_version)) == old_ids  # ...kept at the tagged one
    assert make_doc_id("default", "docs/faq.jsonl", "q2") not in documents(settings)  # record gone from file
    assert kb_doc_ids(settings) == set(documents(settings))
    hit = Retriever(settings, kb).search("how many vacation days", 1)[0]
    assert "thirty" in hit.text
    assert versions(settings)[-1].change["replaced"] == second.replaced


def test_remove_by_source_path_and_doc_id(settings: Settings, docs: Path) -> None:
    ingest_paths(settings, [docs])
    vacation = make_doc_id("default", "docs/vacation.md", "")
    report = remove_documents(settings, ["docs/faq.jsonl", vacation, "nope.txt"])
    assert sorted(report.removed) == ["docs/faq.jsonl", "docs/vacation.md"]
    assert report.errors == [("nope.txt", "no such document id or source path")]
    assert {d.source_path for d in documents(settings).values()} == {"docs/policies/security.txt"}
    assert kb_doc_ids(settings) == set(documents(settings))
    assert versions(settings)[-1].change["removed"] == report.removed


def test_per_file_errors_do_not_stop_the_rest(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.txt").write_text("A perfectly fine document about ninety-day password rotation.\n")
    (folder / "broken.json").write_text('{"text": "unterminated')
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (folder / "empty.md").write_text("   \n")
    report = ingest_paths(settings, [folder, tmp_path / "missing.txt"])
    assert report.added == ["mixed/good.txt"]
    failed = dict(report.errors)
    assert set(failed) == {"mixed/broken.json", "mixed/broken.pdf", "mixed/empty.md", "missing.txt"}
    assert not report.ok and report.kb_version is not None
    assert len(documents(settings)) == 1


def test_uploads_are_labels_only(settings: Settings, tmp_path: Path) -> None:
    before = set(tmp_path.rglob("*"))
    report = ingest_uploads(
        settings,
        [
            ("../../etc/evil.txt", b"uploaded text one"),
            ("C:\\Users\\x\\notes.md", b"# Notes\n\nsecond"),
            ("..", b"x"),
            ("a\x00b.txt", b"third upload"),
        ],
        collection="uploads",
    )
    assert sorted(report.added) == ["ab.txt", "evil.txt", "notes.md"]
    assert [source for source, _ in report.errors] == [".."]
    created = {p for p in set(tmp_path.rglob("*")) - before if "home" not in p.relative_to(tmp_path).parts}
    assert created == set()  # nothing written outside the home
    assert sanitise_upload_name("/abs/path/x.txt") == "x.txt"


def test_a_failed_database_record_undoes_the_kb_write(settings: Settings, docs: Path) -> None:
    first = ingest_paths(settings, [docs / "vacation.md"])
    kb = KnowledgeBase(settings)
    rows_before = kb.count()

    def refuse(session: Session) -> None:  # the commit that records a KB version fails
        if any(isinstance(o, KBVersion) for o in [*session.new, *session.identity_map.values()]):
            raise RuntimeError("database is down")

    event.listen(Session, "before_commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="database is down"):
            ingest_paths(settings, [docs / "policies" / "security.txt"])
    finally:
        event.remove(Session, "before_commit", refuse)

    assert kb.count() == rows_before and kb_doc_ids(settings) == set(documents(settings))
    assert reconcile(settings) is None  # already consistent: nothing to restore
    assert [v.version for v in versions(settings)] == [first.kb_version]
    assert ingest_paths(settings, [docs / "policies" / "security.txt"]).added == ["security.txt"]


def test_sigkill_between_kb_write_and_record_is_reconciled(settings: Settings, docs: Path) -> None:
    first = ingest_paths(settings, [docs / "vacation.md"])
    script = (
        "import sys; from pathlib import Path; from ragloop.config import load_settings; "
        "from ragloop.ingest.pipeline import ingest_paths; "
        "ingest_paths(load_settings(Path(sys.argv[1])), [Path(sys.argv[2])])"
    )
    env = {**os.environ, "RAGLOOP_TEST_CRASH_AFTER_KB_WRITE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(settings.home), str(docs / "policies")],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    kb = KnowledgeBase(settings)
    assert kb.version > first.kb_version  # the table holds a write the database never recorded
    assert kb_doc_ids(settings) != set(documents(settings))

    report = ingest_paths(settings, [docs / "faq.jsonl"])  # the next ingest reconciles first
    assert report.ok and report.added == ["faq.jsonl"]
    assert kb_doc_ids(settings) == set(documents(settings))
    assert "docs/policies/security.txt" not in {d.source_path for d in documents(settings).values()}
    assert [v.version for v in versions(settings)] == [first.kb_version, report.kb_version]
    assert reconcile(settings) is None


def test_reconcile_after_a_crash_on_the_very_first_ingest(settings: Settings, docs: Path) -> None:
    kb = KnowledgeBase(settings)
    kb.apply(*_one_chunk(settings), [])  # a write no database record ever followed
    assert reconcile(settings) == 0
    assert kb.count() == 0 and kb.committed_version == kb.version
    assert reconcile(settings) is None  # the emptied table is known to match the (empty) database


def _one_chunk(settings: Settings):  # type: ignore[no-untyped-def]
    from ragloop.ingest.chunking import Chunk
    from ragloop.ingest.embed import get_embedder

    chunk = Chunk("c1", "d1", "default", "x.txt", "x", "", "orphan text", 0, 11, 0, "0" * 64)
    return [chunk], get_embedder(settings.embedding).encode([chunk.text])
