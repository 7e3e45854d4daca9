"""Duplicate questions, decontamination against an eval set, and refusal detection."""

from __future__ import annotations

import pytest

from ragloop.curation.dedupe import exact_key, find_duplicates, near_duplicate_of, normalise_question
from ragloop.curation.refusal import ABSTAIN_ANSWER, is_refusal

QUESTIONS = [
    "What is the right to erasure under the GDPR?",  # 0 kept
    "what is the right to erasure under the  GDPR",  # 1 exact duplicate once normalised
    "How many days does a controller have to notify a personal data breach to the authority?",  # 2 kept
    "How many days does a controller have to notify a personal data breach to the supervisory authority?",  # 3 near
    "Can a controller transfer personal data to a processor outside the EU?",  # 4 kept
    "Can a processor transfer personal data to a controller outside the EU?",  # 5 kept: roles swapped
    "Who appoints the data protection officer?",  # 6 kept
    "What is the right to erasure under the GDPR?",  # 7 exact duplicate
]


def test_normalise_question_ignores_case_punctuation_and_spacing():
    assert normalise_question("  What’s  the GDPR?! ") == "what s the gdpr"
    assert exact_key("What is the GDPR?") == exact_key("what is the gdpr") != exact_key("What is GDPR?")


def test_find_duplicates_keeps_the_first_of_each_group():
    assert find_duplicates(QUESTIONS) == [1, 3, 7]
    assert find_duplicates(QUESTIONS) == find_duplicates(list(QUESTIONS))  # deterministic
    assert find_duplicates([]) == [] and find_duplicates(["", ""]) == [1]


def test_threshold_controls_how_near_is_near():
    assert find_duplicates(QUESTIONS, threshold=0.95) == [1, 7]
    assert 5 in find_duplicates(QUESTIONS, threshold=0.5)


def test_near_duplicate_of_flags_training_questions_that_copy_the_eval_set():
    eval_set = ["Who appoints the data protection officer?", "What are the fines for a data breach?"]
    flags = near_duplicate_of(QUESTIONS, eval_set)
    assert [i for i, f in enumerate(flags) if f] == [6]
    assert near_duplicate_of(["WHO appoints the Data Protection Officer"], eval_set) == [True]
    assert near_duplicate_of(QUESTIONS, []) == [False] * len(QUESTIONS)


@pytest.mark.parametrize(
    "answer",
    [
        ABSTAIN_ANSWER,
        "I don't know.",
        "I do not know the answer to that.",
        "The provided documents do not mention a retention period.",
        "The context doesn't specify who pays the fee.",
        "This is not mentioned in the provided passages.",
        "There is no information about fees in the documents.",
        "I cannot answer this question based on the passages provided.",
        "I'm unable to determine that from the sources.",
        "As an AI language model, I cannot give legal advice.",
    ],
)
def test_refusals(answer):
    assert is_refusal(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Erasure does not apply where processing is necessary for legal claims [1].",
        "The controller cannot refuse the request without giving reasons.",
        "No, the data subject does not have to pay a fee [2].",
        "Fines are not capped at EUR 10 million; they can reach EUR 20 million [1].",
        "The GDPR does not define 'large scale'; the recitals give examples [3].",
        "Consent is not valid if it was not freely given.",
        "The documents do not say who pays, but Article 12 makes the first copy free [1].",
    ],
)
def test_answers_that_merely_say_not_are_not_refusals(answer):
    assert not is_refusal(answer)
