"""Cold-start question synthesis (``ragloop synth``): the extractive method's questions are specific to
their chunk, and the output is a generic QA file the importers and the RAFT builder read."""

from __future__ import annotations

from pathlib import Path

from ragloop.config import Settings
from ragloop.datasets.importers import read_qa_file
from ragloop.datasets.synth import extractive_qa, synthesize

TITLE = "Regulation (EU) 2016/679 of the European Parliament and of the Council of 27 April 2016"


def test_extractive_questions_of_one_heading_differ_by_topic() -> None:
    rows = [
        {"section": "", "title": TITLE, "text": "(1) The protection of natural persons is a fundamental right. Short."},
        {"section": "", "title": TITLE, "text": "(2) Supervisory authorities should monitor the application. Short."},
        {"section": "CHAPTER VII > Article 70 Tasks of the Board", "title": TITLE,
         "text": "The Board shall ensure the consistent application of this Regulation. It issues guidelines."},
    ]  # fmt: skip
    qas = [extractive_qa(r) for r in rows]
    questions = [q for q, _ in qas]
    assert len(set(questions)) == 3  # a heading-less preamble no longer gives one question for every chunk
    assert questions[0] == f"What does {' '.join(TITLE.split()[:8])} … say about natural persons?"
    assert questions[2] == "What does Article 70 Tasks of the Board say about consistent application?"
    assert qas[1][1] == "(2) Supervisory authorities should monitor the application."  # the longest sentence
    assert extractive_qa({"section": "", "title": "", "text": "No heading at all."}) is None


def test_extractive_synth_writes_a_generic_qa_file(kb_home: Settings, tmp_path: Path) -> None:
    out = tmp_path / "synth.jsonl"
    counts = synthesize(kb_home, 3, out, method="extractive", n_distractors=2)
    items = read_qa_file(out, "generic")
    assert counts["written"] == len(items) > 0
    for item in items:
        assert item.question.startswith("What does ") and item.question.endswith("?")
        assert item.answers[0] in item.gold[0].text  # the answer is a sentence of its gold chunk
        assert all(d.text != item.gold[0].text for d in item.distractors)  # retrieved hard negatives
