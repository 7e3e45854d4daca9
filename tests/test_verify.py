"""Citation verification: the method measured on hand-written pairs, and its rules one by one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragloop.curation.verify import (
    DEFAULT_THRESHOLD,
    SUPPORT_METHOD,
    Verdict,
    is_span,
    quantities,
    verify_answer,
    verify_cited,
    verify_statement,
)
from ragloop.evaluation.metrics import groundedness

PAIRS = [
    json.loads(line)
    for line in (Path(__file__).parent / "fixtures" / "curation" / "citation_pairs.jsonl")
    .read_text()
    .splitlines()
]
HALF = len(PAIRS) // 2
THRESHOLDS = [round(0.3 + 0.05 * i, 2) for i in range(13)]  # 0.30 … 0.90


def precision_recall(pairs: list[dict], threshold: float) -> tuple[float, float]:
    """Of the "supported" class: precision (a supported verdict is right) and recall."""
    tp = fp = fn = 0
    for p in pairs:
        said = verify_statement(p["statement"], p["passage"], threshold).supported
        tp += said and p["supported"]
        fp += said and not p["supported"]
        fn += not said and p["supported"]
    return tp / ((tp + fp) or 1), tp / ((tp + fn) or 1)


def test_fixture_is_the_set_the_docs_describe():
    kinds = [p["kind"] for p in PAIRS]
    assert len(PAIRS) >= 60
    assert kinds.count("negation") >= 10 and kinds.count("swapped_number") >= 10
    assert sum(p["supported"] for p in PAIRS) >= 30  # realistic supported paraphrases, not only traps


def test_default_threshold_is_the_one_chosen_on_the_first_half():
    # The rule (docs/curation.md): the lowest threshold whose precision on the first half is >= 0.9;
    # training data needs few false "supported" more than it needs every true one.
    chosen = next(t for t in THRESHOLDS if precision_recall(PAIRS[:HALF], t)[0] >= 0.9)
    assert chosen == DEFAULT_THRESHOLD


def test_precision_and_recall_on_the_whole_set_and_the_held_out_half():
    precision, recall = precision_recall(PAIRS, DEFAULT_THRESHOLD)
    assert precision >= 0.9 and recall >= 0.75, (precision, recall)
    held_precision, held_recall = precision_recall(PAIRS[HALF:], DEFAULT_THRESHOLD)
    # Never tuned on: a looser bound, reported exactly in docs/curation.md.
    assert held_precision >= 0.85 and held_recall >= 0.75, (held_precision, held_recall)


@pytest.mark.parametrize("kind", ["negation", "swapped_number", "unrelated", "partial"])
def test_each_kind_of_unsupported_statement_is_mostly_caught(kind):
    pairs = [p for p in PAIRS if p["kind"] == kind]
    caught = sum(not verify_statement(p["statement"], p["passage"]).supported for p in pairs)
    assert caught / len(pairs) >= 0.85, (kind, caught, len(pairs))


PASSAGE = (
    "The controller shall notify the personal data breach to the supervisory authority without undue "
    "delay and, where feasible, not later than 72 hours after having become aware of it. Where the "
    "notification is not made within 72 hours, it shall be accompanied by reasons for the delay."
)


def test_exact_quote_survives_case_spacing_quotes_and_dashes():
    text = (
        "The rule\u2014in short\u2014is: \u201cThe Controller shall  notify the personal data breach\u201d."
    )
    v = verify_statement(text, PASSAGE)
    assert v == Verdict(True, 1.0, "exact_quote", "quoted text found verbatim in passage")
    raft = "##begin_quote##where feasible, not later than 72 hours##end_quote##"
    assert verify_statement(raft, PASSAGE).supported


def test_a_quote_that_is_not_in_the_passage_fails_whatever_the_overlap():
    v = verify_statement('The controller must notify "within 24 hours of the breach".', PASSAGE)
    assert not v.supported and v.method == "exact_quote" and "not in passage" in v.reason


def test_paraphrase_is_supported_with_the_named_method():
    v = verify_statement(
        "A breach must be notified to the supervisory authority within 72 hours [1].", PASSAGE
    )
    assert v.supported and v.method == SUPPORT_METHOD and v.score >= DEFAULT_THRESHOLD


def test_swapped_number_and_swapped_date_are_hard_failures():
    v = verify_statement("A breach must be notified to the supervisory authority within 48 hours.", PASSAGE)
    assert not v.supported and v.score == 0.0 and "48" in v.reason
    dated = "The Regulation applies from 25 May 2018 and entered into force on 24 May 2016."
    assert not verify_statement("The Regulation applies from 25 May 2016.", dated).supported
    assert verify_statement("The Regulation has applied since 25 May 2018.", dated).supported


def test_numbers_compare_by_value_not_by_spelling():
    assert (
        quantities("fines up to EUR 20 million") == quantities("fines up to 20 000 000 EUR") == {"20000000"}
    )
    assert quantities("on 25 May 2018 at 9:00") == {"2018-05-25", "2018-05", "2018", "9:00"}
    assert quantities("within three weeks") == {"3"}
    assert quantities("zero tolerance, the third report") == {"0", "3"}  # 0 is falsy: once a KeyError


def test_negation_mismatch_is_a_hard_failure_but_bounds_are_not_negations():
    v = verify_statement(
        "The controller does not have to notify the supervisory authority of a breach.", PASSAGE
    )
    assert not v.supported and "negation" in v.reason
    # "not later than 72 hours" is a bound, so "within 72 hours" agrees with it.
    assert verify_statement(
        "The controller must notify the breach within 72 hours, where feasible.", PASSAGE
    ).supported


def test_statement_is_compared_with_its_best_sentence_not_the_whole_passage():
    passage = "There is no fee for payments in euro within the EU. Card payments abroad cost a fee of 1.75%."
    assert not verify_statement("Payments in euro within the EU are subject to a fee.", passage).supported
    assert verify_statement("Payments in euro within the EU are free of any fee.", passage).supported is False
    assert verify_statement("No fee is charged for payments in euro within the EU.", passage).supported


def test_verify_answer_checks_each_citation_against_its_own_passage():
    passages = [PASSAGE, "Fines can reach EUR 20 000 000 or 4 % of the total worldwide annual turnover."]
    answer = (
        "A breach must be notified to the supervisory authority within 72 hours [1]. "
        "Fines can reach 4 % of worldwide annual turnover [2], and the supervisory authority must be "
        "notified without undue delay [1][2]. Repeat offenders go to prison [3]."
    )
    checks = verify_answer(answer, passages)
    assert [(c.cited, c.supported) for c in checks[:3]] == [((1,), True), ((2,), True), ((1, 2), True)]
    # [2] (fines) supports nothing of "the supervisory authority must be notified without undue delay"
    assert checks[2].unnecessary == (2,)
    out_of_range = checks[3]
    assert out_of_range.cited == (3,) and not out_of_range.supported
    assert out_of_range.verdict.method == "citation" and "2 passage(s)" in out_of_range.verdict.reason


def test_verify_answer_splits_a_sentence_between_its_citations():
    passages = [PASSAGE, "Fines can reach EUR 20 000 000 or 4 % of the total worldwide annual turnover."]
    answer = "The supervisory authority must be told of a breach within 72 hours [1] and fines can reach 4 % of annual turnover [2]."
    first, second = verify_answer(answer, passages)
    assert (first.cited, second.cited) == ((1,), (2,)) and first.supported and second.supported
    assert "fines" not in first.statement and "fines" in second.statement


def test_uncited_quotes_must_come_from_some_passage():
    passages = ["Unrelated text about cookies.", PASSAGE]
    found = verify_answer('As the law puts it, "without undue delay and, where feasible".', passages)
    assert [(c.cited, c.supported) for c in found] == [((2,), True)]
    invented = verify_answer('It says "immediately and in all cases".', passages)
    assert [(c.cited, c.supported) for c in invented] == [((), False)]


# --- several passages cited together (issue 21) -------------------------------------------------------------

CASES = [
    json.loads(line)
    for line in (Path(__file__).parent / "fixtures" / "curation" / "multi_citation_cases.jsonl")
    .read_text()
    .splitlines()
]


def test_multi_citation_answers_are_judged_on_their_citations_together():
    # Precision and recall of "grounded" on the hand-written answers (docs/curation.md): the rule of one
    # passage per citation scored 0.50 / 0.06 here, calling every correct multi-hop answer unsupported.
    said = [bool(groundedness(c["answer"], c["passages"])) for c in CASES]
    want = [c["grounded"] for c in CASES]
    tp = sum(s and w for s, w in zip(said, want, strict=True))
    fp = sum(s and not w for s, w in zip(said, want, strict=True))
    fn = sum(w and not s for s, w in zip(said, want, strict=True))
    assert tp / (tp + fp) >= 0.85 and tp / (tp + fn) >= 0.9, (tp, fp, fn)
    for kind in ("bridge_span", "wrong_span", "irrelevant_citation", "all_irrelevant"):
        assert all(s == c["grounded"] for s, c in zip(said, CASES, strict=True) if c["kind"] == kind), kind


def test_a_citation_that_supports_nothing_is_reported_not_failed():
    for case in CASES:
        if case["unnecessary"] is None:
            continue
        checks = verify_answer(case["answer"], case["passages"])
        assert sorted({n for c in checks for n in c.unnecessary}) == case["unnecessary"], case["answer"]


def test_a_wrong_name_cannot_be_gathered_from_two_passages():
    passages = ["Harbour Lights stars Helen Mirren.", "Alan Pryce directed Harbour Lights."]
    assert verify_cited("Helen Pryce", {1: passages[0], 2: passages[1]})[0].supported is False
    assert verify_cited("Alan Pryce", {1: passages[0], 2: passages[1]})[0].supported
    assert is_span("Tyrol, Austria") and is_span("14 March 1941") and not is_span("Maeve was born in 1962")


def test_a_joined_claim_needs_each_clause_in_one_cited_passage():
    owner = "The Westbrook Mirror is owned by the Sun Journal Media Group."
    parent = "The Sun Journal Media Group is a subsidiary of Gannett Holdings."
    verdict, _ = verify_cited("The Westbrook Mirror is owned by Sun Journal, a subsidiary of Gannett Holdings",
                              {1: owner, 2: parent})  # fmt: skip
    assert verdict.supported and verdict.method == "joint"
    wrong, _ = verify_cited("The Westbrook Mirror is a subsidiary of Gannett Holdings", {1: owner, 2: parent})
    assert not wrong.supported


def test_a_year_is_supported_by_the_full_date():
    assert verify_statement(
        "Alan Pryce was born in 1941.", "Alan Pryce (born 14 March 1941) directs films."
    ).supported
    assert not verify_statement(
        "Alan Pryce was born on 14 March 1942.", "Alan Pryce was born in 1942."
    ).supported
