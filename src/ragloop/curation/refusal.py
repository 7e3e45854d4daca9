"""Recognise answers that decline to answer (curation, stage 5).

A RAG model must learn to abstain when the passages do not hold the answer, and to abstain in one
consistent way: curation finds the recorded refusals ("I don't know", "the context does not mention…",
"as an AI…") so the datasets stage can keep the justified ones, rewritten to ABSTAIN_ANSWER, and drop the
others. An answer that cites a passage is answering, even if it also says what the passages lack.
"""

from __future__ import annotations

import re

from ragloop.generation.citations import CITE

# The one abstention the training data teaches.
ABSTAIN_ANSWER = "The documents do not say."

_SOURCES = r"(?:(?:the|these|those|this|provided|given|available|above|retrieved|supplied)\s+)*(?:documents?|passages?|context|sources?|texts?|excerpts?|materials?|information)"
_REFUSALS = [
    # "The documents do not say / mention / specify …"
    _SOURCES
    + r"\s+(?:provided\s+)?(?:do(?:es)?\s+not|don't|doesn't|did\s+not|didn't)\s+(?:say|mention|specify|state|contain|cover|include|provide|address|discuss|describe|answer|tell|give|explain)",
    # "… is not mentioned in the provided passages"
    r"\bnot\s+(?:mentioned|specified|stated|covered|found|addressed|discussed|included|provided|given|available|present)\s+(?:in|by)\s+"
    + _SOURCES,
    # "There is no information about …", "There is not enough context …"
    r"\bthere\s+(?:is|are)\s+(?:no|not\s+enough|insufficient)\s+(?:relevant\s+)?(?:information|mention|details?|context|data)\b",
    r"\b(?:no|insufficient)\s+(?:relevant\s+)?(?:information|mention)\s+(?:about|on|regarding|of|in)\b",
    r"\bi\s+(?:do\s+not|don't)\s+know\b",
    r"\bi\s+(?:cannot|can't|can\s+not|am\s+unable\s+to|am\s+not\s+able\s+to|'m\s+unable\s+to|'m\s+not\s+able\s+to)\s+(?:answer|find|determine|say|tell|provide|help|confirm)",
    r"\b(?:cannot|can't|unable\s+to)\s+(?:be\s+)?(?:answer(?:ed)?|determined?)\s+(?:this|that|the\s+question|from|based|with)",
    r"\bas\s+an\s+ai\b",
    r"\bi\s+(?:do\s+not|don't)\s+have\s+(?:enough\s+)?(?:information|access|the\s+information)\b",
]
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in _REFUSALS), re.IGNORECASE)


def is_refusal(answer: str) -> bool:
    """Whether ``answer`` declines to answer. Mentioning "not" is not enough ("Erasure does not apply
    to …" answers); it must say the sources lack the answer, or that the assistant cannot or does not
    know, and cite nothing."""
    text = answer.replace("’", "'")
    return bool(_REFUSAL.search(text)) and not CITE.search(text)
