"""Prompt rendering and citation parsing: pure functions, no models."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ragloop.errors import ConfigError, RagloopError
from ragloop.generation.assistant import normalise_messages, retrieval_query, thread_sha256
from ragloop.generation.citations import parse_citations
from ragloop.generation.prompts import get_template, prompt_sha256


@dataclass
class P:
    title: str
    source_path: str
    section: str
    text: str
    chunk_id: str = "c"
    doc_id: str = "d"


PASSAGES = [
    P(
        "GDPR",
        "gdpr.xml",
        "Article 17",
        "The data subject shall have the right to obtain erasure. It applies without undue delay.",
    ),
    P(
        "GDPR",
        "gdpr.xml",
        "Article 83",
        "Fines shall be effective. They may reach EUR 20 000 000 or 4 % of turnover.",
    ),
]


def test_template_numbers_passages_before_the_question_with_title_and_source():
    t = get_template("cited-answer")
    prompt = t.render([{"role": "user", "content": "What about fines?"}], PASSAGES)
    assert prompt[0]["role"] == "system" and "[1]" in prompt[0]["content"]
    user = prompt[-1]["content"]
    assert (
        user.index("[1] GDPR (gdpr.xml)")
        < user.index("[2] GDPR (gdpr.xml)")
        < user.index("Question: What about fines?")
    )


def test_template_keeps_history_and_is_deterministic():
    t = get_template("cited-answer", 1)
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    one, two = t.render(msgs, PASSAGES), t.render(msgs, PASSAGES)
    assert [m["role"] for m in one] == ["system", "user", "assistant", "user"]
    assert prompt_sha256(one) == prompt_sha256(two)
    assert prompt_sha256(one) != prompt_sha256(t.render(msgs, PASSAGES[:1]))


def test_unknown_template_is_a_clear_error():
    with pytest.raises(ConfigError, match="Unknown prompt template"):
        get_template("nope")
    with pytest.raises(ConfigError, match="no version 99"):
        get_template("cited-answer", 99)


def test_citations_point_at_the_supporting_sentence():
    cites = parse_citations(
        "Erasure must happen without undue delay [1]. Fines reach 4 % of turnover [2, 3].", PASSAGES
    )
    by_n = {c["n"]: c for c in cites}
    assert by_n[1]["cited_text"] == "It applies without undue delay."
    assert by_n[2]["cited_text"].startswith("They may reach EUR 20 000 000")
    assert by_n[2]["source_path"] == "gdpr.xml" and by_n[2]["valid"]
    assert by_n[3]["valid"] is False  # the model cited a passage it was not shown


def test_no_citations():
    assert parse_citations("I do not know.", PASSAGES) == []


def test_messages_are_validated():
    assert normalise_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], 8) == [
        {"role": "user", "content": "hi"}
    ]
    for bad in (
        [],
        "x",
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": 3}],
        [{"role": "assistant", "content": "x"}],
        [{"role": "user", "content": "  "}],
    ):
        with pytest.raises(RagloopError):
            normalise_messages(bad, 8)
    with pytest.raises(RagloopError, match="Too many"):
        normalise_messages([{"role": "user", "content": "x"}] * 9, 8)


def test_follow_up_questions_carry_the_previous_turn():
    first = [{"role": "user", "content": "What is the right to erasure under the GDPR?"}]
    assert retrieval_query(first) == "What is the right to erasure under the GDPR?"
    follow = [
        *first,
        {"role": "assistant", "content": "..."},
        {"role": "user", "content": "And for children?"},
    ]
    assert retrieval_query(follow) == "What is the right to erasure under the GDPR? And for children?"
    fresh = [
        *first,
        {"role": "assistant", "content": "..."},
        {"role": "user", "content": "Which authority supervises data protection in each member state?"},
    ]
    assert retrieval_query(fresh).startswith("Which authority")


def test_thread_hash_ignores_system_and_whitespace():
    a = [{"role": "system", "content": "s"}, {"role": "user", "content": " q "}]
    assert thread_sha256(a) == thread_sha256([{"role": "user", "content": "q"}])
