"""QA importers: each format on tiny hand-written fixtures and on the real public files in shared/data.

The real files are required (a missing one fails, never skips): the importers exist to read them, and
held-out files in the same formats will be read by this code.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from ragloop.datasets.answers import api_call_match
from ragloop.datasets.importers import FORMATS, detect_format, read_api_docs, read_qa_file
from ragloop.datasets.qa import passage_id
from ragloop.errors import RagloopError

FIXTURES = Path(__file__).parent / "fixtures" / "qa"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real(relative: str) -> Path:
    path = DATA / relative
    assert path.is_file(), f"public dataset file missing: {path} (the shared data folder is required)"
    return path


# --- fixtures, one per format --------------------------------------------------------------------


def test_hotpotqa_original_layout():
    items = read_qa_file(FIXTURES / "hotpotqa.jsonl")
    assert [i.id for i in items] == ["hp1", "hp2", "hp3"]
    hp1 = items[0]
    assert hp1.answers == ["Tulsa"] and hp1.answer_type == "span"
    assert [p.title for p in hp1.gold] == ["Blue Glass (album)", "The Glassworks (band)"]
    assert [p.title for p in hp1.distractors] == ["Red Brick (album)", "Green Stone"]
    # Sentences keep HotpotQA's own spacing; the annotated supporting sentence is kept for quoting.
    band = hp1.gold[1]
    assert band.text.startswith("The Glassworks is a rock band formed in 2008. The band played")
    assert hp1.meta["supporting_sentences"][band.id] == [
        "The band played its first concert in Tulsa, Oklahoma."
    ]
    assert hp1.group == "Blue Glass (album)|The Glassworks (band)"
    assert items[1].answer_type == "label" and items[1].answers == ["yes"]


def test_hotpotqa_hugging_face_layout_as_json_array():
    items = read_qa_file(FIXTURES / "hotpotqa_hf.json")
    assert [i.id for i in items] == ["hf1", "hf2"]
    assert [p.title for p in items[0].gold] == ["Night Train (novel)", "Kari Lund"]
    assert items[0].gold[1].text == "Kari Lund is a writer. She was born in Bergen, Norway."
    assert items[1].answers == ["no"] and items[1].answer_type == "label"


def test_squad_nested_distractors_come_from_the_same_document():
    items = read_qa_file(FIXTURES / "squad.json")
    assert [i.id for i in items] == ["sq1", "sq2", "sq3", "sq4", "sq5"]
    sq1 = items[0]
    assert sq1.answers == ["your name and email address", "name and email address"]
    assert sq1.gold[0].text.startswith("We collect your name") and sq1.group == "example-shop.com"
    assert {p.title for p in sq1.distractors} == {"example-shop.com"} and len(sq1.distractors) == 2
    assert sq1.gold[0].id not in {p.id for p in sq1.distractors}
    # Ranked by words shared with the question; a paragraph without questions is a distractor too.
    assert [p.text for p in items[4].distractors] == [
        "We keep cookies for one year.",
        "Children under 13 may not create an account.",
    ]
    assert all(i.answer_type == "span" for i in items)


def test_squad_flattened_v2_rows_and_unanswerable_questions():
    items = read_qa_file(FIXTURES / "squad_v2_flat.jsonl")
    assert detect_format([json.loads(line) for line in (FIXTURES / "squad_v2_flat.jsonl").open()]) == "squad"
    answerable, unanswerable = items[0], items[2]
    assert answerable.answers == ["Oslo"] and len(answerable.gold) == 1
    assert unanswerable.answers == [] and unanswerable.gold == [] and unanswerable.meta["unanswerable"]
    assert "The city was founded around 1040." in [p.text for p in unanswerable.distractors]


def test_pubmedqa_contexts_become_labelled_gold_passages():
    items = read_qa_file(FIXTURES / "pubmedqa.json")
    assert [i.id for i in items] == ["111", "222", "333"]
    first = items[0]
    assert first.answers == ["yes"] and first.answer_type == "label" and first.distractors == []
    assert [p.section for p in first.gold] == ["BACKGROUND", "METHODS", "RESULTS"]
    assert first.reasoning == "Drug X lowered systolic blood pressure in adults compared with placebo."
    assert items[2].answers == ["maybe"] and items[2].reasoning is None  # LONG_ANSWER is optional


def test_apibench_both_gorilla_layouts_and_the_sibling_api_corpus():
    items = read_qa_file(FIXTURES / "tinyhub_train.json")
    assert [i.answer_type for i in items] == ["api_call"] * 3
    resnet, alexnet, deeplab = items
    assert resnet.question == "I need a small model to classify photos of animals. Which API should I use?"
    assert resnet.answers == [
        "torch.hub.load(repo_or_dir='pytorch/vision', model='resnet18', pretrained=True)"
    ]
    assert (
        resnet.reasoning
        == "Load the pretrained ResNet-18 from PyTorch Hub, a small and accurate image classifier."
    )
    assert f"api_call: {resnet.answers[0]}" in resnet.gold[0].text.splitlines()
    assert [p.title for p in resnet.distractors] == ["AlexNet"]  # same domain, from tinyhub_api.jsonl
    # "###Instruction" layout and no api_data: the gold doc is looked up in the corpus.
    assert deeplab.question == "Separate the road from the sky in street photos."
    assert deeplab.reasoning == "Load DeepLabV3 to label every pixel with its class."
    assert deeplab.gold[0].title == "DeepLabV3" and deeplab.gold[0].section == "Semantic Segmentation"
    corpus_ids = {p.id for p in read_api_docs(FIXTURES / "tinyhub_api.jsonl")}
    assert {i.gold[0].id for i in items} == corpus_ids  # same ids as the random pool: never shown twice
    assert alexnet.group == alexnet.answers[0]


def test_apibench_without_api_data_or_corpus_fails_clearly(tmp_path):
    row = json.loads((FIXTURES / "tinyhub_train.json").read_text().splitlines()[2])
    (tmp_path / "otherhub_train.json").write_text(json.dumps(row) + "\n")
    with pytest.raises(RagloopError, match=r"line 1.*no API document"):
        read_qa_file(tmp_path / "otherhub_train.json")
    items = read_qa_file(tmp_path / "otherhub_train.json", api_docs=FIXTURES / "tinyhub_api.jsonl")
    assert items[0].gold[0].title == "DeepLabV3"


def test_generic_jsonl():
    items = read_qa_file(FIXTURES / "generic.jsonl")
    g1, g2, g3 = items
    assert g1.answers == ["25 days", "twenty-five days"] and g1.gold[0].id == "hb-leave"
    assert g1.gold[0].source_path == "handbook.pdf" and g1.gold[0].section == "Leave"
    assert g1.distractors[0].id == passage_id("Handbook", g1.distractors[0].text)
    assert g2.answers == ["the line manager"] and g2.answer_type == "free" and g2.meta["origin"] == "fixture"
    assert g2.gold[0].text == "Expenses are approved by the line manager within a week."
    assert g2.id == read_qa_file(FIXTURES / "generic.jsonl")[1].id  # generated ids are stable
    assert g3.answers == ["yes"] and g3.answer_type == "label" and g3.reasoning


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("hotpotqa.jsonl", "hotpotqa"),
        ("hotpotqa_hf.json", "hotpotqa"),
        ("squad.json", "squad"),
        ("squad_v2_flat.jsonl", "squad"),
        ("pubmedqa.json", "pubmedqa"),
        ("tinyhub_train.json", "apibench"),
        ("generic.jsonl", "generic"),
    ],
)
def test_auto_detection_reads_the_content_not_the_name(tmp_path, name, fmt):
    disguised = tmp_path / "data.txt"
    disguised.write_bytes((FIXTURES / name).read_bytes())
    if fmt == "apibench":  # the corpus is found by Gorilla's naming, so keep it beside the file
        (tmp_path / "data_api.jsonl").write_bytes((FIXTURES / "tinyhub_api.jsonl").read_bytes())
    auto = read_qa_file(disguised)
    assert auto[0].meta["source"] == fmt
    assert auto == read_qa_file(disguised, fmt)


def test_json_lines_json_array_and_gzip_give_the_same_items(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "hotpotqa.jsonl").read_text().splitlines()]
    (tmp_path / "array.json").write_text(json.dumps(rows))
    (tmp_path / "lines.jsonl.gz").write_bytes(gzip.compress((FIXTURES / "hotpotqa.jsonl").read_bytes()))
    expected = read_qa_file(FIXTURES / "hotpotqa.jsonl")
    assert read_qa_file(tmp_path / "array.json") == expected == read_qa_file(tmp_path / "lines.jsonl.gz")


# --- malformed input -----------------------------------------------------------------------------


def test_unknown_content_lists_the_supported_formats(tmp_path):
    path = tmp_path / "mystery.json"
    path.write_text(json.dumps([{"prompt": "hi", "response": "hello"}]))
    with pytest.raises(RagloopError) as err:
        read_qa_file(path)
    assert all(fmt in str(err.value) for fmt in FORMATS)


def test_unknown_format_name(tmp_path):
    with pytest.raises(RagloopError, match="supported formats"):
        read_qa_file(FIXTURES / "generic.jsonl", "natural-questions")


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n')
    with pytest.raises(RagloopError, match="line 2 is not valid JSON"):
        read_qa_file(path)


def test_malformed_record_is_named(tmp_path):
    path = tmp_path / "generic.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "gold": ["x"]}\n')
    with pytest.raises(RagloopError, match=r"line 2 is malformed: missing field 'answer'"):
        read_qa_file(path)
    path.write_text('{"question": "a", "answer": "b", "gold": [{"title": "no text"}]}\n')
    with pytest.raises(RagloopError, match=r"line 1 .*gold\[1\] needs a non-empty 'text'"):
        read_qa_file(path)


def test_malformed_format_specific_records(tmp_path):
    bad_hotpot = tmp_path / "hotpot.jsonl"
    bad_hotpot.write_text(
        json.dumps({"id": "x1", "question": "q", "answer": "a", "supporting_facts": [], "context": 5})
    )
    with pytest.raises(RagloopError, match=r"line 1 \(id 'x1'\) is malformed"):
        read_qa_file(bad_hotpot)
    bad_pubmed = tmp_path / "pubmed.json"
    bad_pubmed.write_text(
        json.dumps({"9": {"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "perhaps"}})
    )
    with pytest.raises(RagloopError, match="entry '9'.*final_decision is 'perhaps'"):
        read_qa_file(bad_pubmed)
    bad_squad = tmp_path / "squad.json"
    bad_squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "c"}]}]}))
    with pytest.raises(RagloopError, match="document 1 \\(t\\) paragraph 1"):
        read_qa_file(bad_squad, "squad")


def test_missing_file():
    with pytest.raises(RagloopError, match="does not exist"):
        read_qa_file(FIXTURES / "nope.jsonl")


# --- the real public files -----------------------------------------------------------------------


@pytest.mark.parametrize(("split", "bridge", "comparison"), [("train", 238, 62), ("dev", 230, 70)])
def test_real_hotpotqa(split, bridge, comparison):
    items = read_qa_file(real(f"hotpotqa_distractor/{split}.jsonl"))
    assert len(items) == 300 and len({i.id for i in items}) == 300
    assert Counter(i.meta["type"] for i in items) == {"bridge": bridge, "comparison": comparison}
    assert all(len(i.gold) == 2 for i in items)  # README: 2 gold titles, all present in context
    assert sum(len(i.distractors) == 8 for i in items) == 297  # 3 rows have fewer paragraphs
    for item in items:
        assert not {p.id for p in item.gold} & {p.id for p in item.distractors}
        for p in item.gold:
            assert all(s in p.text for s in item.meta["supporting_sentences"][p.id])
    if split == "dev":
        first = items[0]
        assert first.id == "5a8ce55f554299441c6b9f62" and first.answers == ["Tulsa"]
        assert [p.title for p in first.gold] == ["Tinted Windows (album)", "Tinted Windows (band)"]
    labels = [i for i in items if i.answer_type == "label"]
    assert labels and all(i.answers[0] in ("yes", "no") for i in labels)


def test_real_policyqa():
    items = read_qa_file(real("policyqa/dev.json"))
    assert len(items) == 3809  # README: 20 policies, 574 paragraphs, 3809 questions, 568 distinct strings
    assert len({i.group for i in items}) == 20
    assert len({p.id for i in items for p in i.gold}) == 574
    assert len({i.question for i in items}) == 568
    first = items[0]
    assert first.id == "ctnk84gy3t6wdijv" and first.group == "ticketmaster.com"
    assert first.answers == ["Effective July 20, 2012 (last updated October 08, 2013)"]
    assert first.gold[0].text.startswith("Live Nation Entertainment Privacy Policy")
    for item in items:
        assert 0 <= len(item.distractors) <= 8
        assert all(p.title == item.group and p.id != item.gold[0].id for p in item.distractors)


def test_real_pubmedqa():
    items = read_qa_file(real("pubmedqa/pqal_train.json"))
    assert len(items) == 500
    assert Counter(i.answers[0] for i in items) == {"yes": 276, "no": 169, "maybe": 55}
    assert all(1 <= len(i.gold) <= 9 and i.reasoning for i in items)
    first = next(i for i in items if i.id == "10808977")
    assert first.question == "Can tailored interventions increase mammography use among HMO women?"
    assert [p.section for p in first.gold] == [
        "BACKGROUND",
        "DESIGN",
        "PARTICIPANTS",
        "INTERVENTION",
        "MAIN OUTCOME",
        "RESULTS",
    ]
    assert first.reasoning.startswith("The effects of the intervention were most pronounced")


def test_real_apibench_torchhub():
    items = read_qa_file(real("apibench_torchhub/torchhub_train.json"))
    corpus = read_api_docs(real("apibench_torchhub/torchhub_api.jsonl"))
    assert len(items) == 837 and len(corpus) == 94
    assert len({i.answers[0] for i in items}) == 94  # README: train covers all 94 APIs
    corpus_ids = {p.id for p in corpus}
    assert all(i.gold[0].id in corpus_ids and i.question and i.answer_type == "api_call" for i in items)
    assert sum(bool(i.reasoning) for i in items) >= 830
    first = items[0]
    assert first.question.startswith("I need an API that can estimate the relative depth of objects")
    assert first.answers == [
        "torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='DPT_Hybrid', pretrained=True)"
    ]
    assert first.gold[0].title == "MiDaS"
    # The Output's own call (positional form) matches the gold call in the large majority of rows.
    matches = sum(api_call_match(i.meta["output_api_call"], i.answers[0]) for i in items)
    assert matches >= 780
