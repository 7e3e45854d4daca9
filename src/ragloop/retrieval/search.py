"""Hybrid search over the knowledge base: dense + full text, fused by weighted reciprocal rank fusion.

The two searches run separately, each returning ``settings.retrieval.candidates`` rows, and are fused here:

    score(chunk) = sum over methods m that found it of  weight_m / (rrf_k + rank_m)

LanceDB has a built-in hybrid query, but its rerankers return one fused score and hide each method's own
score and rank; we record those per passage (they are what curation and evaluation later look at), so the
fusion is the few lines of ``fuse`` below.

``embedder`` picks whose vectors the dense search compares: None, the base embedder and the ``vector`` column;
a tuned embedder version, its own query model and its own column (``ingest.kb.vector_column``). A KB version
made before that embedder re-embedded the knowledge base has no such column: asking it is an error that says
which command fixes it, never a silent fall-back to another embedder.

``collections`` is a security scope, not a hint: it is applied as a LanceDB prefilter on both searches, as
a bound expression (never SQL text built from user input), so no row outside it can come back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from lancedb.expr import Expr, col, lit
from lancedb.query import MultiMatchQuery

from ragloop.config import Settings
from ragloop.errors import Conflict, DimensionMismatch, RagloopError
from ragloop.ingest.embed import Embedder, embedder_for, get_embedder
from ragloop.ingest.kb import CHUNK_COLUMNS, FTS_COLUMNS, KnowledgeBase, vector_column, vector_dims

log = logging.getLogger(__name__)

MODES = ("hybrid", "dense", "fulltext")
# Metadata a caller may filter on by equality; anything else is refused rather than passed to LanceDB.
FILTER_COLUMNS = ("doc_id", "source_path", "title", "section", "collection")
# BM25 is summed over these fields, each times its boost. A word of the question found in a chunk's title
# counts double: on HotpotQA train questions boost 2 beat 1, 1.5, 3 and 4 (bench/retrieval.py), and it is
# the usual search-engine default for titles.
FULLTEXT_BOOSTS = {"text": 1.0, "title": 2.0, "section": 1.0}
MAX_QUERY_CHARS = 2000  # a BM25 query is a bag of terms; past this, more terms only cost time
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass
class Hit:
    """One retrieved chunk with its fused score and each method's own score and 1-based rank."""

    chunk_id: str
    doc_id: str
    collection: str
    source_path: str
    title: str
    section: str
    text: str
    text_sha256: str
    char_start: int
    char_end: int
    score: float  # weighted reciprocal rank fusion
    score_dense: float | None = None  # cosine similarity
    score_fulltext: float | None = None  # BM25
    rank_dense: int | None = None
    rank_fulltext: int | None = None


# The Hit fields copied from a table row as they are.
_HIT_COLUMNS = (
    "chunk_id",
    "doc_id",
    "collection",
    "source_path",
    "title",
    "section",
    "text",
    "text_sha256",
    "char_start",
    "char_end",
)


@dataclass
class SearchTimings:
    """Milliseconds spent in each step of the last search (the benchmark reports them separately)."""

    embed_ms: float = 0.0
    dense_ms: float = 0.0
    fulltext_ms: float = 0.0


def fuse(
    dense: list[dict], fulltext: list[dict], *, dense_weight: float, fulltext_weight: float, rrf_k: int
) -> list[Hit]:
    """Weighted reciprocal rank fusion of two ranked lists of rows; best first.

    Ties (equal fused score) go to the higher cosine, then the chunk id, so the order is deterministic.
    """
    hits: dict[str, Hit] = {}

    def hit_for(row: dict) -> Hit:
        hit = hits.get(row["chunk_id"])
        if hit is None:
            fields = {name: row[name] for name in _HIT_COLUMNS}
            hit = hits[row["chunk_id"]] = Hit(**fields, score=0.0)
        return hit

    for rank, row in enumerate(dense, start=1):
        hit = hit_for(row)
        hit.score += dense_weight / (rrf_k + rank)
        hit.rank_dense = rank
        hit.score_dense = 1.0 - float(row["_distance"])  # LanceDB's cosine distance is 1 - cosine
    for rank, row in enumerate(fulltext, start=1):
        hit = hit_for(row)
        hit.score += fulltext_weight / (rrf_k + rank)
        hit.rank_fulltext = rank
        hit.score_fulltext = float(row["_score"])
    return sorted(
        hits.values(),
        key=lambda h: (-h.score, -(h.score_dense if h.score_dense is not None else -2.0), h.chunk_id),
    )


def scope_filter(collections: list[str] | None, filters: dict[str, Any] | None) -> Expr | None:
    """The prefilter for a search: collection scope AND metadata equality filters, as a bound expression.

    Filter values may be a string or a list of strings (any of them). Unknown keys and non-string values
    are refused with a message naming what is allowed.
    """
    parts: list[Expr] = []
    if isinstance(collections, str):  # iterating a bare name would scope the search to its letters
        raise RagloopError("collections must be a list of collection names, not one string.")
    if collections is not None:
        parts.append(col("collection").isin([_string("collections", c) for c in collections]))
    for key, value in (filters or {}).items():
        if key not in FILTER_COLUMNS:
            raise RagloopError(f"Unknown filter {key!r}: filters can only be on {', '.join(FILTER_COLUMNS)}.")
        if isinstance(value, list | tuple):
            parts.append(col(key).isin([_string(key, v) for v in value]))
        else:
            parts.append(col(key) == lit(_string(key, value)))
    if not parts:
        return None
    where = parts[0]
    for part in parts[1:]:
        where = where & part
    return where


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RagloopError(f"Filter {name!r} takes strings, got {type(value).__name__} {value!r}.")
    return value


def fulltext_query(query: str) -> str:
    """The query as plain terms for BM25: no control characters, bounded length; "" if nothing is left.

    It is sent as a LanceDB match query, which treats the text as terms, never as query syntax, so quotes,
    ``AND``/``OR``, ``:`` or ``*`` typed by a user are just characters.
    """
    text = _CONTROL.sub(" ", query)[:MAX_QUERY_CHARS]
    return " ".join(text.split()) if any(ch.isalnum() for ch in text) else ""


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Threads for full-text searches, shared by every Retriever of the process."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ragloop-fulltext")
        return _POOL


def dense_column(table: Any, embedder: str | None, version: int | None, dim: int | None = None) -> str:
    """The column ``embedder``'s vectors are in at this table version; a clear error when there is none
    (the version predates its re-embedding) or when ``dim`` (the query model's) differs from the column's."""
    column = vector_column(embedder)
    dims = vector_dims(table.schema)
    at = f"version {version}" if version is not None else f"its current version {int(table.version)}"
    if column not in dims:
        raise Conflict(
            f"The knowledge base at {at} has no vectors of embedder {embedder!r}: re-embed it first "
            f"(`ragloop kb reembed --embedder {embedder}`); KB versions before that serve the base embedder."
        )
    if dim is not None and dims[column] != dim:
        raise DimensionMismatch(
            f"Embedder {embedder or 'base'} makes vectors of dimension {dim}, but the knowledge base at {at} "
            f"stores dimension {dims[column]} for it: the model changed since it was embedded. Re-embed with "
            "a new embedder version; nothing was searched."
        )
    return column


def ready_embedder(settings: Settings, embedder: str | None, kb: KnowledgeBase | None = None) -> Embedder:
    """Load ``embedder`` and check the current knowledge base can be searched with it: its column exists,
    has its dimension and a vector for every chunk. What a release checks before an alias or an A/B arm
    serves an embedder, so no request meets a half-embedded knowledge base."""
    loaded = embedder_for(settings, embedder)
    if embedder is None:
        return loaded
    kb = kb or KnowledgeBase(settings)
    table = kb.table()
    if table is None:
        raise Conflict("The knowledge base is empty: ingest documents, then `ragloop kb reembed`.")
    dense_column(table, embedder, None, loaded.dim)
    missing = kb.missing_vectors(embedder)
    if missing:
        raise Conflict(
            f"{missing} chunks of the knowledge base have no vectors of embedder {embedder} (ingested while "
            f"it was not served): run `ragloop kb reembed --embedder {embedder}` to fill them."
        )
    return loaded


class Retriever:
    """Hybrid search over one ``KnowledgeBase``; safe to share between threads."""

    def __init__(self, settings: Settings, kb: KnowledgeBase | None = None):
        self.settings = settings
        self.kb = kb or KnowledgeBase(settings)
        self.embedder = get_embedder(settings.embedding)
        self._embedders: dict[str, Embedder] = {}  # tuned embedder versions by id (their rows never change)

    def embedder_for(self, embedder: str | None) -> Embedder:
        """The query model of ``embedder`` (None: the base one), loaded on first use."""
        if embedder is None:
            return self.embedder
        loaded = self._embedders.get(embedder)
        if loaded is None:
            loaded = self._embedders[embedder] = embedder_for(self.settings, embedder)
        return loaded

    def embed_query(self, query: str, embedder: str | None = None) -> np.ndarray:
        """The query's unit vector (exposed so the benchmark can time it apart from the search)."""
        return self.embedder_for(embedder).encode([query])[0]

    def search(
        self,
        query: str,
        k: int | None = None,
        *,
        collections: list[str] | None = None,
        filters: dict[str, Any] | None = None,
        mode: str = "hybrid",
        version: int | None = None,
        query_vector: np.ndarray | None = None,
        timings: SearchTimings | None = None,
        embedder: str | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (default ``retrieval.top_k``), best first.

        ``collections``: only rows of these collections can be returned (``[]`` returns nothing; None means
        every collection). ``filters``: equality on doc_id, source_path, title, section or collection.
        ``mode``: hybrid, dense or fulltext. ``version``: search the KB as it was at that version (replay).
        ``query_vector``: a precomputed embedding of ``query`` (by ``embedder``). ``timings``: filled in if
        given. ``embedder``: whose query model and column the dense search uses (None: the base embedder).
        In hybrid mode a method whose weight is 0 is not run at all.
        """
        if mode not in MODES:
            raise RagloopError(f"Unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}.")
        cfg = self.settings.retrieval
        k = cfg.top_k if k is None else k
        if k <= 0:
            return []
        dense, fulltext = self.candidates(
            query,
            max(cfg.candidates, k),
            collections=collections,
            filters=filters,
            version=version,
            dense=mode == "dense" or (mode == "hybrid" and cfg.dense_weight > 0),
            fulltext=mode == "fulltext" or (mode == "hybrid" and cfg.fulltext_weight > 0),
            query_vector=query_vector,
            timings=timings,
            embedder=embedder,
        )
        hybrid = mode == "hybrid"
        hits = fuse(
            dense,
            fulltext,
            dense_weight=cfg.dense_weight if hybrid else 1.0,
            fulltext_weight=cfg.fulltext_weight if hybrid else 1.0,
            rrf_k=cfg.rrf_k,
        )
        return hits[:k]

    def candidates(
        self,
        query: str,
        n: int,
        *,
        collections: list[str] | None = None,
        filters: dict[str, Any] | None = None,
        version: int | None = None,
        dense: bool = True,
        fulltext: bool = True,
        query_vector: np.ndarray | None = None,
        timings: SearchTimings | None = None,
        embedder: str | None = None,
    ) -> tuple[list[dict], list[dict]]:
        """The ``n`` best rows of each method before fusion, best first (dense rows carry ``_distance``,
        full-text rows ``_score``). ``search`` fuses them; the benchmark fuses them under many weights."""
        where = scope_filter(collections, filters)  # validates filters even when nothing will be searched
        if n <= 0 or (collections is not None and not collections) or not query.strip():
            return [], []
        table = self.kb.table(version)
        if table is None:
            return [], []
        timings = timings if timings is not None else SearchTimings()
        column = None
        if dense:  # checked before anything runs: a KB version without the embedder's column is an error
            dim = len(query_vector) if query_vector is not None else self.embedder_for(embedder).dim
            column = dense_column(table, embedder, version, dim)
        # The full-text search runs in a worker thread while this one embeds the query and runs the vector
        # search: LanceDB does its work outside the GIL, so hybrid costs about the slower of the two.
        pending = _pool().submit(self._timed_fulltext, table, query, n, where, timings) if fulltext else None
        dense_rows: list[dict] = []
        if dense:
            t0 = time.perf_counter()
            vector = self.embed_query(query, embedder) if query_vector is None else query_vector
            t1 = time.perf_counter()
            dense_rows = self._dense(table, vector, n, where, column or "vector")
            timings.embed_ms = (t1 - t0) * 1000
            timings.dense_ms = (time.perf_counter() - t1) * 1000
        fulltext_rows = pending.result() if pending is not None else []
        return dense_rows, fulltext_rows

    @staticmethod
    def _dense(
        table: Any, vector: np.ndarray, n: int, where: Expr | None, column: str = "vector"
    ) -> list[dict]:
        query = (
            table.search(np.asarray(vector, dtype=np.float32), vector_column_name=column)
            .distance_type("cosine")
            # Only used when a vector index exists: a wider HNSW beam, then exact cosine for the
            # shortlist, so recorded dense scores are true cosines rather than quantised estimates.
            .ef(max(100, 2 * n))
            .refine_factor(2)
            .select([*CHUNK_COLUMNS, "_distance"])
            .limit(n)
        )
        if where is not None:
            query = query.where(where, prefilter=True)
        return query.to_list()

    @classmethod
    def _timed_fulltext(
        cls, table: Any, query: str, n: int, where: Expr | None, timings: SearchTimings
    ) -> list[dict]:
        t0 = time.perf_counter()
        rows = cls._fulltext(table, query, n, where)
        timings.fulltext_ms = (time.perf_counter() - t0) * 1000
        return rows

    @staticmethod
    def _fulltext(table: Any, query: str, n: int, where: Expr | None) -> list[dict]:
        terms = fulltext_query(query)
        if not terms:
            return []
        search = (
            table.search(
                MultiMatchQuery(terms, list(FTS_COLUMNS), boosts=[FULLTEXT_BOOSTS[c] for c in FTS_COLUMNS]),
                query_type="fts",
            )
            .select([*CHUNK_COLUMNS, "_score"])
            .limit(n)
        )
        if where is not None:
            search = search.where(where, prefilter=True)
        try:
            return search.to_list()
        except (ValueError, RuntimeError, OSError) as exc:
            # A user's text must never break an answer: dense results still come back.
            log.warning("full-text search failed for %r, using dense results only: %s", terms[:80], exc)
            return []
