"""Retrieval quality of an embedder on held-apart questions: recall@1/5/10 and MRR, dense and hybrid, so a
tuned embedder is compared with the base on the same questions, corpus and fusion (issue 20).

Corpus: the knowledge base (every chunk at a KB version: dense over that embedder's vectors, hybrid fused
with the KB's own full-text results exactly as ``Retriever.search`` fuses them), or a QA set's own passage
pool (dense only: it has no full-text index). An embedder's KB vectors come from its column when the KB was
re-embedded with it, else they are computed here once and cached under its folder, keyed by the chunks.

Relevance: ``text`` (default) counts a chunk as a gold passage when one's text contains the other's (a gold
paragraph cut into several chunks is found by any of them) and ranks chunks; ``title`` ranks distinct titles
and counts a gold passage's title, as bench/retrieval.py measures HotpotQA (titles are unique there).
Recall@k is the share of a question's gold passages among the first k; MRR uses the first gold found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragloop.config import Settings
from ragloop.datasets.importers import read_qa_file
from ragloop.datasets.pairs import load_pairs
from ragloop.datasets.qa import QAItem, QAPassage, passage_pool
from ragloop.errors import DimensionMismatch, RagloopError
from ragloop.ingest.pipeline import passage_text

KS = (1, 5, 10)
MODES = ("dense", "hybrid")
MATCHES = ("text", "title")
BASE = "base"


def retrieval_metrics(runs: Sequence[tuple[set[str], list[str]]], ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k and MRR over (gold units, ranked units) pairs; questions without gold are skipped."""
    runs = [(gold, ranked) for gold, ranked in runs if gold]
    out: dict[str, float] = {"n": float(len(runs))}
    if not runs:
        return out
    for k in ks:
        out[f"recall@{k}"] = float(
            np.mean([len(gold & set(ranked[:k])) / len(gold) for gold, ranked in runs])
        )
    out["mrr"] = float(
        np.mean([next((1 / i for i, u in enumerate(ranked, 1) if u in gold), 0.0) for gold, ranked in runs])
    )
    return out


@dataclass
class RetrievalReport:
    embedder: str
    mode: str
    corpus: str  # "kb v<N>" or "pool"
    match: str
    metrics: dict[str, float]
    per_question: list[dict] = field(default_factory=list)


# Questions --------------------------------------------------------------------------------------------


def questions_from(settings: Settings, qa: Path | None = None, dataset: str | None = None,
                   split: str = "test") -> list[QAItem]:  # fmt: skip
    """Held-apart questions: a QA file (any importer format), or a pairs dataset's split (its pairs grouped
    back into questions, every positive a gold passage)."""
    if (qa is None) == (dataset is None):
        raise RagloopError("Give the questions: --qa FILE or --dataset pairs-… (one of them).")
    if qa is not None:
        return read_qa_file(qa)
    rows = load_pairs(settings, dataset, split)[split]
    items: dict[str, QAItem] = {}
    for row in rows:
        item = items.setdefault(
            row.get("item_id") or row["id"],
            QAItem(
                id=row.get("item_id") or row["id"],
                question=row["question"],
                answers=[],
                gold=[],
                distractors=[],
                answer_type="free",
            ),  # fmt: skip
        )
        p = row["positive"]
        item.gold.append(QAPassage(p.get("id", ""), p.get("title", ""), p["text"], p.get("source_path", ""),
                                   p.get("section", "")))  # fmt: skip
        for n in row.get("negatives", []):
            item.distractors.append(QAPassage(n.get("id", ""), n.get("title", ""), n["text"]))
    if not items:
        raise RagloopError(f"Split {split!r} of {dataset} holds no pairs; evaluate another split (--split).")
    return list(items.values())


# Embedders --------------------------------------------------------------------------------------------


@dataclass
class _Encoder:
    name: str  # BASE or an embedder version id
    encode: Callable[[list[str]], np.ndarray]
    dim: int
    folder: Path | None  # where its KB vectors are cached (tuned embedders)


def load_encoder(settings: Settings, embedder: str | None) -> _Encoder:
    """The base embedder (None or "base") or a registered embedder version, as an encoder of unit vectors."""
    from ragloop.ingest.embed import Embedder, get_embedder

    if embedder in (None, BASE):
        base = get_embedder(settings.embedding)
        return _Encoder(BASE, lambda texts: base.encode(texts), base.dim, None)
    from ragloop.training.embedder import get_embedder_version

    ev = get_embedder_version(settings.db_url, embedder)
    tuned = Embedder(settings.embedding.model_copy(update={"model": ev.path}))
    if tuned.dim != ev.dim:
        raise DimensionMismatch(
            f"Embedder {ev.id} is registered with dimension {ev.dim} but its model gives {tuned.dim}."
        )
    return _Encoder(ev.id, lambda texts: tuned.encode(texts), tuned.dim, Path(ev.path))


def _embed_text(row: dict | QAPassage) -> str:
    get = row.get if isinstance(row, dict) else lambda k, d="": getattr(row, k, d)
    return passage_text(_Text(get("title", "") or "", get("section", "") or "", get("text", "")))  # type: ignore[arg-type]


@dataclass
class _Text:
    title: str
    section: str
    text: str


# Corpora ----------------------------------------------------------------------------------------------


def _kb_rows(settings: Settings, version: int | None) -> tuple[Any, int, list[dict], Any]:
    from ragloop.ingest.kb import KnowledgeBase

    kb = KnowledgeBase(settings)
    version = version or kb.version
    table = kb.table(version) if version else None
    if table is None:
        raise RagloopError("The knowledge base is empty: ingest the corpus first, or use --corpus pool.")
    arrow = table.to_arrow()
    return (
        kb,
        version,
        arrow.drop_columns([c for c in arrow.column_names if c.startswith("vector")]).to_pylist(),
        arrow,
    )


def _kb_vectors(enc: _Encoder, rows: list[dict], arrow: Any, batch_size: int) -> np.ndarray:
    """The embedder's vectors of every chunk: its KB column when there is one (dimension checked), else
    computed and cached in its folder keyed by the chunk ids and texts."""
    column = "vector"
    if enc.name != BASE:
        try:
            from ragloop.ingest.kb import vector_column

            column = vector_column(enc.name)
        except ImportError:  # before the KB held a column per embedder
            column = ""
    if column in arrow.column_names:
        vectors = np.asarray(arrow.column(column).to_pylist(), dtype=np.float32)
        if vectors.ndim == 2 and vectors.shape[1] != enc.dim:
            raise DimensionMismatch(
                f"The knowledge base's column {column!r} has dimension {vectors.shape[1]} but embedder "
                f"{enc.name} gives {enc.dim}: re-embed the KB with it (`ragloop kb reembed`) or evaluate the "
                "embedder it was built with."
            )
        if not np.isnan(vectors).any():
            return vectors
    texts = [_embed_text(r) for r in rows]
    key = hashlib.sha256(json.dumps([[r["chunk_id"], r["text_sha256"]] for r in rows]).encode()).hexdigest()[
        :16
    ]
    # A dot-folder: not part of the model's files, so the embedder's weights hash (a base_hash when it is
    # tuned further) does not change when it is evaluated.
    cache = enc.folder / ".kb-vectors" / f"{key}.npy" if enc.folder is not None else None
    if cache is not None and cache.exists():
        return np.load(cache)
    vectors = np.asarray(enc.encode(texts), dtype=np.float32) if texts else np.zeros((0, enc.dim), np.float32)
    if cache is not None:
        cache.parent.mkdir(exist_ok=True)
        np.save(cache, vectors)
    return vectors


def _units(hits: list[dict], gold: list[QAPassage], match: str) -> tuple[set[str], list[str]]:
    """(gold units, ranked units) of one question under the relevance rule."""
    if match == "title":
        return {g.title for g in gold}, list(dict.fromkeys(h["title"] for h in hits))
    keys = ["".join(g.text.lower().split()) for g in gold]
    ranked = []
    for h in hits:
        text = "".join(h["text"].lower().split())
        found = next((f"gold:{n}" for n, k in enumerate(keys) if text in k or k in text), None)
        ranked.append(found or f"chunk:{h['chunk_id']}")
    return {f"gold:{n}" for n in range(len(gold))}, list(dict.fromkeys(ranked))


def evaluate_retrieval(
    settings: Settings,
    items: list[QAItem],
    *,
    embedder: str | None = None,
    mode: str = "hybrid",
    corpus: str = "kb",
    match: str = "text",
    kb_version: int | None = None,
    per_question: bool = False,
) -> RetrievalReport:
    """Recall@1/5/10 and MRR of ``embedder`` (None/"base" or an embedder version id) on ``items``."""
    if mode not in MODES:
        raise RagloopError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
    if match not in MATCHES:
        raise RagloopError(f"Unknown relevance rule {match!r}: use one of {', '.join(MATCHES)}.")
    if corpus not in ("kb", "pool"):
        raise RagloopError(f"Unknown corpus {corpus!r}: use kb or pool.")
    if corpus == "pool" and mode == "hybrid":
        raise RagloopError(
            "Hybrid retrieval needs the knowledge base's full-text index: --corpus kb, or --mode dense."
        )
    items = [i for i in items if i.gold]
    if not items:
        raise RagloopError("None of the questions has a gold passage to find.")
    enc = load_encoder(settings, embedder)
    cfg = settings.retrieval
    n = max(cfg.candidates, max(KS) * 3)
    if corpus == "pool":
        pool = passage_pool(items)
        rows = [{"chunk_id": p.id, "title": p.title, "section": p.section, "text": p.text} for p in pool]
        vectors = np.asarray(enc.encode([_embed_text(p) for p in pool]), dtype=np.float32)
        label, kb = "pool", None
    else:
        kb, kb_version, rows, arrow = _kb_rows(settings, kb_version)
        vectors = _kb_vectors(enc, rows, arrow, settings.embedding.batch_size)
        label = f"kb v{kb_version}"
    queries = np.asarray(enc.encode([i.question for i in items]), dtype=np.float32)
    if queries.shape[1] != vectors.shape[1]:
        raise DimensionMismatch(
            f"Query vectors ({queries.shape[1]}) and passage vectors ({vectors.shape[1]}) differ."
        )
    retriever = None
    if mode == "hybrid":
        from ragloop.retrieval.search import Retriever, fuse

        retriever = Retriever(settings, kb)
    runs, details = [], []
    for item, q in zip(items, queries, strict=True):
        scores = vectors @ q
        top = np.argsort(-scores, kind="stable")[:n]
        dense = [{**rows[i], "_distance": 1.0 - float(scores[i])} for i in top]
        if retriever is not None:
            _, fulltext = retriever.candidates(item.question, n, version=kb_version, dense=False)
            hits = [h.__dict__ for h in fuse(dense, fulltext, dense_weight=cfg.dense_weight,
                                               fulltext_weight=cfg.fulltext_weight, rrf_k=cfg.rrf_k)]  # fmt: skip
        else:
            hits = dense
        gold, ranked = _units(hits, item.gold, match)
        runs.append((gold, ranked))
        if per_question:
            details.append({"id": item.id, "gold": sorted(gold), "ranked": ranked[:10]})
    return RetrievalReport(enc.name, mode, label, match, retrieval_metrics(runs), details)
