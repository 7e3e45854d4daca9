"""Dashboard speed: every page's p50/p95 at 1,000 and at 100,000 interactions, and the ratio.

Seeds a fresh database per size with bulk inserts (a realistic spread: 30 days with a daily rhythm, three
model versions taking over from one another with an overlap, 3-5 passages each from two collections, about
8 % of answers with people's feedback, signals computed), then requests each page through the real
dashboard router (in-process ASGI, no network) as an admin key and as a key scoped to one collection.
SQLite always; PostgreSQL too when RAGLOOP_TEST_POSTGRES_URL is set or --pg URL is given.

    nice .venv/bin/python bench/dashboard.py [--sizes 1000,100000] [--repeats 20] [--pg URL]

The target (issue 19): every page p95 <= 500 ms at 100,000 interactions.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

WORDS = ["vacation", "passwords", "encryption", "badge", "fines", "turnover", "overtime", "expenses", "travel", "laptop", "security", "holiday", "payroll", "contract", "privacy", "consent", "retention", "breach", "audit", "invoice"]  # fmt: skip
COLLECTIONS = (("handbook", 0.7), ("finance", 0.3))
VERSIONS = ("base-v0", "sft-v1", "dpo-v2")


def _version_at(frac: float, rng: random.Random) -> str:
    """Which version answered at this point of the window: each takes over from the last, with an overlap
    (an A/B) around each switch."""
    if frac < 0.3:
        return VERSIONS[0]
    if frac < 0.4:
        return rng.choice(VERSIONS[:2])
    if frac < 0.65:
        return VERSIONS[1]
    if frac < 0.75:
        return rng.choice(VERSIONS[1:])
    return VERSIONS[2]


def seed(
    db_url: str, n: int, *, days: int = 30, seed: int = 0, now: datetime | None = None
) -> dict[str, Any]:
    """Write ``n`` interactions (with passages, feedback, signals), the three model versions with lineage
    and a few eval runs; returns what was written, for checking."""
    from sqlalchemy import insert

    from ragloop.store.db import session_scope
    from ragloop.store.models import DatasetVersion, EvalRun, Feedback, Interaction, ModelVersion, Passage

    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    now = now or datetime.now(UTC).replace(tzinfo=None)
    start = now - timedelta(days=days)
    with session_scope(db_url) as s:
        s.add(DatasetVersion(id="ds-bench-1", name="bench-sft", content_hash="0" * 64, policy={"min_rating": 4},
                             source="interactions", kb_version=1, path="/dev/null", counts={"examples": 1200},
                             command="ragloop datasets build bench-sft"))  # fmt: skip
        parents = {"base-v0": None, "sft-v1": "base-v0", "dpo-v2": "sft-v1"}
        for i, v in enumerate(VERSIONS):
            s.add(ModelVersion(id=v, base_model="HuggingFaceTB/SmolLM2-360M-Instruct", parent_id=parents[v],
                               adapter_path=None if i == 0 else f"/models/{v}", dataset_id=None if i == 0 else "ds-bench-1",
                               created_at=start + timedelta(days=9 * i), meta={"kind": ["base", "sft", "dpo"][i]}))  # fmt: skip
            for k in (0, 2, 4, 8):
                for condition in ("distractors", "no-gold"):
                    if condition == "no-gold" and k == 0:
                        continue
                    f1 = (0.45 + 0.08 * i - 0.02 * k) if condition == "distractors" else 0.1 + 0.05 * i
                    s.add(EvalRun(model_version=v, dataset="/data/hotpot_dev.jsonl", dataset_hash="h" * 16,
                                  condition=condition, n_distractors=k, n_examples=100, status="done",
                                  created_at=start + timedelta(days=9 * i + 1),
                                  metrics={"n": 100, "f1": f1, "em": f1 - 0.1, "abstain_rate": 0.05 * k}))  # fmt: skip
    # A daily rhythm (more traffic in working hours), written in time order as a server records it, so
    # the table's physical order follows created_at as in a real database. Latency log-normal, slow tail.
    hours = np.clip(np_rng.normal(13, 3.5, n), 0, 23.99) / 24
    times = np.sort(np.floor(np_rng.uniform(0, days, n)) + hours)
    batch = 5000
    written = {
        "interactions": 0,
        "passages": 0,
        "feedback": 0,
        "by_collection": {c: 0 for c, _ in COLLECTIONS},
    }
    for lo in range(0, n, batch):
        size = min(batch, n - lo)
        offsets = times[lo : lo + size]
        latency = np_rng.lognormal(7.0, 0.5, size)
        inter, passages, feedback = [], [], []
        for j in range(size):
            created = start + timedelta(days=float(offsets[j]))
            frac = (created - start) / (now - start)
            version = _version_at(frac, rng)
            iid = uuid.uuid4().hex
            collection = "handbook" if rng.random() < COLLECTIONS[0][1] else "finance"
            question = " ".join(rng.choices(WORDS, k=rng.randint(5, 12))) + "?"
            abstained = rng.random() < 0.05
            verified = None if abstained else rng.random() < (0.6 + 0.1 * VERSIONS.index(version))
            inter.append({
                "id": iid, "created_at": created, "conversation_id": uuid.uuid4().hex, "turn_index": 0,
                "user_id": f"user{rng.randint(1, 300)}", "source": "api",
                "messages": [{"role": "user", "content": question}], "thread_sha256": iid * 2,
                "retrieval_query": question, "collections": [collection], "kb_version": 1,
                "template_id": "rag-default", "template_version": 1, "prompt_sha256": hashlib.sha256(iid.encode()).hexdigest(),
                "model_version": version, "model_alias": "production", "gen_params": {"max_tokens": 256},
                "answer": "I cannot find this in the documents." if abstained else f"Per the policy, {question[:-1]} [1].",
                "citations": [] if abstained else [{"n": 1, "valid": True, "statement": question}],
                "latency_total_ms": float(latency[j]), "latency_generate_ms": float(latency[j]) * 0.9,
                "verified": verified, "abstained": abstained, "signals_at": created,
            })  # fmt: skip
            for rank in range(1, rng.randint(3, 5) + 1):
                passages.append({
                    "interaction_id": iid, "rank": rank, "chunk_id": uuid.uuid4().hex, "doc_id": f"{collection}-{rank}",
                    "collection": collection, "source_path": f"{collection}/doc{rng.randint(1, 40)}.md", "title": "",
                    "text_sha256": "0" * 64, "kb_version": 1, "score": 1 / (60 + rank), "score_dense": rng.uniform(0.3, 0.8),
                    "score_fulltext": rng.uniform(0, 12), "rank_dense": rank, "rank_fulltext": rng.randint(1, 8),
                })  # fmt: skip
            if rng.random() < 0.08:
                down = rng.random() < 0.3
                feedback.append({
                    "interaction_id": iid, "reviewer_id": "reviewer", "source": "human", "created_at": created,
                    "thumbs": -1 if down else 1, "rating": 2 if down else 4,
                    "corrected_answer": "The right answer [1]." if down and rng.random() < 0.4 else None,
                })  # fmt: skip
            written["by_collection"][collection] += 1
        with session_scope(db_url) as s:
            s.execute(insert(Interaction), inter)
            s.execute(insert(Passage), passages)
            if feedback:
                s.execute(insert(Feedback), feedback)
        written["interactions"] += size
        written["passages"] += len(passages)
        written["feedback"] += len(feedback)
    return written


@contextmanager
def database(kind: str, folder: Path, pg_url: str | None) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    import sqlalchemy as sa

    from ragloop.store.db import dispose_all

    assert pg_url
    name = f"ragloop_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url.rsplit("/", 1)[0] + "/" + name
    finally:
        dispose_all()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(db_url: str, home: Path, n: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per request of each page: the first request (cold: the overview's cache of past days is
    empty) first, then ``repeats`` more."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles
    from fastapi.testclient import TestClient

    import ragloop.serve.dashboard as door
    from ragloop.config import init_home, load_settings
    from ragloop.store.db import session_scope
    from ragloop.store.keys import create_key

    settings = load_settings(init_home(home), database_url=db_url)
    started = time.perf_counter()
    written = seed(db_url, n)
    if db_url.startswith("postgresql"):
        # As autovacuum's analyze leaves a live database: a bulk-loaded one has no statistics yet, and
        # PostgreSQL then plans the scoped list as a hash join over every passage (0.9 s instead of 15 ms).
        import sqlalchemy as sa

        from ragloop.store.db import get_engine

        with get_engine(db_url).connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
    print(f"  seeded {written['interactions']:,} interactions, {written['passages']:,} passages, "
          f"{written['feedback']:,} feedback in {time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    with session_scope(db_url) as s:
        _, admin = create_key(s, "bench-admin", admin=True)
        _, scoped = create_key(s, "bench-finance", collections=["finance"])
    app = FastAPI()
    app.state.settings, app.state.auth = settings, True
    app.mount("/static", StaticFiles(directory=str(Path(door.__file__).parent / "static")), name="static")
    app.include_router(door.dashboard_router(settings))
    from ragloop.monitoring.dashboard import search_interactions

    one = search_interactions(settings, limit=1)["rows"][0]["id"]
    pages = {
        "overview (30 days)": ("/dashboard", admin),
        "overview, scoped key": ("/dashboard", scoped),
        "models": ("/dashboard/models", admin),
        "models, A vs B": ("/dashboard/models?a=sft-v1&b=dpo-v2", admin),
        "interactions": ("/dashboard/interactions", admin),
        "interactions, text": ("/dashboard/interactions?text=overtime+payroll", admin),
        "interactions, text matching nothing": ("/dashboard/interactions?text=zebra", admin),
        "interactions, model + thumbs down": ("/dashboard/interactions?model=sft-v1&feedback=down", admin),
        "interactions, page 20": ("/dashboard/interactions?page=20", admin),
        "interactions, scoped key": ("/dashboard/interactions", scoped),
        "interaction detail": (f"/dashboard/interactions/{one}", admin),
    }
    out: dict[str, list[float]] = {}
    with TestClient(app) as client:
        for name, (path, key) in pages.items():
            headers = {"Authorization": f"Bearer {key}"}
            t = time.perf_counter()
            r = client.get(path, headers=headers)
            times = [time.perf_counter() - t]
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            for _ in range(repeats):
                t = time.perf_counter()
                client.get(path, headers=headers)
                times.append(time.perf_counter() - t)
            out[name] = times
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pg", default=os.environ.get("RAGLOOP_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    kinds = ["sqlite"] + (["postgresql"] if args.pg else [])
    for kind in kinds:
        results: dict[int, dict[str, list[float]]] = {}
        for n in sizes:
            print(f"{kind}, {n:,} interactions:", flush=True)
            with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp), args.pg) as url:
                results[n] = measure(url, Path(tmp) / "home", n, args.repeats)
        small, large = sizes[0], sizes[-1]
        print(f"\n{kind}: ms per page (a first request, then {args.repeats} more; p50/p95 over all)")
        header = (f"| page | p50 @ {small:,} | p95 @ {small:,} | p50 @ {large:,} | p95 @ {large:,} | p95 ratio "
                  f"| first @ {large:,} |")  # fmt: skip
        print(header + "\n|---|---|---|---|---|---|---|")
        worst = 0.0
        for page in results[small]:
            a, b = results[small][page], results[large][page]
            p95a, p95b = np.percentile(a, 95) * 1000, np.percentile(b, 95) * 1000
            worst = max(worst, p95b)
            print(f"| {page} | {np.median(a) * 1000:.0f} | {p95a:.0f} | {np.median(b) * 1000:.0f} | {p95b:.0f} | "
                  f"{p95b / p95a:.1f}x | {b[0] * 1000:.0f} |")  # fmt: skip
        verdict = "meets" if worst <= 500 else "MISSES"
        print(f"\nworst p95 at {large:,}: {worst:.0f} ms ({verdict} the 500 ms target)\n", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
