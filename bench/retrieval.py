"""Retrieval benchmark: quality on HotpotQA, latency and ANN recall on a 100,000-chunk table.

(1) Quality. Corpus: every paragraph of the HotpotQA distractor train + dev files (deduplicated by title),
one document per paragraph, cut and embedded exactly as ``ragloop ingest`` does (``chunk_document``,
``embed_chunks``, one ``kb.apply``: same embedder, same full-text index). Queries: the questions; relevant:
the supporting-fact titles. Recall@k is the share of a question's gold titles found in the top k (the
distinct titles of the ranked chunks); MRR uses the first gold title. Fusion weights (dense_weight with
fulltext_weight fixed at 1, and rrf_k) are tuned on the train questions and reported on dev.

(2) Scale. 100,000 chunks of random words with clustered random unit vectors (dim 384: random points
around 2,000 random centres, so neighbourhoods exist as with real embeddings; uniform random vectors have
none and are a worst case no index handles, see ``--uniform``). ``kb.apply`` builds the real indexes;
latency is measured per method through ``Retriever``, with the query embedding (MiniLM on a random-word
query) timed separately, against exact (index-free) vector search; ANN recall@10 is against exact search.

    python bench/retrieval.py [--uniform] [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, pct, table, write  # noqa: E402

from ragloop.config import Settings, init_home, load_settings  # noqa: E402
from ragloop.ingest.chunking import Chunk, chunk_document  # noqa: E402
from ragloop.ingest.embed import get_embedder  # noqa: E402
from ragloop.ingest.kb import KnowledgeBase  # noqa: E402
from ragloop.ingest.loaders import LoadedDocument, Section  # noqa: E402
from ragloop.ingest.pipeline import EMBED_FORMAT, embed_chunks, make_doc_id  # noqa: E402
from ragloop.retrieval.search import Retriever, SearchTimings, fuse  # noqa: E402

HOTPOT = DATA / "hotpotqa_distractor"
COLLECTION = "hotpotqa"
KS = (1, 5, 10)
DENSE_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
RRF_KS = (5, 10, 20, 30, 60, 100)
TARGET_RECALL5 = 0.776  # bm25s + exact MiniLM + RRF on the same 5,913 paragraphs / 600 questions
TARGET_P50_MS = 10.0


def new_home(root: Path, **overrides: object) -> Settings:
    return load_settings(init_home(root), **overrides)


# (1) HotpotQA ----------------------------------------------------------------------------------------------


def load_hotpot() -> tuple[dict[str, str], dict[str, list[dict]]]:
    """Paragraphs by title (first occurrence wins) and the questions of each split."""
    paragraphs: dict[str, str] = {}
    questions: dict[str, list[dict]] = {}
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in (HOTPOT / f"{split}.jsonl").read_text().splitlines() if line]
        questions[split] = [
            {"question": r["question"], "gold": set(r["supporting_facts"]["title"])} for r in rows
        ]
        for r in rows:
            for title, sentences in zip(r["context"]["title"], r["context"]["sentences"], strict=True):
                paragraphs.setdefault(title, "".join(sentences).strip())
    return paragraphs, questions


def hotpot_chunks(paragraphs: dict[str, str], tokenizer: object, settings: Settings) -> list[Chunk]:
    chunks: list[Chunk] = []
    for title, text in paragraphs.items():
        source_path = f"hotpotqa/{title}"
        doc = LoadedDocument(doc_key="", title=title, text=text, sections=(Section((), text, 0),))
        chunks += chunk_document(
            doc,
            doc_id=make_doc_id(COLLECTION, source_path, ""),
            collection=COLLECTION,
            source_path=source_path,
            tokenizer=tokenizer,
            chunk_tokens=settings.embedding.chunk_tokens,
            overlap=settings.embedding.chunk_overlap,
        )
    return chunks


def cached_vectors(cache: Path, chunks: list[Chunk], settings: Settings) -> np.ndarray:
    """Embedding ~6k paragraphs takes minutes on a laptop CPU; keep them between runs of the benchmark."""
    key = hashlib.sha256(
        json.dumps([settings.embedding.model, EMBED_FORMAT, [c.chunk_id for c in chunks]]).encode()
    ).hexdigest()[:16]
    path = cache / f"hotpot-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = embed_chunks(get_embedder(settings.embedding), chunks, settings.embedding.batch_size)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def ranked_titles(hits: list) -> list[str]:
    return list(dict.fromkeys(h.title for h in hits))


def quality(runs: list[tuple[set[str], list[str]]]) -> dict[str, float]:
    """Recall@k and MRR over (gold titles, ranked titles) pairs."""
    out: dict[str, float] = {}
    for k in KS:
        out[f"r@{k}"] = float(np.mean([len(gold & set(titles[:k])) / len(gold) for gold, titles in runs]))
    rr = [next((1 / i for i, t in enumerate(titles, 1) if t in gold), 0.0) for gold, titles in runs]
    out["mrr"] = float(np.mean(rr))
    return out


def bench_hotpot(root: Path, cache: Path) -> str:
    settings = new_home(root / "hotpot")
    embedder = get_embedder(settings.embedding)
    paragraphs, questions = load_hotpot()
    chunks = hotpot_chunks(paragraphs, embedder.tokenizer, settings)
    t0 = time.perf_counter()
    vectors = cached_vectors(cache, chunks, settings)
    embed_s = time.perf_counter() - t0
    kb = KnowledgeBase(settings)
    t0 = time.perf_counter()
    kb.apply(chunks, vectors, [])
    apply_s = time.perf_counter() - t0
    retriever = Retriever(settings, kb)
    n = settings.retrieval.candidates

    # One dense and one full-text search per question; every fusion setting reuses them.
    cands: dict[str, list[tuple[set[str], list[dict], list[dict]]]] = {}
    for split, qs in questions.items():
        cands[split] = [(q["gold"], *retriever.candidates(q["question"], n)) for q in qs]

    def fused(split: str, dense_weight: float, fulltext_weight: float, rrf_k: int) -> dict[str, float]:
        return quality(_runs(cands[split], (dense_weight, fulltext_weight, rrf_k)))

    grid = {(w, k): fused("train", w, 1.0, k)["r@5"] for w, k in itertools.product(DENSE_WEIGHTS, RRF_KS)}
    best_w, best_k = max(grid, key=lambda wk: (grid[wk], -abs(wk[0] - 1), wk[1]))
    cfg = settings.retrieval
    results = {
        "fulltext (BM25)": fused("dev", 0.0, 1.0, cfg.rrf_k),
        "dense (MiniLM)": fused("dev", 1.0, 0.0, cfg.rrf_k),
        f"hybrid, default (w_dense=1, rrf_k={cfg.rrf_k})": fused("dev", 1.0, 1.0, cfg.rrf_k),
        f"hybrid, tuned on train (w_dense={best_w}, rrf_k={best_k})": fused("dev", best_w, 1.0, best_k),
    }
    both = {
        name: quality([pair for split in ("train", "dev") for pair in _runs(cands[split], weights)])
        for name, weights in (
            ("fulltext (BM25)", (0.0, 1.0, cfg.rrf_k)),
            ("dense (MiniLM)", (1.0, 0.0, cfg.rrf_k)),
            ("hybrid, default", (1.0, 1.0, cfg.rrf_k)),
        )
    }

    # Latency per method through the real search path (no vector index at this size: exact search).
    latency: dict[str, dict[str, float]] = {}
    sample = [q["question"] for q in questions["dev"][:200]]
    for mode in ("fulltext", "dense", "hybrid"):
        total, embed, cpu = [], [], []
        for q in sample:
            timings = SearchTimings()
            c0, t0 = time.process_time(), time.perf_counter()
            retriever.search(q, 10, mode=mode, timings=timings)
            total.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            embed.append(timings.embed_ms)
        latency[mode] = {
            "p50": pct(total, 50),
            "p95": pct(total, 95),
            "cpu_p50": pct(cpu, 50),
            "embed_p50": pct(embed, 50),
        }

    base = results["fulltext (BM25)"]
    rows = [
        [name, *(r[f"r@{k}"] for k in KS), r["mrr"], f"{r['r@5'] / base['r@5']:.3f}"]
        for name, r in results.items()
    ]
    md = [
        f"### HotpotQA distractor: {len(paragraphs):,} paragraphs ({len(chunks):,} chunks), "
        f"{len(questions['dev'])} dev questions",
        "",
        table(["method", "recall@1", "recall@5", "recall@10", "MRR", "recall@5 ratio vs BM25"], rows),
        "",
        f"Same metrics on all {sum(len(q) for q in questions.values())} questions (train + dev, the "
        "reference set; untuned weights):",
        "",
        table(
            ["method", "recall@1", "recall@5", "recall@10", "MRR"],
            [[name, *(r[f"r@{k}"] for k in KS), r["mrr"]] for name, r in both.items()],
        ),
        "",
        f"Target: hybrid recall@5 >= {TARGET_RECALL5} and above both single methods (reference: BM25 0.718, "
        "dense 0.738, RRF 0.776).",
        f"Train grid best recall@5 = {grid[(best_w, best_k)]:.3f}; ingest of the corpus: "
        f"embedding {embed_s:.0f} s (0 if cached), kb.apply with full-text index {apply_s:.1f} s.",
        "",
        table(
            [
                "method (200 dev questions, k=10)",
                "p50 ms",
                "p95 ms",
                "CPU p50 ms",
                "of which query embedding p50 ms",
                "p50 ratio vs BM25",
            ],
            [
                [
                    m,
                    v["p50"],
                    v["p95"],
                    v["cpu_p50"],
                    v["embed_p50"],
                    f"{v['p50'] / latency['fulltext']['p50']:.2f}",
                ]
                for m, v in latency.items()
            ],
        ),
    ]
    return "\n".join(md)


def _runs(cands: list, weights: tuple[float, float, int]) -> list[tuple[set[str], list[str]]]:
    w_dense, w_fulltext, rrf_k = weights
    return [
        (gold, ranked_titles(fuse(d, f, dense_weight=w_dense, fulltext_weight=w_fulltext, rrf_k=rrf_k)))
        for gold, d, f in cands
    ]


# (2) 100k chunks -------------------------------------------------------------------------------------------


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def synthetic_vectors(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray | None) -> np.ndarray:
    if centres is None:
        return unit(rng.standard_normal((n, dim)))
    picked = centres[rng.integers(0, len(centres), n)]
    return unit(picked + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim))


def bench_scale(root: Path, n_rows: int, uniform: bool) -> str:
    settings = new_home(root / ("scale-uniform" if uniform else "scale"))
    dim = get_embedder(settings.embedding).dim
    rng = np.random.default_rng(0)
    vocab = [
        "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(3, 10)))
        for _ in range(20000)
    ]
    centres = None if uniform else unit(rng.standard_normal((2000, dim)))
    vectors = synthetic_vectors(rng, n_rows, dim, centres)
    chunks = []
    for i in range(n_rows):
        text = " ".join(rng.choice(vocab, size=int(rng.integers(30, 80))))
        chunks.append(
            Chunk(
                chunk_id=f"c{i:07d}",
                doc_id=f"d{i // 4:07d}",
                collection=f"col{i % 4}",
                source_path=f"synthetic/{i // 4}.txt",
                title="",
                section="",
                text=text,
                char_start=0,
                char_end=len(text),
                chunk_index=i % 4,
                text_sha256="",
            )
        )
    kb = KnowledgeBase(settings)
    t0 = time.perf_counter()
    kb.apply(chunks, vectors, [])
    apply_s = time.perf_counter() - t0
    table_ = kb.table()
    index_types = [i.index_type for i in table_.list_indices() if i.columns == ["vector"]]
    retriever = Retriever(settings, kb)

    n_queries = 100
    query_vectors = synthetic_vectors(rng, n_queries, dim, centres)
    query_texts = [" ".join(rng.choice(vocab, size=6)) for _ in range(n_queries)]
    for q, v in zip(query_texts[:5], query_vectors[:5], strict=True):  # warm caches
        retriever.search(q, 10, query_vector=v)

    embed_ms = []
    for q in query_texts:
        t0 = time.perf_counter()
        retriever.embed_query(q)
        embed_ms.append((time.perf_counter() - t0) * 1000)

    cpu_ms: dict[str, list[float]] = {}

    def timed(name: str, fn) -> tuple[list[float], list]:  # type: ignore[no-untyped-def]
        """Wall milliseconds per query, and CPU milliseconds of this process (all its threads) in
        ``cpu_ms``: on a shared machine wall time includes waiting for other programs, CPU time does not."""
        times, out = [], []
        cpu_ms[name] = []
        for q, v in zip(query_texts, query_vectors, strict=True):
            c0, t0 = time.process_time(), time.perf_counter()
            out.append(fn(q, v))
            times.append((time.perf_counter() - t0) * 1000)
            cpu_ms[name].append((time.process_time() - c0) * 1000)
        return times, out

    def exact(_q: str, v: np.ndarray) -> list[str]:
        rows = (
            table_.search(v, vector_column_name="vector")
            .distance_type("cosine")
            .bypass_vector_index()
            .select(["chunk_id", "_distance"])
            .limit(10)
            .to_list()
        )
        return [r["chunk_id"] for r in rows]

    exact_ms, exact_ids = timed("exact", exact)
    ann_ms, ann_hits = timed("ann", lambda q, v: retriever.search(q, 10, mode="dense", query_vector=v))
    fts_ms, _ = timed("fts", lambda q, v: retriever.search(q, 10, mode="fulltext"))
    hybrid_ms, _ = timed("hybrid", lambda q, v: retriever.search(q, 10, mode="hybrid", query_vector=v))
    scoped_ms, _ = timed(
        "scoped", lambda q, v: retriever.search(q, 10, mode="hybrid", query_vector=v, collections=["col1"])
    )
    recall = float(
        np.mean(
            [
                len({h.chunk_id for h in hits} & set(ids)) / 10
                for hits, ids in zip(ann_hits, exact_ids, strict=True)
            ]
        )
    )

    base = pct(exact_ms, 50)
    measured = [
        ("dense, exact (no index) = baseline", "exact", exact_ms),
        (f"dense, ANN ({'/'.join(index_types)})", "ann", ann_ms),
        ("full text (BM25 over text, title, section)", "fts", fts_ms),
        ("hybrid (ANN + BM25 + fusion)", "hybrid", hybrid_ms),
        ("hybrid, scoped to 1 of 4 collections", "scoped", scoped_ms),
    ]
    rows = [
        [label, pct(ms, 50), pct(ms, 95), pct(cpu_ms[key], 50), f"{pct(ms, 50) / base:.3f}"]
        for label, key, ms in measured
    ]
    rows.append(["query embedding alone (MiniLM, CPU)", pct(embed_ms, 50), pct(embed_ms, 95), "-", "-"])
    kind = "uniform random (worst case)" if uniform else "clustered random"
    md = [
        f"### {n_rows:,} synthetic chunks ({kind} unit vectors, dim {dim}; random-word texts), "
        f"{n_queries} queries, k=10",
        "",
        table(
            ["search (query embedding excluded)", "p50 ms", "p95 ms", "CPU p50 ms", "p50 ratio vs exact"],
            rows,
        ),
        "",
        f"ANN recall@10 vs exact search: {recall:.3f}. kb.apply of {n_rows:,} rows with full-text and "
        f"vector index builds: {apply_s:.0f} s. Target: p50 <= {TARGET_P50_MS:g} ms.",
    ]
    return "\n".join(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--uniform", action="store_true", help="also run the scale test on uniform vectors")
    parser.add_argument("--skip-hotpot", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ragloop" / "bench")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    sections = ["## Retrieval benchmark", ""]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_hotpot:
            md = bench_hotpot(root, args.cache)
            sections += [md, ""]
        if not args.skip_scale:
            md = bench_scale(root, args.rows, uniform=False)
            sections += [md, ""]
            if args.uniform:
                md = bench_scale(root, args.rows, uniform=True)
                sections += [md, ""]
    sections.append(
        f"Machine: {os.cpu_count()} CPUs; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        "the end (wall times include waiting for other programs; CPU times do not)."
    )
    write("retrieval.md", "\n".join(sections))


if __name__ == "__main__":
    main()
