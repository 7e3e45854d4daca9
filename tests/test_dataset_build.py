"""From records to a dataset version: curation filters, PII, grouped splits, RAFT examples, exports,
determinism, erasure through lineage, decontamination, and bad input."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.curation.erasure import forget
from ragloop.curation.policy import Policy, load_policy, parse_policy
from ragloop.datasets.build import build_dataset, load_examples
from ragloop.datasets.export import FORMATS, export_dataset
from ragloop.errors import RagloopError
from ragloop.feedback.service import add_feedback
from ragloop.generation.assistant import AnswerRequest, Assistant
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, Interaction, ModelVersion

PII = {
    "email": "maria.keller@example-mail.com",
    "phone": "+49 30 1234 5678",
    "iban": "DE89370400440532013000",
    "name": "Maria Keller",
}

QUESTIONS = [
    (
        f"I am {PII['name']} ({PII['email']}, {PII['phone']}). How many days of paid vacation do I get?",
        f"Twenty-five days per year [1]. Contact {PII['name']} at {PII['email']} or IBAN {PII['iban']}.",
    ),
    ("When do unused vacation days expire?", "At the end of March of the following year [1]."),
    ("How often must passwords be rotated?", "Every ninety days [1]."),
    ("What must laptops use?", "Full disk encryption [1]."),
    ("How high can fines be?", "Up to 20 000 000 EUR or 4 % of turnover [1]."),
    ("Who sets the amount of fines?", "Supervisory authorities [1]."),
]


@pytest.fixture
def rated_home(kb_home):
    """Six answered, reviewed turns: corrections that cite the right passage, one thumbs-down."""
    assistant = Assistant(kb_home)
    ids = []
    for question, correction in QUESTIONS:
        r = assistant.answer(
            AnswerRequest(messages=[{"role": "user", "content": question}], max_tokens=4, k=3)
        )
        ids.append(r.interaction_id)
        with session_scope(kb_home.db_url) as s:
            add_feedback(
                s,
                r.interaction_id,
                {"reviewer_id": "rev", "thumbs": "down", "corrected_answer": correction, "gold": [1]},
            )
    return kb_home, ids


def test_build_is_deterministic_split_by_document_and_anonymised(rated_home, tmp_path):
    home, ids = rated_home
    policy = Policy()
    a = build_dataset(home, policy, name="t", seed=1)
    b = build_dataset(home, policy, name="t", seed=1)
    assert a.dataset_id == b.dataset_id and a.created and not b.created
    c = build_dataset(home, policy, name="t", seed=2)
    assert c.dataset_id != a.dataset_id
    counts = a.counts
    assert counts["sources"]["interactions"] == 6
    assert [f["filter"] for f in counts["filters"]] == [n for n, _ in policy.filters]
    examples = load_examples(home, a.dataset_id)
    total = sum(len(v) for v in examples.values())
    assert total == 6 - sum(f["dropped"] for f in counts["filters"])
    # no gold document in two splits
    owner = {}
    for split, rows in examples.items():
        for ex in rows:
            for p in ex["passages"]:
                if p["id"] in ex["oracle_ids"]:
                    assert owner.setdefault(p["source_path"], split) == split
    # every prompt is the serve-time template's
    for rows in examples.values():
        for ex in rows:
            assert ex["prompt"][0]["role"] == "system" and "Question:" in ex["prompt"][-1]["content"]
    # not one seeded identifier in any export format
    for fmt in FORMATS:
        out = tmp_path / fmt
        export_dataset(home, a.dataset_id, fmt, out)
        blob = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
        assert blob, fmt
        for value in PII.values():
            assert value not in blob, (fmt, value)
    with session_scope(home.db_url) as s:
        dv = s.get(DatasetVersion, a.dataset_id)
        assert (
            dv.policy["name"] == "default" and dv.seed == 1 and dv.content_hash.startswith(a.dataset_id[3:])
        )


def test_dpo_export_pairs_chosen_correction_with_rejected_answer(rated_home, tmp_path):
    """Each pair is one reviewed turn: chosen states the reviewer's correction, rejected is the model's
    own answer that the reviewer turned down (not a stand-in answer built from a distractor)."""
    home, ids = rated_home
    # The tiny random model answers with nothing printable; give each turn an answer a reviewer rejects.
    model_said = {question: f"I believe it is {n} weeks." for n, (question, _) in enumerate(QUESTIONS)}
    with session_scope(home.db_url) as s:
        for iid, (question, _) in zip(ids, QUESTIONS, strict=True):
            s.get(Interaction, iid).answer = model_said[question]
    ds = build_dataset(home, Policy(), seed=0).dataset_id
    export_dataset(home, ds, "dpo", tmp_path)
    pairs = [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()
    ]
    examples = sum(len(rows) for rows in load_examples(home, ds).values())
    assert len(pairs) == examples > 0  # every reviewed turn kept by curation is a pair
    seen = set()
    for pair in pairs:
        asked = pair["prompt"][-1]["content"].rsplit("Question: ", 1)[1].strip()
        (question, correction) = next(
            (q, c) for q, c in QUESTIONS if q == asked or q.endswith(asked.rsplit(". ", 1)[-1])
        )
        seen.add(question)
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert rejected == model_said[question]
        stated = chosen.rsplit("Answer: ", 1)[1]
        if question == QUESTIONS[0][0]:  # the correction with PII: pseudonymised, its facts kept
            assert _bare(stated).startswith("Twenty-five days per year. Contact")
            assert not any(value in chosen for value in PII.values())
        else:
            assert _bare(stated) == _bare(correction)
        assert pair["prompt"][-1]["role"] == "user"
    assert len(seen) == len(pairs)  # one pair per turn


def _bare(answer: str) -> str:
    """An answer without its [n] citations and with the spacing they leave behind."""
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(re.sub(r"\[\d+\]", "", answer).split()))


def test_forget_erases_records_and_marks_lineage(rated_home):
    home, ids = rated_home
    ds = build_dataset(home, Policy(), seed=0).dataset_id
    with session_scope(home.db_url) as s:
        s.add(ModelVersion(id="sft-test", base_model="x", dataset_id=ds))
        s.add(ModelVersion(id="dpo-test", base_model="x", dataset_id="ds-other", parent_id="sft-test"))
        conversation = s.get(Interaction, ids[0]).conversation_id
    report = forget(home, conversation_id=conversation)
    assert (
        report.interactions == 1
        and report.feedback == 1
        and report.datasets == [ds]
        and report.models == ["dpo-test", "sft-test"]
    )
    with session_scope(home.db_url) as s:
        assert s.get(Interaction, ids[0]) is None
        dv = s.get(DatasetVersion, ds)
        assert dv.contains_erased and "rebuild" in dv.erased_note
        assert s.get(ModelVersion, "sft-test").contains_erased
        assert "parent sft-test" in s.get(ModelVersion, "dpo-test").erased_note
    rebuilt = build_dataset(home, Policy(), seed=0)
    assert rebuilt.dataset_id != ds and rebuilt.counts["sources"]["interactions"] == 5
    with pytest.raises(RagloopError):
        forget(home)


def test_decontamination_drops_eval_questions(rated_home, tmp_path):
    home, _ = rated_home
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(
        json.dumps(
            {
                "question": "How often must passwords be rotated?",
                "answers": ["90 days"],
                "gold": [{"title": "x", "text": "unrelated gold text"}],
            }
        )
        + "\n"
    )
    r = build_dataset(home, Policy(), eval_sets=[eval_file])
    assert r.counts["decontamination"]["near_duplicate_question"] == 1


def test_policy_errors_are_clear_and_change_nothing(rated_home, tmp_path):
    home, _ = rated_home
    bad = tmp_path / "policy.yaml"
    bad.write_text("filters:\n  - accepted: {}\n  - sparkle: {}\n")
    with pytest.raises(RagloopError, match="unknown filter 'sparkle'"):
        load_policy(bad)
    for data in (
        {"filters": [{"length": {"min_chars": 3}}]},
        {"split": {"train": 0.5, "val": 0.1, "test": 0.1}},
        {"raft": {"policy": "guess"}},
        {"colour": 1},
        ["x"],
    ):
        with pytest.raises(RagloopError):
            parse_policy(data)
    r = CliRunner().invoke(app, ["dataset", "build", "--policy", str(bad), "--home", str(home.home)])
    assert r.exit_code != 0
    with session_scope(home.db_url) as s:
        assert s.query(DatasetVersion).count() == 0


def test_empty_build_fails_with_advice(kb_home):
    with pytest.raises(RagloopError, match="Nothing to build"):
        build_dataset(kb_home, Policy())


def test_thumbs_up_on_an_unfounded_answer_does_not_become_training_data():
    from ragloop.curation.pipeline import Candidate, apply_filters
    from ragloop.feedback.service import Judgement
    from ragloop.generation.replay import ShownPassage

    passage = ShownPassage(
        "c1",
        "d1",
        "GDPR",
        "gdpr.xml",
        "Article 17",
        "The data subject shall have the right to obtain from the controller the erasure of personal data.",
    )
    liked = Judgement(reviewers=["r"], accepted=True, mean_rating=5.0, gold_ranks=[1])

    def cand(answer: str) -> Candidate:
        return Candidate(
            "i", "c", 1, "What is the right to erasure?", [passage], answer, False, liked, answer, [1]
        )

    kept, reports = apply_filters(
        [
            cand("It is a human right enshrined in the European Convention on Human Rights."),
            cand("The data subject can obtain from the controller the erasure of personal data."),
        ],
        Policy(),
    )
    assert [c.answer[:8] for c in kept] == ["The data"]
    verify = next(r for r in reports if r.name == "verify_citations")
    assert verify.reasons == {"unsupported statement": 1}


def test_imported_set_without_distractors_takes_them_from_its_own_split(home, tmp_path):
    """PubMedQA-like items carry only their gold: RAFT distractors come from the other items of the same
    split (never from another split, which would show a test question's gold in training)."""
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": f"q{i}", "question": f"Does treatment {i} work?", "answers": ["yes"],
         "gold": [{"title": f"study {i}", "text": f"Study {i} found that treatment {i} works well."}]}
        for i in range(40)
    ]  # fmt: skip
    qa.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    policy = Policy(pii={"enabled": False, "entities": None, "vault": False},
                    raft={"n_passages": 3, "p_oracle": 1.0, "policy": "answer", "target": "plain"})  # fmt: skip
    r = build_dataset(home, policy, from_interactions=False, imports=[("generic", qa)])
    examples = load_examples(home, r.dataset_id)
    for split, rows_ in examples.items():
        own = {p["id"] for ex in rows_ for p in ex["passages"] if p["id"] in ex["oracle_ids"]}
        for ex in rows_:
            assert len(ex["passages"]) == 3
            others = [p["id"] for p in ex["passages"] if p["id"] not in ex["oracle_ids"]]
            assert len(others) == 2 and set(others) <= own, split


def test_decontamination_keeps_a_templated_question_about_another_document():
    """PolicyQA asks the same questions of every website: only the same question with the same answer leaks."""
    from ragloop.datasets.build import decontaminate
    from ragloop.datasets.qa import QAItem, QAPassage

    def item(i: str, q: str, a: str, text: str) -> QAItem:
        return QAItem(id=i, question=q, answers=[a], gold=[QAPassage(id=i, title=i, text=text)], distractors=[],
                      answer_type="span")  # fmt: skip

    q = "Does the website share user details with advertisers?"
    evals = [item("e1", q, "email addresses", "Site A shares email addresses with advertisers.")]
    train = [
        item("t1", q, "purchase history", "Site B shares purchase history with its advertisers."),
        item("t2", q + " ", "Email addresses.", "Another copy of site A's policy, reworded."),
        item("t3", "Who runs site C?", "Acme", "Site A shares email addresses with advertisers."),
    ]
    kept, counts = decontaminate(train, evals)
    assert [i.id for i in kept] == ["t1"]
    assert counts == {
        "near_duplicate_question": 1,
        "shared_gold_passage": 1,
        "kept_same_question_other_answer": 1,
        "shared_documents_kept": False,
    }
    # The RAFT setting: other questions on the very documents of the evaluation (Gorilla's API split).
    kept, counts = decontaminate(train, evals, shared_documents=True)
    assert [i.id for i in kept] == ["t1", "t3"] and counts["shared_gold_passage"] == 0


def test_a_correction_whose_evidence_the_retriever_missed_becomes_an_example(kb_home):
    """Retrieval showed the wrong passage; the reviewer corrected the answer and pinned the passage that
    supports it. Without evidence curation drops the record (nothing to cite); with it, the pinned passage
    is the example's gold and the passage really shown is its hard negative."""
    from ragloop.curation.pipeline import load_candidates
    from ragloop.datasets.build import candidates_to_items
    from ragloop.ingest.kb import KnowledgeBase

    r = Assistant(kb_home).answer(
        AnswerRequest(
            messages=[{"role": "user", "content": "How often must passwords be rotated?"}],
            max_tokens=4,
            k=1,
            collections=["handbook"],
        )
    )
    shown = r.passages[0]
    rows = KnowledgeBase(kb_home).table().search().select(["chunk_id", "collection"]).limit(None).to_list()
    other = next(
        x["chunk_id"] for x in rows if x["collection"] == "handbook" and x["chunk_id"] != shown.chunk_id
    )
    correction = {"reviewer_id": "rev", "thumbs": "down", "corrected_answer": "Every ninety days."}
    with session_scope(kb_home.db_url) as s:
        add_feedback(s, r.interaction_id, correction)
    with pytest.raises(RagloopError, match="Nothing to build"):  # no passage to read the answer from
        build_dataset(kb_home, Policy(), name="no-evidence", seed=1)
    [candidate] = load_candidates(kb_home)
    assert candidate.oracle_ranks == []

    with session_scope(kb_home.db_url) as s:
        add_feedback(s, r.interaction_id, {**correction, "evidence": [other]}, kb=KnowledgeBase(kb_home))
    [candidate] = load_candidates(kb_home)
    assert candidate.shown == 1 and candidate.oracle_ranks == [2]
    [item] = candidates_to_items([candidate])
    assert [p.id for p in item.gold] == [other] and [p.id for p in item.distractors] == [shown.chunk_id]
    report = build_dataset(kb_home, Policy(), name="evidence", seed=1)
    assert sum(f["dropped"] for f in report.counts["filters"]) == 0
    examples = [ex for rows in load_examples(kb_home, report.dataset_id).values() for ex in rows]
    assert len(examples) == 1 and examples[0]["answer"].startswith("Every ninety days")

    # The pinned text changed (a hash that no longer matches): the reviewer vouched for other words, so
    # the passage is left out and the record has nothing to cite again.
    from ragloop.store.models import Feedback

    with session_scope(kb_home.db_url) as s:
        for fb in s.query(Feedback):
            fb.evidence = [{**e, "text_sha256": "0" * 64} for e in fb.evidence or []] or None
    [candidate] = load_candidates(kb_home)
    assert len(candidate.passages) == 1 and candidate.oracle_ranks == []


def test_curation_keeps_a_correct_multi_hop_answer_citing_its_bridge_passage():
    """Issue 21: the answer's passage and the bridge passage cited together support the answer; a wrong
    span whose citations each support something else is still dropped."""
    from ragloop.curation.pipeline import Candidate, apply_filters
    from ragloop.feedback.service import Judgement
    from ragloop.generation.replay import ShownPassage

    texts = [
        "The Westbrook Mirror is a weekly newspaper owned by the Sun Journal Media Group since 2004.",
        "The Sun Journal Media Group is a media company in Lewiston, Maine, and a subsidiary of Gannett Holdings.",
    ]
    passages = [ShownPassage(f"c{i}", f"d{i}", f"doc {i}", "news.txt", "", t) for i, t in enumerate(texts, 1)]
    liked = Judgement(reviewers=["r"], accepted=True, mean_rating=5.0, gold_ranks=[])
    question = "Which company owns the group that owns the Westbrook Mirror?"

    def cand(answer: str) -> Candidate:
        return Candidate("i", "c", 1, question, passages, answer, False, liked, answer, [1, 2], shown=2)

    kept, reports = apply_filters(
        [cand("Gannett Holdings [1][2]"), cand("Lewiston Holdings [1][2]")], Policy()
    )
    assert [c.answer for c in kept] == ["Gannett Holdings [1][2]"]
    assert next(r for r in reports if r.name == "verify_citations").reasons == {"unsupported citation": 1}
