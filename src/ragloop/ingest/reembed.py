"""Re-embedding the knowledge base with a tuned embedder: ``ragloop kb reembed --embedder ID``.

The embedder's vectors go into their own column of the ``chunks`` table (``vector__<id>``, beside the base
embedder's ``vector``), written as one new table version, recorded as a KB version whose change is
``{"reembed": id}``. Every older version is untouched, so records that name one replay exactly and it stays
servable with the base embedder. Why a column and not a second table: docs/retriever.md.

Embedding is the slow part (minutes for a large KB on a CPU), so it runs without the ingest lock; the lock
is taken only to embed the chunks an ingest added meanwhile and to write, so ingests wait seconds, not
minutes. A second run fills only the chunks still missing (ingested while the embedder was not live).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ragloop.config import Settings
from ragloop.errors import DimensionMismatch, NotFound, RagloopError
from ragloop.ingest.embed import Embedder, embedder_for, embedder_id
from ragloop.ingest.kb import KnowledgeBase, vector_column
from ragloop.ingest.pipeline import _reconcile, embedding_text, recording_version, write_lock

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks embedded, chunks to embed)


@dataclass
class ReembedReport:
    """What one re-embedding did: the KB version before and after (the same when nothing was missing),
    how many chunks were embedded and how long embedding took (throughput = n_embedded / embed_s)."""

    embedder: str
    previous_version: int
    kb_version: int
    n_embedded: int
    embed_s: float
    dim: int

    @property
    def created(self) -> bool:
        return self.kb_version != self.previous_version


def _embed(model: Embedder, rows: list[dict], batch_size: int, progress: Progress | None) -> np.ndarray:
    """Vectors of ``rows`` (table rows), batch by batch so the progress bar moves."""
    texts = [embedding_text(r["title"], r["section"], r["text"]) for r in rows]
    parts = []
    step = max(batch_size * 8, 1)  # several model batches per progress step: the bar costs nothing
    for start in range(0, len(texts), step):
        parts.append(model.encode(texts[start : start + step], batch_size=batch_size))
        if progress is not None:
            progress(min(start + step, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), dtype=np.float32)


def reembed(
    settings: Settings,
    embedder: str,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> ReembedReport:
    """Embed every chunk without a vector of ``embedder`` (all of them the first time) with that embedder
    version's model and write them as a new KB version; returns what it did.

    Checked before anything is written: the embedder exists and loads with its registered dimension, and
    an existing column for it has that dimension (DimensionMismatch otherwise: nothing changed)."""
    name = embedder_id(embedder)
    if name is None:
        raise RagloopError(
            "The base embedder's vectors are the `vector` column, written by every ingest: nothing to "
            "re-embed. Name a tuned embedder version (`--embedder ID`)."
        )
    model = embedder_for(settings, name)
    kb = KnowledgeBase(settings)
    if kb.table() is None or kb.count() == 0:
        raise NotFound("The knowledge base is empty: ingest documents before re-embedding them.")
    _check_dim(kb, name, model.dim)
    batch_size = batch_size or settings.embedding.batch_size

    t0 = time.perf_counter()
    rows = kb.rows_to_embed(name)
    done = dict(zip([r["chunk_id"] for r in rows], _embed(model, rows, batch_size, progress), strict=True))
    with write_lock(settings):
        _reconcile(settings, kb)
        _check_dim(kb, name, model.dim)  # another reembed may have made the column meanwhile
        missing = kb.rows_to_embed(name)  # at the current version: an ingest may have added chunks
        late = [r for r in missing if r["chunk_id"] not in done]
        if late:
            done.update(
                zip([r["chunk_id"] for r in late], _embed(model, late, batch_size, None), strict=True)
            )
        embed_s = time.perf_counter() - t0
        before = kb.version
        if not missing:
            return ReembedReport(name, before, before, 0, embed_s, model.dim)
        ids = [r["chunk_id"] for r in missing]
        version = kb.set_vectors(name, ids, np.stack([done[i] for i in ids]))
        change = {"reembed": name, "n_embedded": len(ids), "column": vector_column(name)}
        with recording_version(settings, kb, before, version, change, [name]):
            pass  # nothing of its own to write: the KB version row and the embedder's list of versions
    return ReembedReport(name, before, version, len(ids), embed_s, model.dim)


def _check_dim(kb: KnowledgeBase, embedder: str, dim: int) -> None:
    stored = kb.vector_columns().get(vector_column(embedder))
    if stored is not None and stored != dim:
        raise DimensionMismatch(
            f"The knowledge base stores vectors of dimension {stored} for embedder {embedder}, but its model "
            f"now makes dimension {dim}: the model changed after it was embedded. Register the new model "
            "as a new embedder version; nothing was changed."
        )
