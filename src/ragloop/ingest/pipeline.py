"""Stage 1, the ingest command: files -> documents -> chunks -> one knowledge-base change + one DB record.

One call (``ingest_paths``, ``ingest_uploads`` or ``remove_documents``) makes at most one KB version:
all its changes go to LanceDB in one ``kb.apply``, then one database transaction records the ``Document``
rows and a ``KBVersion``. LanceDB is written first; if the record cannot be made the write is undone with
``kb.restore``, and if the process dies in between, ``reconcile`` (run before every write and when the
server starts) finds the table ahead of the database and restores the last recorded version. Writers take
a file lock in the home so two ingests never interleave, and never undo each other's in-flight write.

New chunks are embedded with the base embedder and with every tuned embedder that is live (an alias or a
running A/B arm serves it, ``store.aliases.live_embedders``) and has a column already (``ingest.reembed``
made it), so switching embedder never meets chunks it cannot find.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from ragloop.config import Settings
from ragloop.errors import IngestError, RagloopError
from ragloop.ingest.chunking import Chunk, chunk_document
from ragloop.ingest.embed import Embedder, embedder_for, get_embedder
from ragloop.ingest.kb import KnowledgeBase, vector_column, version_tag
from ragloop.ingest.loaders import SUPPORTED_SUFFIXES, load_bytes
from ragloop.store.aliases import live_embedders
from ragloop.store.db import SessionOrUrl, session_of, session_scope
from ragloop.store.models import Document, EmbedderVersion, KBVersion, utcnow

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (source path, files done, files in total)

# Bump when what is embedded for a chunk changes: every file's content hash changes with it, so the next
# ingest re-embeds everything instead of keeping vectors of the old kind.
EMBED_FORMAT = 2


@dataclass
class IngestReport:
    """What one ingest or remove call did. Lists hold source paths.

    ``kb_version`` is the KB version after the call (a new one only if something changed; None while the
    KB is empty); ``n_chunks`` is the number of chunks this call wrote.
    """

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    kb_version: int | None = None
    n_chunks: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def passage_text(chunk: Chunk) -> str:
    """What is embedded for a chunk: its title and heading path, then its text.

    A chunk's text alone often lacks the subject it is about (a paragraph under "Article 17 Right to
    erasure" never says "erasure"); on HotpotQA, putting the title in front raised dense recall@5 (see
    bench/retrieval.py).
    """
    return embedding_text(chunk.title, chunk.section, chunk.text)


def embedding_text(title: str, section: str, text: str) -> str:
    """``passage_text`` from a chunk's fields (a table row, when re-embedding)."""
    path = section.split(" > ") if section else []
    if path and path[0] == title:  # a Markdown file's first heading is usually its title too
        path = path[1:]
    head = " > ".join(part for part in (title, *path) if part)
    return f"{head}\n{text}" if head else text


def embed_chunks(embedder: Embedder, chunks: list[Chunk], batch_size: int) -> np.ndarray:
    return embedder.encode([passage_text(c) for c in chunks], batch_size=batch_size)


def make_doc_id(collection: str, source_path: str, doc_key: str) -> str:
    """Stable id of one document: the same file (or JSON record) in the same collection keeps it."""
    return hashlib.sha256(f"{collection}\x00{source_path}\x00{doc_key}".encode()).hexdigest()[:32]


def content_hash(data: bytes, settings: Settings) -> str:
    """Hash of a file's bytes and of every setting that shapes its chunks and vectors."""
    emb = settings.embedding
    recipe = json.dumps([emb.model, emb.chunk_tokens, emb.chunk_overlap, EMBED_FORMAT])
    return hashlib.sha256(data + b"\x00" + recipe.encode()).hexdigest()


def sanitise_upload_name(name: str) -> str:
    """An upload's name reduced to a safe label: the base name, no control characters, no '..'.

    The label is only recorded as ``source_path``; nothing is ever written under it.
    """
    base = PurePosixPath(name.replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", "..") or len(base) > 255:
        raise IngestError(
            f"Upload name {name[:80]!r} is not usable; give the file a plain name like notes.md."
        )
    return base


# Sources ---------------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One file to ingest: a path on disk or uploaded bytes, and the label recorded for it."""

    source_path: str
    path: Path | None = None
    data: bytes | None = None
    error: str | None = None  # a problem found while listing it (missing path, bad upload name)

    def read(self, settings: Settings) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        limit = settings.limits.max_file_bytes
        try:
            if self.path.stat().st_size > limit:  # before reading: never load a huge file into memory
                raise IngestError(
                    f"{self.path.name}: over the limit of {limit:,} bytes; split the file or raise "
                    "[limits] max_file_bytes in ragloop.toml."
                )
            return self.path.read_bytes()
        except OSError as exc:
            raise IngestError(f"{self.path.name}: cannot be read ({exc.strerror or exc}).") from exc


def _discover(paths: list[Path]) -> list[_Source]:
    """Files under the given paths, labelled relative to the argument (``docs/a/b.md``, ``notes.md``).

    Folders are walked recursively for supported suffixes, skipping hidden files and folders and not
    following symlinked folders (no loops, no wandering outside the tree the user named).
    """
    sources: list[_Source] = []
    for path in paths:
        label = path.name or path.resolve().name
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                rel_folder = Path(folder).relative_to(path)
                for name in sorted(files):
                    if name.startswith(".") or Path(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                        continue
                    rel = (rel_folder / name).as_posix()
                    sources.append(_Source(source_path=f"{label}/{rel}", path=Path(folder) / name))
        elif path.is_file():
            sources.append(_Source(source_path=label, path=path))
        else:
            sources.append(_Source(source_path=label, error=f"{label}: no such file or folder."))
    return sources


# Locking and reconciling -----------------------------------------------------------------------------------


@contextmanager
def write_lock(settings: Settings) -> Iterator[None]:
    """Exclusive across processes for one home; released by the OS even if the holder is killed."""
    lock_path = settings.data_dir / "kb.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def kb_versions(db: SessionOrUrl) -> list[KBVersion]:
    """Every recorded knowledge-base version, oldest first, with what changed in each."""
    with session_of(db) as session:
        return list(session.scalars(select(KBVersion).order_by(KBVersion.version)))


def reconcile(settings: Settings, kb: KnowledgeBase | None = None) -> int | None:
    """Undo a KB write the database never recorded (a crash between the two); return the version restored
    to, or None if the KB already matched. Takes the write lock."""
    with write_lock(settings):
        return _reconcile(settings, kb or KnowledgeBase(settings))


def _reconcile(settings: Settings, kb: KnowledgeBase) -> int | None:
    with session_scope(settings.db_url) as s:
        recorded = s.scalar(select(func.max(KBVersion.version)))
    current = kb.version
    if current == (recorded or 0) or (current and kb.committed_version == current):
        if recorded:
            kb.tag(recorded)  # a crash after the DB commit may have left the recorded version untagged
        return None
    log.warning(
        "Knowledge base at version %s is ahead of the last recorded version %s (an ingest died between "
        "writing LanceDB and recording it); restoring version %s.",
        current,
        recorded,
        recorded or "0 (empty)",
    )
    kb.restore(recorded or 0)
    kb.mark_committed()
    return recorded or 0


# Ingesting -------------------------------------------------------------------------------------------------


def ingest_paths(
    settings: Settings,
    paths: list[Path],
    *,
    collection: str | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest files and folders (see ``_discover`` for what is picked up) as one KB change."""
    return _ingest(settings, _discover(paths), _collection(settings, collection), progress)


def ingest_uploads(
    settings: Settings,
    files: list[tuple[str, bytes]],
    *,
    collection: str | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest uploaded files (HTTP API) as one KB change; names are labels only, never paths."""
    sources = []
    for name, data in files:
        try:
            label = sanitise_upload_name(name)
        except IngestError as exc:
            sources.append(_Source(source_path=name[:80], error=str(exc)))
            continue
        if len(data) > settings.limits.max_upload_bytes:
            sources.append(_Source(source_path=label, error=f"{label}: over the upload limit."))
            continue
        sources.append(_Source(source_path=label, data=data))
    return _ingest(settings, sources, _collection(settings, collection), progress)


def _collection(settings: Settings, collection: str | None) -> str:
    name = settings.ingest.default_collection if collection is None else collection.strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise RagloopError(f"Collection name {name[:140]!r} must be 1-128 printable characters.")
    return name


@dataclass
class _Change:
    """Everything one call will apply: new chunks and vectors, documents to delete, rows to record."""

    chunks: list[Chunk] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    delete_doc_ids: list[str] = field(default_factory=list)
    documents: list[dict] = field(default_factory=list)  # Document fields, kb_version added at commit
    # Live tuned embedders (by id) and their vectors of ``chunks``, batch by batch like ``vectors``.
    embedders: dict[str, Embedder] = field(default_factory=dict)
    embedder_vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)


def tuned_embedders(settings: Settings, kb: KnowledgeBase) -> dict[str, Embedder]:
    """The live tuned embedders new chunks are embedded with too: those an alias or a running A/B arm
    serves whose column the knowledge base has. A live one without a column (never re-embedded: a release
    refuses that) is skipped with a warning; ``ragloop kb reembed`` adds it with every chunk."""
    columns = kb.vector_columns()
    out: dict[str, Embedder] = {}
    for embedder in sorted(live_embedders(settings.db_url)):
        if vector_column(embedder) not in columns:
            log.warning(
                "embedder %s is served but the knowledge base has no column for it; run "
                "`ragloop kb reembed --embedder %s`",
                embedder,
                embedder,
            )
            continue
        out[embedder] = embedder_for(settings, embedder)
    return out


def _ingest(
    settings: Settings, sources: list[_Source], collection: str, progress: Progress | None
) -> IngestReport:
    report = IngestReport()
    embedder = get_embedder(settings.embedding)
    kb = KnowledgeBase(settings)
    with write_lock(settings):
        _reconcile(settings, kb)
        with session_scope(settings.db_url) as s:
            existing: dict[str, list[Document]] = {}
            for doc in s.scalars(select(Document).where(Document.collection == collection)):
                existing.setdefault(doc.source_path, []).append(doc)
        change = _Change(embedders=tuned_embedders(settings, kb))
        seen: set[str] = set()
        for i, source in enumerate(sources):
            if progress is not None:
                progress(source.source_path, i, len(sources))
            if source.source_path in seen:
                report.errors.append((source.source_path, "the same source path twice in one ingest"))
                continue
            seen.add(source.source_path)
            try:
                _ingest_one(
                    settings,
                    embedder,
                    source,
                    collection,
                    existing.get(source.source_path, []),
                    change,
                    report,
                )
            except IngestError as exc:
                report.errors.append((source.source_path, str(exc)))
            except RagloopError:  # a bad setting fails every file alike: stop and say so once
                raise
            except Exception as exc:  # a parser bug on one file must not sink the rest of a big ingest
                log.exception("ingesting %s failed", source.source_path)
                report.errors.append((source.source_path, f"unexpected {type(exc).__name__}: {exc}"))
        if progress is not None:
            progress("", len(sources), len(sources))
        _commit(settings, kb, change, report)
    return report


def _ingest_one(
    settings: Settings,
    embedder: Embedder,
    source: _Source,
    collection: str,
    old_docs: list[Document],
    change: _Change,
    report: IngestReport,
) -> None:
    """Add this file's changes to ``change`` and its outcome to ``report`` (raises IngestError)."""
    if source.error is not None:
        raise IngestError(source.error)
    data = source.read(settings)
    digest = content_hash(data, settings)
    if old_docs and all(d.content_hash == digest for d in old_docs):
        report.unchanged.append(source.source_path)
        return
    docs = load_bytes(PurePosixPath(source.source_path).name, data, settings.ingest, settings.limits)
    chunks: list[Chunk] = []
    rows: list[dict] = []
    for doc in docs:
        doc_id = make_doc_id(collection, source.source_path, doc.doc_key)
        doc_chunks = chunk_document(
            doc,
            doc_id=doc_id,
            collection=collection,
            source_path=source.source_path,
            tokenizer=embedder.tokenizer,
            chunk_tokens=settings.embedding.chunk_tokens,
            overlap=settings.embedding.chunk_overlap,
        )
        chunks.extend(doc_chunks)
        rows.append(
            {
                "id": doc_id,
                "collection": collection,
                "source_path": source.source_path,
                "title": doc.title,
                "content_hash": digest,
                "n_chunks": len(doc_chunks),
            }
        )
        if len(chunks) > settings.limits.max_chunks_per_file:
            raise IngestError(
                f"{source.source_path}: more than {settings.limits.max_chunks_per_file:,} chunks; split the "
                "file or raise [limits] max_chunks_per_file in ragloop.toml."
            )
    if not chunks:
        raise IngestError(f"{source.source_path}: no text could be extracted; there is nothing to ingest.")
    if len({r["id"] for r in rows}) != len(rows):
        raise IngestError(f"{source.source_path}: two records share an id; record ids must be unique.")
    change.vectors.append(embed_chunks(embedder, chunks, settings.embedding.batch_size))
    for name, tuned in change.embedders.items():
        vectors = embed_chunks(tuned, chunks, settings.embedding.batch_size)
        change.embedder_vectors.setdefault(name, []).append(vectors)
    change.chunks.extend(chunks)
    change.documents.extend(rows)
    # Every old document of the file goes: a replaced record keeps its id and gets new chunks, a record
    # gone from a JSONL file must not linger.
    change.delete_doc_ids.extend(d.id for d in old_docs)
    (report.replaced if old_docs else report.added).append(source.source_path)


@contextmanager
def recording_version(
    settings: Settings, kb: KnowledgeBase, before: int, version: int, change: dict, embedders: Iterable[str]
) -> Iterator[Session]:
    """Record KB version ``version`` (already written to the table) in one transaction: its KBVersion row,
    the tuned embedders whose columns it filled, and whatever the caller writes in the session it is given.
    If recording fails the table goes back to ``before``, so the knowledge base never serves a version the
    records do not know; once recorded, the version is tagged (kept by compaction) and marked committed.
    Ingest and re-embedding both end this way."""
    try:
        with session_scope(settings.db_url) as s:
            yield s
            s.add(KBVersion(version=version, change=change, n_chunks=kb.count(), tag=version_tag(version)))
            for name in embedders:
                row = s.get(EmbedderVersion, name)
                if row is not None:  # a new list: JSON columns do not track in-place changes
                    row.kb_versions = [*(row.kb_versions or []), version]
    except BaseException:
        log.error("Recording KB version %s failed; restoring version %s.", version, before)
        kb.restore(before)
        kb.mark_committed()
        raise
    kb.tag(version)
    kb.mark_committed(version)


def _commit(settings: Settings, kb: KnowledgeBase, change: _Change, report: IngestReport) -> None:
    """Apply ``change`` to the KB as one version and record it; undo the KB write if recording fails."""
    before = kb.version
    report.kb_version = before or None
    if not change.chunks and not change.delete_doc_ids:
        return
    vectors = np.concatenate(change.vectors) if change.vectors else np.zeros((0, 0), dtype=np.float32)
    tuned = {name: np.concatenate(parts) for name, parts in change.embedder_vectors.items()}
    version = kb.apply(change.chunks, vectors, change.delete_doc_ids, tuned)
    if os.environ.get("RAGLOOP_TEST_CRASH_AFTER_KB_WRITE") == "1":  # tests: die between the two writes
        os.kill(os.getpid(), signal.SIGKILL)
    what = {"added": report.added, "replaced": report.replaced, "removed": report.removed}
    if tuned:  # which tuned embedders' columns the new chunks filled (the base one always is)
        what["embedders"] = sorted(tuned)
    with recording_version(settings, kb, before, version, what, tuned) as s:
        new_ids = {row["id"] for row in change.documents}
        for doc_id in change.delete_doc_ids:
            if doc_id not in new_ids:
                doc = s.get(Document, doc_id)
                if doc is not None:
                    s.delete(doc)
        now = utcnow()
        for row in change.documents:
            doc = s.get(Document, row["id"])
            if doc is None:
                s.add(Document(**row, kb_version=version, created_at=now, updated_at=now))
            else:
                for key, value in row.items():
                    setattr(doc, key, value)
                doc.kb_version, doc.updated_at = version, now
    report.kb_version = version
    report.n_chunks = len(change.chunks)


# Removing --------------------------------------------------------------------------------------------------


def remove_documents(
    settings: Settings, doc_ids_or_source_paths: list[str], collection: str | None = None
) -> IngestReport:
    """Delete documents, named by document id or source path (optionally within one collection), as one
    KB change. Names that match nothing are reported as errors; the others are still removed."""
    report = IngestReport()
    kb = KnowledgeBase(settings)
    with write_lock(settings):
        _reconcile(settings, kb)
        change = _Change()
        with session_scope(settings.db_url) as s:
            for name in dict.fromkeys(doc_ids_or_source_paths):
                query = select(Document).where(or_(Document.id == name, Document.source_path == name))
                if collection is not None:
                    query = query.where(Document.collection == collection)
                docs = list(s.scalars(query))
                if not docs:
                    report.errors.append((name, "no such document id or source path"))
                    continue
                for doc in docs:
                    if doc.id not in change.delete_doc_ids:
                        change.delete_doc_ids.append(doc.id)
                        if doc.source_path not in report.removed:
                            report.removed.append(doc.source_path)
        _commit(settings, kb, change, report)
    return report
