"""The versioned knowledge base: one LanceDB table ``chunks`` whose every table version is a KB version.

Rows are ``Chunk`` fields plus ``vector`` (the base embedder's unit-normalised embedding) and one more column
per tuned embedder (``vector__<id>``, see ``vector_column``): one table keeps one full-text index, one chunk id
space and one version history for every embedder, so a KB version still names exactly what was servable
(docs/retriever.md). LanceDB keeps every version of the table, so an interaction that recorded ``kb_version`` can be re-read exactly as the model saw it; ``tag``
protects such a version from ``compact``. The database (``KBVersion`` rows) says which versions are real:
``ingest.pipeline`` writes here first and records the version second, and undoes this write with ``restore``
when the record cannot be made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.expr import col
from lancedb.index import FTS, Bitmap, BTree, HnswSq

from ragloop.config import Settings
from ragloop.errors import NotFound
from ragloop.ingest.chunking import Chunk

TABLE = "chunks"
VERSION_TAG_PREFIX = "kb-v"
# A movable tag on the newest table version known to hold what the database last recorded. Versions that
# add no data (a restore that undid a failed write, a compaction) move past the recorded version number;
# this tag is how ``reconcile`` tells them from a write the database never heard of.
COMMITTED_TAG = "kb-committed"

CHUNK_COLUMNS: list[str] = [f.name for f in dataclasses.fields(Chunk)]
# Full-text indexed columns: the text, and the title and heading path that often carry the words a
# question uses (retrieval weighs them, see ``ragloop.retrieval.search.FULLTEXT_BOOSTS``).
FTS_COLUMNS = ("text", "title", "section")
_ARROW_TYPES = {"str": pa.string(), "int": pa.int64()}
# The vector index is rebuilt once this share of rows is not in it yet; until then LanceDB searches the
# unindexed rows exactly, so results stay correct, only a little slower.
ANN_REBUILD_UNINDEXED_SHARE = 0.25

BASE_VECTOR = "vector"  # the base embedder's column; tuned embedders add ``vector__<id>``
_VECTOR_PREFIX = "vector__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def chunk_schema(dim: int) -> pa.Schema:
    """Chunk fields, in order, plus the fixed-size float32 ``vector`` column."""
    fields = [pa.field(f.name, _ARROW_TYPES[str(f.type)]) for f in dataclasses.fields(Chunk)]
    return pa.schema([*fields, pa.field(BASE_VECTOR, pa.list_(pa.float32(), dim))])


def vector_column(embedder: str | None) -> str:
    """The column holding ``embedder``'s vectors: ``vector`` for the base embedder (None), else
    ``vector__<id>`` with anything but letters, digits and ``_`` replaced (column names go into filter
    expressions); an id that had to change gets 8 hex of its sha256 appended, so two ids never share one."""
    if embedder is None:
        return BASE_VECTOR
    safe = _UNSAFE.sub("_", embedder)
    if safe != embedder:
        safe = f"{safe}_{hashlib.sha256(embedder.encode()).hexdigest()[:8]}"
    return f"{_VECTOR_PREFIX}{safe}"


def vector_dims(schema: pa.Schema) -> dict[str, int]:
    """Every vector column of a table schema with its dimension."""
    return {
        f.name: int(f.type.list_size)
        for f in schema
        if (f.name == BASE_VECTOR or f.name.startswith(_VECTOR_PREFIX))
        and pa.types.is_fixed_size_list(f.type)
    }


def version_tag(version: int) -> str:
    return f"{VERSION_TAG_PREFIX}{version}"


@dataclasses.dataclass
class CompactStats:
    """What ``KnowledgeBase.compact`` did; ``pruned`` is False when pylance is missing (compaction only)."""

    version_before: int
    version_after: int
    versions_before: int
    versions_after: int
    bytes_removed: int
    pruned: bool


class KnowledgeBase:
    """The ``chunks`` table of one project home.

    One instance may be shared by threads for reading. Old versions are read through separate read-only
    handles, so reading history never moves the live handle. Writers must hold the ingest lock
    (``ingest.pipeline`` does) because a write is several LanceDB commits (data, then indexes).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.lance_dir.mkdir(parents=True, exist_ok=True)
        # interval 0: every read checks for a newer version, so a server sees what a CLI ingest wrote.
        self._db = lancedb.connect(str(settings.lance_dir), read_consistency_interval=timedelta(0))
        self._table: Any = None
        self._pinned: dict[int, Any] = {}
        self._lock = threading.Lock()

    # Reading ---------------------------------------------------------------------------------------
    def table(self, version: int | None = None) -> Any:
        """The live table (``version`` None) or a read-only view of one version; None if there is no table.

        Raises NotFound for a version that does not exist (never written, or removed by ``compact``).
        """
        live = self._live()
        if live is None or version is None:
            return live
        with self._lock:
            pinned = self._pinned.get(version)
        if pinned is not None:
            return pinned
        try:
            pinned = self._db.open_table(TABLE, version=version)
        except (ValueError, RuntimeError, OSError) as exc:
            raise NotFound(
                f"Knowledge-base version {version} is not available (never written, or removed by "
                f"`ragloop kb compact` because it was not tagged); current version is {self.version}."
            ) from exc
        with self._lock:
            if len(self._pinned) > 16:  # a few versions are replayed at a time; keep the cache small
                self._pinned.clear()
            self._pinned[version] = pinned
        return pinned

    def _live(self) -> Any:
        with self._lock:
            if self._table is None:
                if TABLE not in self._db.list_tables().tables:
                    return None
                self._table = self._db.open_table(TABLE)
            return self._table

    @property
    def version(self) -> int:
        """The current table version; 0 when the table does not exist yet."""
        table = self._live()
        return 0 if table is None else int(table.version)

    def count(self, version: int | None = None) -> int:
        table = self.table(version)
        return 0 if table is None else int(table.count_rows())

    @property
    def committed_version(self) -> int | None:
        """The table version marked as matching the database's latest record, if any."""
        table = self._live()
        if table is None:
            return None
        tag = table.tags.list().get(COMMITTED_TAG)
        return None if tag is None else int(tag["version"])

    def tags(self) -> dict[str, int]:
        table = self._live()
        return {} if table is None else {name: int(t["version"]) for name, t in table.tags.list().items()}

    def vector_columns(self, version: int | None = None) -> dict[str, int]:
        """The vector columns at ``version`` (default: current) with their dimensions; {} without a table."""
        table = self.table(version)
        return {} if table is None else vector_dims(table.schema)

    def missing_vectors(self, embedder: str | None, version: int | None = None) -> int | None:
        """How many chunks have no vector of ``embedder`` at ``version``: None when its column does not
        exist there (never re-embedded), else the chunks ingested while it was not live."""
        table = self.table(version)
        column = vector_column(embedder)
        if table is None or column not in vector_dims(table.schema):
            return None
        return int(table.count_rows(f"{column} IS NULL"))

    def rows_to_embed(self, embedder: str | None, version: int | None = None) -> list[dict]:
        """``chunk_id``, ``title``, ``section`` and ``text`` of every chunk without a vector of ``embedder``
        at ``version`` (every chunk when its column does not exist yet), in chunk id order."""
        table = self.table(version)
        if table is None:
            return []
        column = vector_column(embedder)
        query = table.search().select(["chunk_id", "title", "section", "text"])
        if column in vector_dims(table.schema):
            query = query.where(f"{column} IS NULL")
        rows = query.limit(None).to_list()
        return sorted(rows, key=lambda r: r["chunk_id"])

    def get_chunks(self, chunk_ids: list[str], version: int | None = None) -> dict[str, dict]:
        """Rows (without vector) by chunk id, as they were at ``version`` (default: current)."""
        table = self.table(version)
        if table is None or not chunk_ids:
            return {}
        ids = list(dict.fromkeys(chunk_ids))
        rows = table.search().where(col("chunk_id").isin(ids)).select(CHUNK_COLUMNS).limit(len(ids)).to_list()
        return {row["chunk_id"]: row for row in rows}

    def random_chunks(
        self,
        n: int,
        seed: int,
        exclude_ids: Iterable[str] = (),
        collections: list[str] | None = None,
        version: int | None = None,
    ) -> list[dict]:
        """``n`` random rows (without vector), the same ones for the same seed and table contents."""
        table = self.table(version)
        if table is None or n <= 0 or (collections is not None and not collections):
            return []
        query = table.search().select(["chunk_id"])
        if collections is not None:
            query = query.where(col("collection").isin(list(collections)))
        # Reading one id column is cheap even at 100k rows; sorting makes the draw independent of how
        # compaction happened to lay out the fragments.
        ids = sorted(set(query.limit(None).to_arrow()["chunk_id"].to_pylist()) - set(exclude_ids))
        if not ids:
            return []
        rng = np.random.default_rng(seed)
        picked = [ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]
        rows = self.get_chunks(picked, version)
        return [rows[i] for i in picked if i in rows]

    # Writing ---------------------------------------------------------------------------------------
    def apply(
        self,
        add: list[Chunk],
        vectors: np.ndarray,
        delete_doc_ids: list[str],
        embedder_vectors: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Replace the chunks of ``delete_doc_ids`` by ``add`` in one data commit; return the new version.

        ``vectors`` are the base embedder's; ``embedder_vectors`` the tuned embedders' (by id), each into its
        own column, which must exist already (``set_vectors`` makes it). A tuned column not given is left
        empty (null) for the new chunks: that embedder was not live, and ``missing_vectors`` counts them.
        Deleting and adding is one LanceDB merge-insert, so a reader never sees a document half-replaced.
        The full-text indexes are rebuilt afterwards (cheap, and keeps BM25 statistics exact); the vector
        index only when the table is big enough to need one and has grown a lot since it was built.
        """
        if len(add) != len(vectors):
            raise ValueError(f"{len(add)} chunks but {len(vectors)} vectors")
        if not add and not delete_doc_ids:
            return self.version
        table = self._live()
        if table is None:
            if not add:
                return 0
            dim = int(np.asarray(vectors).shape[1])
            table = self._db.create_table(TABLE, schema=chunk_schema(dim))
            with self._lock:
                self._table = table
        if add:
            data = self._rows(add, vectors, table.schema, embedder_vectors or {})
            merge = table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
            if delete_doc_ids:
                merge = merge.when_not_matched_by_source_delete(col("doc_id").isin(list(delete_doc_ids)))
            merge.execute(data)
        else:
            table.delete(col("doc_id").isin(list(delete_doc_ids)))
        self._build_indexes(table)
        return int(table.version)

    @staticmethod
    def _rows(
        chunks: list[Chunk], vectors: np.ndarray, schema: pa.Schema, extra: dict[str, np.ndarray]
    ) -> pa.Table:
        dims = vector_dims(schema)
        by_column = {BASE_VECTOR: vectors}
        for embedder, array in extra.items():
            column = vector_column(embedder)
            if column not in dims:
                raise ValueError(
                    f"no column for embedder {embedder!r}: re-embed the knowledge base with it first"
                )
            by_column[column] = array
        columns: dict[str, Any] = {name: [getattr(c, name) for c in chunks] for name in CHUNK_COLUMNS}
        for column, dim in dims.items():
            # A column left out is null in the new rows (LanceDB refuses explicit null vectors).
            if column in by_column:
                columns[column] = _vector_array(by_column[column], dim, len(chunks))
        fields = [schema.field(name) for name in columns]
        return pa.Table.from_pydict(columns, schema=pa.schema(fields))

    def set_vectors(self, embedder: str, chunk_ids: list[str], vectors: np.ndarray) -> int:
        """Write ``embedder``'s vectors of these chunks into its column in one data commit (a new table
        version, so the versions before it stay exactly as they were); return the new version.

        A first call adds the column (LanceDB's merge: a left join on ``chunk_id``, new files for the new
        column only, chunks not given left null); later calls fill chunks still missing (a merge-insert of
        the column alone). The column's dimension is fixed by its first call."""
        table = self._live()
        if table is None:
            raise NotFound("The knowledge base is empty: ingest documents before re-embedding them.")
        if len(chunk_ids) != len(vectors):
            raise ValueError(f"{len(chunk_ids)} chunk ids but {len(vectors)} vectors")
        column = vector_column(embedder)
        vectors = np.asarray(vectors, dtype=np.float32)
        dims = vector_dims(table.schema)
        dim = dims.get(column, int(vectors.shape[1]) if vectors.ndim == 2 else 0)
        data = pa.Table.from_pydict(
            {
                "chunk_id": pa.array(chunk_ids, pa.string()),
                column: _vector_array(vectors, dim, len(chunk_ids)),
            }
        )
        if column not in dims:
            table.merge(data, left_on="chunk_id")
        elif chunk_ids:
            table.merge_insert("chunk_id").when_matched_update_all().execute(data)
        else:
            return int(table.version)
        self._build_indexes(table)
        return int(table.version)

    def _build_indexes(self, table: Any) -> None:
        for column in FTS_COLUMNS:
            table.create_index(column, config=FTS(with_position=False), replace=True)
        # Scalar indexes make the collection scope (a prefilter on every search) and chunk lookups by id
        # index reads instead of scans of the whole table.
        table.create_index("collection", config=Bitmap(), replace=True)
        table.create_index("chunk_id", config=BTree(), replace=True)
        n_rows = table.count_rows()
        if n_rows < self.settings.retrieval.ann_min_rows:
            return
        indices = table.list_indices()
        for column in vector_dims(table.schema):
            vector_index = next((i for i in indices if i.columns == [column]), None)
            if vector_index is not None:
                stats = table.index_stats(vector_index.name)
                indexed, unindexed = stats.num_indexed_rows, stats.num_unindexed_rows
                if unindexed <= ANN_REBUILD_UNINDEXED_SHARE * max(indexed, 1):
                    continue
            # IVF_HNSW_SQ: in our 100k-chunk benchmark it answered in ~2 ms with recall@10 ~0.97 before
            # refinement, where IVF_PQ needed nprobes + refine to get there at twice the latency.
            table.create_index(column, config=HnswSq(distance_type="cosine"), replace=True)

    def restore(self, version: int) -> int:
        """Make ``version`` current again (a new version with its data; 0 means empty); return the new
        current version.

        The table is never dropped, so handles held by other threads and processes stay valid. Tags are
        left alone: a server may have answered from an undone version and tagged it, and that record must
        stay replayable.
        """
        table = self._live()
        if table is None:
            return 0
        if version == 0:
            table.delete("true")
        else:
            table.restore(version)
        return int(table.version)

    def tag(self, version: int) -> str:
        """Protect ``version`` from ``compact`` with the tag ``kb-v{version}``; idempotent."""
        table = self._live()
        if table is None:
            raise NotFound("The knowledge base is empty: nothing to tag. Ingest documents first.")
        name = version_tag(version)
        if name not in table.tags.list():
            try:
                table.tags.create(name, version)
            except Exception:
                # Answers running at once tag the version they read (and other processes may too): losing
                # the race to create the tag is success, as long as the tag there is this version's.
                existing = table.tags.list().get(name)
                if existing is None or int(existing["version"]) != version:
                    raise
        return name

    def mark_committed(self, version: int | None = None) -> None:
        """Record that ``version`` (default: current) holds what the database last recorded."""
        table = self._live()
        if table is None:
            return
        version = int(table.version) if version is None else version
        tags = table.tags.list()
        if COMMITTED_TAG not in tags:
            table.tags.create(COMMITTED_TAG, version)
        elif int(tags[COMMITTED_TAG]["version"]) != version:
            table.tags.update(COMMITTED_TAG, version)

    def compact(self, older_than: timedelta = timedelta(0)) -> CompactStats:
        """Merge small files, fold new rows into the indexes, and delete untagged versions.

        Run it when no ingest is running. Tagged versions (every version recorded by an ingest) survive.
        LanceDB's own ``optimize`` refuses to prune once an old version is tagged, so pruning goes through
        pylance, which can skip tagged versions; without pylance only the compaction happens.
        """
        table = self._live()
        if table is None:
            return CompactStats(0, 0, 0, 0, 0, pruned=False)
        before, n_versions = int(table.version), len(table.list_versions())
        was_committed = self.committed_version == before
        # A cleanup window far in the past: optimize compacts and merges indexes but prunes nothing.
        table.optimize(cleanup_older_than=timedelta(days=365 * 100))
        if was_committed:  # compaction changes files, not data: the new version is still the recorded one
            self.mark_committed()
        bytes_removed, pruned = 0, False
        try:
            import lance
        except ImportError:
            lance = None
        if lance is not None:
            stats = lance.dataset(table.uri).cleanup_old_versions(
                older_than=older_than, error_if_tagged_old_versions=False
            )
            bytes_removed, pruned = int(stats.bytes_removed), True
            table.checkout_latest()
        with self._lock:
            self._pinned.clear()
        return CompactStats(
            version_before=before,
            version_after=int(table.version),
            versions_before=n_versions,
            versions_after=len(table.list_versions()),
            bytes_removed=bytes_removed,
            pruned=pruned,
        )


def _vector_array(vectors: np.ndarray, dim: int, n: int) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (n, dim):
        raise ValueError(f"vectors have shape {vectors.shape}; this column stores {n} rows of dim {dim}")
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)
