"""The QA record every dataset becomes: a question, its acceptable answers, the passages that hold the
answer (gold) and passages that look relevant but do not (distractors).

Importers produce these from public formats, curation can produce them from live traffic, and the RAFT
builder and the evaluation stage consume them, so the fields are the contract between those stages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

ANSWER_TYPES = ("span", "label", "api_call", "free")


def passage_text_key(text: str) -> str:
    """Case- and spacing-insensitive key of a passage's text: a gold passage repeated under another id (a
    pool that holds the same section twice) must still count as the gold, never as a distractor."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class QAPassage:
    """One passage, with the attributes the serve-time prompt template renders (title, source, section)."""

    id: str
    title: str
    text: str
    source_path: str = ""
    section: str = ""


@dataclass
class QAItem:
    """One question with everything needed to build a training example or score an answer.

    ``answers[0]`` is the canonical answer (the one a training target states); the others are also
    accepted when scoring. ``answer_type`` picks the extraction and scoring rule: "span" (free text
    taken from a passage), "label" (yes / no / maybe), "api_call" (a Python call, matched by AST) or
    "free". ``group`` is the leakage key: items sharing it must land in the same split.
    """

    id: str
    question: str
    answers: list[str]
    gold: list[QAPassage]
    distractors: list[QAPassage]
    answer_type: str
    reasoning: str | None = None
    group: str = ""
    meta: dict = field(default_factory=dict)


def passage_id(title: str, text: str) -> str:
    """A stable id for a passage whose format gives none: the same title and text always get the same
    id, in every process and on every machine (unlike ``hash()``), so splits and dedup agree across runs."""
    digest = hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()
    return f"p-{digest[:16]}"


def unique_passages(passages: Sequence[QAPassage]) -> list[QAPassage]:
    """Passages in order, each id once (a passage can be both gold and listed again as a distractor)."""
    seen: set[str] = set()
    out = []
    for p in passages:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    return out


def passage_pool(items: Sequence[QAItem]) -> list[QAPassage]:
    """Every distinct passage of a QA set, gold and distractor: where distractors are topped up from (by
    the RAFT builder within one split, by evaluation within the evaluated set)."""
    return unique_passages([p for item in items for p in (*item.gold, *item.distractors)])


LABEL_HINT = "Answer yes, no or maybe."


def prompt_question(item: QAItem) -> str:
    """The user turn a QA item is asked as, the same in training data and in evaluation. A label question
    (PubMedQA) says which answers it takes: without that, SmolLM2 answered 41 of 100 PubMedQA questions in
    sentences naming no label at all (20% accuracy), which measured the prompt rather than the model."""
    if item.answer_type == "label" and LABEL_HINT not in item.question:
        return f"{item.question} {LABEL_HINT}"
    return item.question
