"""Serving a tuned embedder (issue 20): re-embedding as a new KB version, ingest while two embedders are
live, search with the tuned embedder's model and column, interactions that record it and replay exactly,
releases and A/B arms that move a (model, embedder) pair, and a dimension that does not match.

The tuned embedder is a tiny random sentence-transformers model (dimension 32, the packaged MiniLM's
tokenizer) built here and registered as an ``EmbedderVersion`` row directly: training is not what is
tested. Real LanceDB, real SQLite, the real tiny generator, a real server over HTTP.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ragloop.cli.main import app
from ragloop.config import Settings
from ragloop.errors import Conflict, DimensionMismatch, NotFound, RagloopError
from ragloop.generation import release
from ragloop.generation.assistant import AnswerRequest, Assistant
from ragloop.generation.replay import replay
from ragloop.ingest.embed import embedder_for
from ragloop.ingest.kb import KnowledgeBase, vector_column
from ragloop.ingest.pipeline import embedding_text, ingest_uploads
from ragloop.ingest.reembed import reembed
from ragloop.monitoring import ab
from ragloop.retrieval.search import Retriever
from ragloop.store import aliases
from ragloop.store.db import session_scope
from ragloop.store.models import EmbedderVersion, Interaction, KBVersion, ModelAlias, RegistryEvent
from test_lineage import run_cli

TUNED = "tuned-a"
QUESTION = "How many days of paid vacation do employees receive?"


def build_tiny_embedder(folder: Path, dim: int, seed: int = 0) -> Path:
    """A random one-layer BERT with mean pooling and normalisation, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ragloop.ingest.embed import resolve_embedding_path

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_embedding_path("packaged")))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=dim, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=dim * 2, max_position_embeddings=512,
    )  # fmt: skip
    raw = folder / "raw"
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=256)
    model = SentenceTransformer(modules=[word, models.Pooling(dim, "mean"), models.Normalize()], device="cpu")
    model.save(str(folder / "model"))
    return folder / "model"


@pytest.fixture(scope="module")
def tiny_embedders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two tiny embedder folders, dimension 32 and 16, built once for the module."""
    root = tmp_path_factory.mktemp("embedders")
    return {dim: build_tiny_embedder(root / f"d{dim}", dim) for dim in (32, 16)}


def register(settings: Settings, embedder: str, path: Path, dim: int) -> None:
    with session_scope(settings.db_url) as s:
        s.add(EmbedderVersion(id=embedder, base="packaged", base_hash="", path=str(path), dim=dim, meta={}))


@pytest.fixture
def tuned_home(kb_home: Settings, tiny_embedders: dict[int, Path]) -> Settings:
    register(kb_home, TUNED, tiny_embedders[32], 32)
    Assistant(kb_home)  # registers the base model version and its `base` alias, as a server's start does
    return kb_home


def pair(settings: Settings, alias: str = "production") -> tuple[str, str | None]:
    return tuple(aliases.served_pair(settings.db_url, alias))  # type: ignore[return-value]


def base_version(settings: Settings) -> str:
    return aliases.served_pair(settings.db_url, "base").model_version


def registry(settings: Settings) -> list[tuple[str, str, str | None]]:
    with session_scope(settings.db_url) as s:
        rows = s.scalars(
            select(RegistryEvent).where(RegistryEvent.alias == "production").order_by(RegistryEvent.id)
        )
        return [(e.action, e.model_version_id, e.embedder_version) for e in rows]


def assert_tuned_scores(settings: Settings, hits, query: str) -> None:  # type: ignore[no-untyped-def]
    """Each hit's dense score is the tuned model's cosine of the query and the passage: its query model
    and its column were used (the base column has another dimension and other vectors)."""
    model = embedder_for(settings, TUNED)
    q = model.encode([query])[0]
    dense = [h for h in hits if h.score_dense is not None]
    assert dense
    for h in dense:
        p = model.encode([embedding_text(h.title, h.section, h.text)])[0]
        assert h.score_dense == pytest.approx(float(q @ p), abs=1e-4)


# Re-embedding --------------------------------------------------------------------------------------------


def test_reembed_makes_a_new_kb_version_and_the_old_one_still_serves_the_base_embedder(
    tuned_home: Settings,
) -> None:
    kb = KnowledgeBase(tuned_home)
    old, n = kb.version, kb.count()
    done = run_cli(tuned_home, "kb", "reembed", "--embedder", TUNED)
    assert done.exit_code == 0, done.output
    new = kb.version
    assert new > old and kb.count() == n
    assert kb.vector_columns() == {"vector": 384, vector_column(TUNED): 32}
    assert kb.vector_columns(old) == {"vector": 384}  # the old version is exactly as it was
    assert kb.missing_vectors(TUNED) == 0
    with session_scope(tuned_home.db_url) as s:
        assert s.get(KBVersion, new).change["reembed"] == TUNED
        assert s.get(EmbedderVersion, TUNED).kb_versions == [new]
    assert str(new) in done.output

    retriever = Retriever(tuned_home)
    at_old = retriever.search(QUESTION, 3, version=old)  # base embedder, old version: served as before
    assert at_old and at_old[0].source_path == "vacation.md"
    with pytest.raises(Conflict, match="reembed --embedder tuned-a"):
        retriever.search(QUESTION, 3, version=old, embedder=TUNED)
    tuned = retriever.search(QUESTION, 3, mode="dense", embedder=TUNED)
    assert len(tuned) == 3
    assert_tuned_scores(tuned_home, tuned, QUESTION)

    again = reembed(tuned_home, TUNED)  # nothing missing: no new version
    assert not again.created and kb.version == new


# Ingest while two embedders are live -----------------------------------------------------------------------


def test_ingest_fills_every_live_embedders_column(tuned_home: Settings) -> None:
    kb = KnowledgeBase(tuned_home)
    reembed(tuned_home, TUNED)
    # Not live yet: a new document gets only base vectors, and the tuned embedder cannot be promoted.
    report = ingest_uploads(tuned_home, [("a.txt", b"Parking spaces are assigned by the facilities team.")])
    assert report.ok and kb.missing_vectors(TUNED) == 1
    with pytest.raises(Conflict, match="have no vectors of embedder tuned-a"):
        release.promote(tuned_home, "base", embedder=TUNED)
    assert registry(tuned_home) == []

    filled = reembed(tuned_home, TUNED)  # a second run embeds only what is missing
    assert filled.created and filled.n_embedded == 1 and kb.missing_vectors(TUNED) == 0
    release.promote(tuned_home, "base", embedder=TUNED)
    assert aliases.live_embedders(tuned_home.db_url) == {TUNED}

    report = ingest_uploads(tuned_home, [("b.txt", b"The cafeteria opens at eight and closes at three.")])
    assert report.ok
    assert kb.missing_vectors(TUNED) == 0  # both columns filled for the new chunk
    with session_scope(tuned_home.db_url) as s:
        assert s.get(KBVersion, report.kb_version).change["embedders"] == [TUNED]
        assert s.get(EmbedderVersion, TUNED).kb_versions[-1] == report.kb_version
    hits = Retriever(tuned_home).search("When does the cafeteria open?", 5, mode="dense", embedder=TUNED)
    assert "b.txt" in [h.source_path for h in hits]


# Answering, recording, replaying -------------------------------------------------------------------------


def test_an_answer_served_with_the_tuned_embedder_records_it_and_replays_identically(
    tuned_home: Settings, start_server
) -> None:
    reembed(tuned_home, TUNED)
    server = start_server(tuned_home)
    with server.client() as client:
        promoted = client.post(f"/api/models/{base_version(tuned_home)}/promote", json={"embedder": TUNED})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["embedder_version"] == TUNED
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8}
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        record = answer.json()["ragloop"]
        assert record["embedder_version"] == TUNED
        direct = client.post("/v1/chat/completions", json={**body, "model": base_version(tuned_home)})
        assert direct.json()["ragloop"]["embedder_version"] is None  # a version named directly: base

    with session_scope(tuned_home.db_url) as s:
        row = s.get(Interaction, record["interaction_id"])
        assert (row.embedder_version, row.kb_version) == (TUNED, record["kb_version"])
    hits = Retriever(tuned_home).search(QUESTION, 3, embedder=TUNED)
    assert [p["passage_id"] for p in record["passages"]] == [h.chunk_id for h in hits]
    shown = [SimpleNamespace(**p) for p in record["passages"]]
    assert_tuned_scores(tuned_home, shown, QUESTION)  # the served retrieval used the tuned vectors

    ingest_uploads(tuned_home, [("later.txt", b"A later document changes the knowledge base.")])
    replayed = replay(tuned_home, record["interaction_id"])
    assert replayed.identical, replayed.problems
    assert replayed.sha256 == replayed.recorded_sha256


def test_a_live_evaluation_retrieves_with_the_embedder_named(tuned_home: Settings, tmp_path: Path) -> None:
    import json

    from ragloop.evaluation.run import EvalConfig, run_eval
    from ragloop.store.models import EvalExample

    qa = tmp_path / "qa.jsonl"
    questions = [QUESTION, "What is the maximum fine?"]
    qa.write_text("".join(json.dumps({"question": q, "answers": ["x"]}) + "\n" for q in questions))
    config = EvalConfig(data=str(qa), condition="live", embedder=TUNED, max_new_tokens=4, batch_size=2)
    with pytest.raises(Conflict, match="reembed"):  # the embedder reaches retrieval: no column yet
        run_eval(tuned_home, config)
    reembed(tuned_home, TUNED)
    run = run_eval(tuned_home, config)
    assert run.config["embedder"] == TUNED
    with session_scope(tuned_home.db_url) as s:
        shown = {
            e.question: e.passage_ids
            for e in s.scalars(select(EvalExample).where(EvalExample.run_id == run.id))
        }
    retriever = Retriever(tuned_home)
    assert shown == {q: [h.chunk_id for h in retriever.search(q, 3, embedder=TUNED)] for q in questions}


# Releases ---------------------------------------------------------------------------------------------------


def test_promote_with_an_embedder_and_rollback_move_the_pair(tuned_home: Settings) -> None:
    from test_lineage import register_adapter

    reembed(tuned_home, TUNED)
    base = base_version(tuned_home)
    promoted = run_cli(tuned_home, "models", "promote", base, "--embedder", TUNED)
    assert promoted.exit_code == 0, promoted.output
    assert pair(tuned_home) == (base, TUNED)
    v1 = register_adapter(tuned_home, tuned_home.home.parent, 1, name="v")
    assert run_cli(tuned_home, "models", "promote", v1.id).exit_code == 0  # the alias keeps its embedder
    assert pair(tuned_home) == (v1.id, TUNED)

    back = run_cli(tuned_home, "models", "rollback")
    assert back.exit_code == 0, back.output
    assert pair(tuned_home) == (base, TUNED)
    back = run_cli(tuned_home, "models", "rollback")
    assert back.exit_code == 0, back.output
    assert pair(tuned_home) == (base, None)  # before its first promotion: the base pair
    assert run_cli(tuned_home, "models", "rollback").exit_code == 1  # nothing earlier
    assert registry(tuned_home) == [
        ("promote", base, TUNED),
        ("promote", v1.id, TUNED),
        ("rollback", base, TUNED),
        ("rollback", base, None),
    ]
    # An embedder-only move, and back to the base embedder by name.
    release.promote(tuned_home, "production", embedder=TUNED)
    assert pair(tuned_home) == (base, TUNED)
    listed = CliRunner().invoke(
        app, ["models", "embedders", "--home", str(tuned_home.home)], env={"COLUMNS": "300"}
    )
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if TUNED in line)
    assert "production" in row and f"{base}" in row
    assert run_cli(tuned_home, "models", "promote", "production", "--embedder", "base").exit_code == 0
    assert pair(tuned_home) == (base, None)


# A/B arms ---------------------------------------------------------------------------------------------------


def test_an_ab_candidate_arm_with_an_embedder_serves_it(tuned_home: Settings) -> None:
    base = base_version(tuned_home)
    with pytest.raises(Conflict, match="reembed"):  # not re-embedded yet: refused, nothing started
        ab.start(tuned_home, candidate=base, candidate_embedder=TUNED, share=0.5, min_units=0)
    with pytest.raises(RagloopError, match="nothing to compare"):
        ab.start(tuned_home, candidate=base, share=0.5)
    reembed(tuned_home, TUNED)
    started = ab.start(tuned_home, candidate=base, candidate_embedder=TUNED, share=0.5, min_units=0)
    assert started["arms"] == {
        "control": {"model_version": base},
        "candidate": {"model_version": base, "embedder_version": TUNED},
    }
    assert aliases.live_embedders(tuned_home.db_url) == {TUNED}

    assistant = Assistant(tuned_home)
    served: dict[str, set] = {}
    for i in range(16):
        result = assistant.answer(
            AnswerRequest(messages=[{"role": "user", "content": QUESTION}], max_tokens=4,
                          conversation_id=f"unit-{i}", source="api")
        )  # fmt: skip
        served.setdefault(result.arm, set()).add(result.embedder_version)
        if result.arm == "candidate":  # its passages were found with the tuned model and column
            assert_tuned_scores(tuned_home, result.passages, QUESTION)
    assert served == {"control": {None}, "candidate": {TUNED}}
    report = ab.status(tuned_home)
    assert report["arms"]["candidate"]["embedder_version"] == TUNED
    assert report["arms"]["candidate"]["interactions"] + report["arms"]["control"]["interactions"] == 16

    promoted = ab.promote(tuned_home)
    assert promoted["experiment"]["status"] == "promoted"
    assert pair(tuned_home) == (base, TUNED)


# Bad input --------------------------------------------------------------------------------------------------


def test_an_embedder_whose_dimension_differs_from_its_column_is_refused_and_nothing_changes(
    tuned_home: Settings, tiny_embedders: dict[int, Path]
) -> None:
    kb = KnowledgeBase(tuned_home)
    # Registered with a dimension its folder does not have: refused before anything is read or written.
    register(tuned_home, "wrong-dim", tiny_embedders[16], 32)
    before = kb.version
    with pytest.raises(DimensionMismatch, match="registered with dimension 32"):
        reembed(tuned_home, "wrong-dim")
    assert kb.version == before

    # A column of dimension 32 whose model now makes 16 (the folder was replaced after re-embedding).
    reembed(tuned_home, TUNED)
    with session_scope(tuned_home.db_url) as s:
        s.get(EmbedderVersion, TUNED).path = str(tiny_embedders[16])
        s.get(EmbedderVersion, TUNED).dim = 16
    version = kb.version
    with pytest.raises(DimensionMismatch, match="dimension 16"):
        reembed(tuned_home, TUNED)
    with pytest.raises(DimensionMismatch, match="stores dimension 32"):
        Retriever(tuned_home).search(QUESTION, 3, embedder=TUNED)
    with pytest.raises(DimensionMismatch):
        release.promote(tuned_home, "base", embedder=TUNED)
    assert kb.version == version and registry(tuned_home) == []
    with session_scope(tuned_home.db_url) as s:
        assert s.get(ModelAlias, "production") is None
    with pytest.raises(NotFound, match="No embedder version 'nope'"):
        Retriever(tuned_home).search(QUESTION, 3, embedder="nope")
    # The base embedder is untouched by all this.
    assert Retriever(tuned_home).search(QUESTION, 3)[0].source_path == "vacation.md"
    assert np.isfinite(kb.count())
