"""Drift reports (issue 18) over a real home: SQLite, LanceDB and the MiniLM embedder.

A small GDPR knowledge base (articles 1-25 of the regulation, one file per article) and a model version
trained on GDPR questions about it (a DatasetVersion whose rows carry gold chunk ids, as a dataset built from
interactions does). Live windows are Interaction rows written directly, with the passages the real retriever
returns for each question, so their dense scores are what serving would have recorded.
"""

from __future__ import annotations

import json
import random
import shlex
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import typer

from conftest import make_home, with_overrides
from ragloop.cli.main import app as cli_app
from ragloop.cli.training import _overrides
from ragloop.config import Settings
from ragloop.ingest.kb import KnowledgeBase
from ragloop.ingest.pipeline import ingest_uploads, remove_documents
from ragloop.monitoring.drift import drift_report, latest_reports, run_drift
from ragloop.retrieval.search import Hit, Retriever
from ragloop.store.db import get_engine, session_scope
from ragloop.store.models import (
    Alert,
    DatasetVersion,
    DriftReport,
    Interaction,
    Job,
    ModelAlias,
    ModelVersion,
    Passage,
    RegistryEvent,
)
from ragloop.training.config import load_train_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Articles with many points, so a small text gives enough questions (~180 points: half trained on, asked twice, 40 of the others held out).
ARTICLES = (4, 6, 9, 13, 14, 15, 17, 23, 28, 30)
UNIT_WORDS = 16
N_TRAIN, N_HELD_OUT, N_OTHER = 160, 40, 40
# Drift reads records and the knowledge base and never generates: the homes name no real model.
NO_GENERATOR = Path("/nonexistent/generator")
VERSION = "gdpr-v1"
T0 = datetime(2026, 6, 1, 12, 0)  # the version's promotion; windows are placed after it
TEMPLATES = (
    "What does the GDPR say about {title_l}, in particular that {snippet}?",
    "Under Article {n} of the GDPR, is it true that {snippet}?",
    "According to the regulation's rules on {title_l}, what applies when {snippet}?",
    "Explain the provision of Article {n} GDPR stating that {snippet}.",
)


def _articles() -> list[dict]:
    data = json.loads((DATA / "gdpr" / "gdpr.json").read_text())
    found: list[dict] = []

    def walk(items: list[dict]) -> None:
        for item in items:
            if item.get("type") == "article":
                found.append(item)
            elif "contents" in item:
                walk(item["contents"])

    walk(data["chapters"])
    return [a for a in found if int(a["number"]) in ARTICLES]


def _units(article: dict) -> list[str]:
    """The article's points and subpoints with enough text to ask about."""
    out = []
    for point in article["contents"]:
        for text in [point.get("text") or "", *[s.get("text") or "" for s in point.get("subpoints") or []]]:
            if len(text) > 60:  # cut short: embedding the knowledge base is most of this module's time
                out.append(" ".join(text.split()[:UNIT_WORDS]))
    return out


def _article_file(article: dict, edit: str = "") -> tuple[str, bytes]:
    body = "\n\n".join(u + edit for u in _units(article))
    text = f"# Article {article['number']}: {article['title']}\n\n{body}\n"
    return f"article-{int(article['number']):02d}.md", text.encode()


def _question(article: dict, unit: str, template: str) -> str:
    words = unit.split()[:12]
    snippet = " ".join(words).rstrip(",;:.")
    snippet = snippet[0].lower() + snippet[1:]
    title = article["title"]
    return template.format(n=article["number"], title_l=title[0].lower() + title[1:], snippet=snippet)


def _other_domain(n: int) -> list[str]:
    """Questions of other domains: biomedical (PubMedQA) and Wikipedia multi-hop (HotpotQA)."""
    pubmed = json.loads((DATA / "pubmedqa" / "pqal_train.json").read_text())
    questions = [v["QUESTION"] for v in list(pubmed.values())[: n // 2]]
    with (DATA / "hotpotqa_distractor" / "dev.jsonl").open() as fh:
        for line in fh:
            if len(questions) >= n:
                break
            questions.append(json.loads(line)["question"])
    return questions


def retrieve(settings: Settings, questions: list[str]) -> dict[str, list[Hit]]:
    """What the real retriever returns for each question (their dense and full-text scores as serving
    records them); done once per module, written into each test's home by ``write_window``."""
    retriever = Retriever(settings)
    vectors = retriever.embedder.encode(questions)
    return {q: retriever.search(q, query_vector=v) for q, v in zip(questions, vectors, strict=True)}


def write_window(
    settings: Settings,
    hits_of: dict[str, list[Hit]],
    questions: list[str],
    start: datetime,
    version: str = VERSION,
    embedder: str | None = None,
) -> None:
    """One live interaction per question, a minute apart from ``start``, with its retrieved passages."""
    kb_version = KnowledgeBase(settings).version
    with session_scope(settings.db_url) as s:
        for i, q in enumerate(questions):
            hits = hits_of[q]
            s.add(
                Interaction(
                    created_at=start + timedelta(minutes=i),
                    conversation_id=f"c-{start:%m%d%H%M}-{i}",
                    turn_index=0,
                    source="api",
                    messages=[{"role": "user", "content": q}],
                    thread_sha256="t" * 64,
                    retrieval_query=q,
                    kb_version=kb_version,
                    template_id="cited-answer",
                    template_version=1,
                    prompt_sha256="p" * 64,
                    model_version=version,
                    embedder_version=embedder,
                    model_alias="production",
                    gen_params={},
                    answer="An answer [1].",
                    citations=[{"n": 1, "valid": True}],
                    passages=[
                        Passage(
                            rank=r,
                            chunk_id=h.chunk_id,
                            doc_id=h.doc_id,
                            collection=h.collection,
                            source_path=h.source_path,
                            title=h.title,
                            section=h.section,
                            text_sha256=h.text_sha256,
                            kb_version=kb_version,
                            score=h.score,
                            score_dense=h.score_dense,
                            score_fulltext=h.score_fulltext,
                            rank_dense=h.rank_dense,
                            rank_fulltext=h.rank_fulltext,
                        )
                        for r, h in enumerate(hits, start=1)
                    ],  # fmt: skip
                )
            )


@pytest.fixture(scope="module")
def gdpr(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A home with the GDPR articles ingested and ``gdpr-v1`` (trained on half of the questions, the
    other half held out) promoted to production at T0."""
    settings = make_home(tmp_path_factory.mktemp("drift"), NO_GENERATOR)
    articles = _articles()
    report = ingest_uploads(settings, [_article_file(a) for a in articles], collection="gdpr")
    assert report.ok, report.errors
    kb = KnowledgeBase(settings)
    table = kb.table().search().select(["chunk_id", "doc_id", "source_path", "text"]).limit(None).to_list()
    rng = random.Random(0)
    train, held_out = [], []
    gold_doc: dict[str, str] = {}  # example id -> source path of its gold passage
    for article in articles:
        name = _article_file(article)[0]
        chunks = [r for r in table if r["source_path"].endswith(name)]
        for j, unit in enumerate(_units(article)):
            gold = next(c for c in chunks if unit[:40] in " ".join(c["text"].split()))
            # Trained units are asked twice (two templates), so the reference covers the phrasings well.
            for k, template in enumerate(rng.sample(TEMPLATES, 2 if j % 2 == 0 else 1)):
                example = {"id": f"a{article['number']}-{j}-{k}", "question": _question(article, unit, template),
                           "oracle_ids": [gold["chunk_id"]]}  # fmt: skip
                gold_doc[example["id"]] = name
                (train if j % 2 == 0 else held_out).append(example)
    rng.shuffle(train)
    rng.shuffle(held_out)
    train, held_out = train[:N_TRAIN], held_out[:N_HELD_OUT]
    folder = settings.data_dir / "datasets" / "ds-gdpr"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    with session_scope(settings.db_url) as s:
        s.add(DatasetVersion(id="ds-gdpr", name="gdpr", content_hash="c" * 64, policy={}, source="interactions",
                             kb_version=kb.version, path=str(folder), command="ragloop dataset build --name gdpr"))  # fmt: skip
        s.add(ModelVersion(id=VERSION, base_model="tiny", dataset_id="ds-gdpr",
                           meta={"kind": "sft", "name": "gdpr", "kb_version": kb.version}))  # fmt: skip
        s.flush()
        s.add(ModelAlias(name="production", model_version_id=VERSION))
        s.add(RegistryEvent(created_at=T0, action="promote", alias="production", model_version_id=VERSION))
    other = _other_domain(N_OTHER)
    hits = retrieve(settings, other + [e["question"] for e in held_out])
    drift_report(settings)  # computes and caches the reference (under data/drift/), which clones copy
    get_engine(settings.db_url).dispose()  # checkpoint SQLite's WAL: clones copy the file
    return {"settings": settings, "train": train, "held_out": held_out, "gold_doc": gold_doc,
            "articles": articles, "other": other, "hits": hits}  # fmt: skip


def clone(gdpr: dict, tmp_path: Path) -> Settings:
    """A home of its own with the module's data, for a test that writes records or edits the KB."""
    settings = make_home(tmp_path, NO_GENERATOR)
    shutil.copytree(gdpr["settings"].data_dir, settings.data_dir, dirs_exist_ok=True)
    return settings


def _parse_cli(command: str) -> dict:
    """The options `ragloop` would call its command with, parsed by the CLI itself (nothing run)."""
    argv = shlex.split(command, comments=True)
    assert argv[0] == "ragloop"
    command = typer.main.get_command(cli_app)
    for word in argv[1:]:
        sub = command.commands.get(word) if hasattr(command, "commands") else None  # a group's subcommand
        if sub is None:
            break
        command, argv = sub, argv[1:]
    return command.make_context(argv[0], argv[1:]).params


def _signals(report: dict) -> dict[str, dict]:
    return {sig["name"]: sig for sig in report["signals"]}


def test_other_domain_window_is_drift_and_a_held_out_window_is_not(gdpr: dict, tmp_path: Path) -> None:
    settings = clone(gdpr, tmp_path)
    # The version's training job, as `ragloop train sft` records it: settings left at their default are None.
    with session_scope(settings.db_url) as s:
        s.add(Job(id="job-gdpr", kind="sft", status="succeeded",
                  config={"dataset": "ds-gdpr", "base": "packaged", "name": "gdpr",
                          "train": {"learning_rate": 0.0005, "batch_size": None, "max_steps": None}}))  # fmt: skip
        mv = s.get(ModelVersion, VERSION)
        mv.meta = {**mv.meta, "job_id": "job-gdpr"}
    shifted_at = T0 + timedelta(days=10)
    write_window(settings, gdpr["hits"], gdpr["other"], shifted_at)
    report = drift_report(settings, now=shifted_at + timedelta(days=1))
    sig = _signals(report)
    assert report["model_version"] == VERSION and report["alias"] == "production"
    assert report["reference"]["dataset_id"] == "ds-gdpr"
    assert report["reference"]["n_questions"] == len({e["question"] for e in gdpr["train"]})
    assert report["window"]["n"] == N_OTHER
    assert sig["query_domain"]["verdict"] == "drift", sig["query_domain"]
    assert sig["coverage_gap"]["verdict"] == "drift", sig["coverage_gap"]
    assert report["verdict"] == "drift" and not report["not_enough_data"]
    rec = report["recommendation"]
    assert rec["retrain"] and any(r.startswith("query_domain") for r in rec["reasons"])
    assert rec["commands"][0] == "ragloop dataset build --name gdpr"
    # Both commands are the CLI's own syntax, pasteable into a shell once the new id is filled in.
    train_args = _parse_cli(rec["commands"][1])
    assert train_args["dataset"] == "NEW_DATASET_ID" and train_args["base"] == "packaged"
    load_train_config(None, **_overrides(train_args["set_"]))  # every --set value passes validation
    assert _parse_cli(rec["commands"][0])["name"] == "gdpr"
    assert report["coverage"]["uncovered_share"] > 0.1 and report["coverage"]["threshold_score"] is not None
    hist = report["histograms"]["retrieval_top1"]
    assert sum(hist["reference"]) == report["reference"]["n_questions"] and sum(hist["current"]) == N_OTHER
    assert report["reference"]["cached"] is True  # computed once by the fixture, read back here
    json.dumps(report)  # JSON-safe, as stored and served

    # Held-out questions of the same kind, in a later window: the same version, no drift.
    later = T0 + timedelta(days=30)
    write_window(settings, gdpr["hits"], [e["question"] for e in gdpr["held_out"]], later)
    # (with a threshold of its own: each signal's threshold is a setting)
    calm = drift_report(
        with_overrides(settings, drift={"centroid_distance": 0.2}), now=later + timedelta(days=1)
    )
    sig = _signals(calm)
    assert sig["query_centroid"]["threshold"] == 0.2
    assert calm["window"]["n"] == len(gdpr["held_out"])
    for name in ("query_domain", "coverage_gap"):
        assert sig[name]["verdict"] in ("ok", "warn"), sig[name]
    assert not calm["recommendation"]["retrain"], calm["recommendation"]


def test_kb_edit_is_detected_and_named(gdpr: dict, tmp_path: Path) -> None:
    settings = clone(gdpr, tmp_path)
    by_number = {int(a["number"]): a for a in gdpr["articles"]}
    changed, deleted = _article_file(by_number[6])[0], _article_file(by_number[17])[0]
    edited = ingest_uploads(settings, [_article_file(by_number[6], edit=" (as amended)")], collection="gdpr")
    assert edited.replaced, edited
    removed = remove_documents(settings, [deleted], collection="gdpr")
    assert removed.removed, removed.errors

    report = drift_report(settings, now=T0 + timedelta(days=5))
    kb = report["kb_changes"]
    n_changed = sum(1 for e in gdpr["train"] if gdpr["gold_doc"][e["id"]] == changed)
    n_deleted = sum(1 for e in gdpr["train"] if gdpr["gold_doc"][e["id"]] == deleted)
    assert n_changed and n_deleted
    assert (kb["replaced"], kb["removed"], kb["added"]) == (1, 1, 0)
    assert kb["training_examples"] == len(gdpr["train"])
    assert (kb["gold_changed"], kb["gold_deleted"]) == (n_changed, n_deleted)
    named = {Path(d["source_path"]).name: d["change"] for d in kb["changed_documents"]}
    assert named == {changed: "replaced", deleted: "removed"}
    assert report["kb_version_now"] > report["kb_version_trained"]
    share = (n_changed + n_deleted) / len(gdpr["train"])
    sig = _signals(report)["kb_changed"]
    assert sig["value"] == pytest.approx(share)
    # Two of the ten articles took more than a tenth of the training gold with them: drift, and a reason.
    assert share > settings.drift.kb_changed_share and sig["verdict"] == "drift"
    assert any(r.startswith("kb_changed") for r in report["recommendation"]["reasons"])


def test_too_little_data_is_not_a_verdict(gdpr: dict, tmp_path: Path) -> None:
    settings = clone(gdpr, tmp_path)
    # A base model (no training dataset) with a handful of records: nothing can be judged.
    with session_scope(settings.db_url) as s:
        s.add(ModelVersion(id="base-x", base_model="tiny", meta={"kind": "base"}))
        s.flush()
        s.add(ModelAlias(name="staging", model_version_id="base-x"))
        s.add(RegistryEvent(created_at=T0, action="alias", alias="staging", model_version_id="base-x"))
    write_window(settings, gdpr["hits"], gdpr["other"][:6], T0 + timedelta(days=1), version="base-x")
    report = drift_report(settings, alias="staging", now=T0 + timedelta(days=2))
    assert report["verdict"] == "not enough data" and report["not_enough_data"]
    assert all(sig["verdict"] == "not enough data" for sig in report["signals"])
    assert report["reference"]["kind"] == "first window after promotion"
    assert "first window" in report["reference"]["note"]
    assert not report["recommendation"]["retrain"]

    # The trained version with only a few live records: its query and score signals say so too.
    write_window(settings, gdpr["hits"], gdpr["other"][:5], T0 + timedelta(days=3))
    # The same version answering through another (tuned) embedder is another pair, another reference.
    write_window(
        settings, gdpr["hits"], gdpr["other"][5:40], T0 + timedelta(days=3, hours=1), embedder="emb-x"
    )
    few = drift_report(settings, now=T0 + timedelta(days=4))
    assert few["window"]["n"] == 5 and few["embedder_version"] is None
    # An unchanged knowledge base is no verdict on five live records.
    assert _signals(few)["kb_changed"]["verdict"] == "ok"
    assert few["verdict"] == "not enough data" and few["not_enough_data"]
    for name in ("query_domain", "query_centroid", "retrieval_top1", "coverage_gap"):
        assert _signals(few)[name]["verdict"] == "not enough data"


def test_run_drift_stores_the_report_and_raises_one_alert(gdpr: dict, tmp_path: Path) -> None:
    settings = clone(gdpr, tmp_path)
    at = T0 + timedelta(days=10)
    write_window(settings, gdpr["hits"], gdpr["other"], at)
    first = run_drift(settings, now=at + timedelta(days=1), source="server")
    second = run_drift(settings, now=at + timedelta(days=1, hours=1))
    with session_scope(settings.db_url) as s:
        rows = list(s.query(DriftReport).order_by(DriftReport.created_at))
        alerts = list(s.query(Alert))
    assert [r.id for r in rows] == [first["id"], second["id"]]
    assert rows[0].verdict == first["verdict"] == "drift" and rows[0].retrain and rows[0].source == "server"
    assert len(alerts) == 1 and alerts[0].kind == "drift"  # the same open condition is raised once
    listed = latest_reports(settings, alias="production")
    assert [r["id"] for r in listed] == [second["id"], first["id"]]
    assert listed[1]["signals"] == first["signals"] and listed[1]["source"] == "server"
    assert latest_reports(settings, alias="staging") == []
