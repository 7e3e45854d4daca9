"""Parse [n] citations out of an answer and attach the passage text each one points at.

The cited text is the passage sentence that best overlaps the answer sentence carrying the citation: that
is the span a reviewer sees highlighted and what curation later verifies.
"""

from __future__ import annotations

import re

from ragloop.generation.prompts import PassageLike

CITE = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])|\n+")
WORD = re.compile(r"\w+")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of sentences; crude but dependency-free and deterministic."""
    spans, start = [], 0
    for m in SENTENCE.finditer(text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text) if len(w) > 2}


def best_span(passage: str, statement: str) -> tuple[int, int]:
    """The passage sentence sharing most words with the statement (the whole passage if it is one sentence)."""
    target = _words(CITE.sub("", statement))
    best, best_score = (0, len(passage)), -1.0
    for s, e in split_sentences(passage):
        words = _words(passage[s:e])
        score = len(words & target) / (len(words) ** 0.5 or 1.0)
        if score > best_score:
            best, best_score = (s, e), score
    return best


def parse_citations(answer: str, passages: list[PassageLike]) -> list[dict]:
    """One entry per distinct (passage, answer sentence) cited; numbers outside 1..len(passages) are
    kept with ``valid: False`` so curation can drop answers that cite documents they were not shown."""
    out: list[dict] = []
    seen: set[tuple[int, int]] = set()
    for s, e in split_sentences(answer) or [(0, len(answer))]:
        sentence = answer[s:e]
        for m in CITE.finditer(sentence):
            for raw in re.split(r"\s*[,;]\s*", m.group(1)):
                n = int(raw)
                if (n, s) in seen:
                    continue
                seen.add((n, s))
                entry: dict = {"n": n, "statement": sentence.strip(), "valid": 1 <= n <= len(passages)}
                if entry["valid"]:
                    p = passages[n - 1]
                    ps, pe = best_span(p.text, sentence)
                    entry.update(
                        passage_id=getattr(p, "chunk_id", None),
                        doc_id=getattr(p, "doc_id", None),
                        source_path=p.source_path,
                        title=p.title,
                        cited_text=p.text[ps:pe].strip(),
                        cited_start=ps,
                        cited_end=pe,
                    )
                out.append(entry)
    return out
