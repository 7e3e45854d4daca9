"""Propagation: a name found once is a name wherever else it appears — in the other fields of its example
("Dr. Anna Berg" … "Berg replied"), and across the dataset being built (issue 15: "Aoife Ní Bhriain" in
one record, "Ní Bhriain" in a later one). A part of a name that is also an ordinary word ("Comfort",
"Rose") is carried on its own only inside its example, and only where it reads as a name there."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ragloop.curation.pii.entities import Finding
from ragloop.curation.pii.name_cues import NAME_TOKEN, NOT_A_NAME_WORD, PARTICLES, THING_BEFORE, TITLES
from ragloop.curation.pii.name_lists import name_key

if TYPE_CHECKING:
    from ragloop.curation.pii.name_recognizer import CensusNameRecognizer

_MEMO_SIZE = 20_000
_PARTICLE_KEYS = frozenset(name_key(p) for p in PARTICLES)


@dataclass
class NameIndex:
    """The people found in a set of texts: each full name (its words' keys, two or more) and each part of
    one, with the part's role (a given name before the last word, else a surname) and whether it is an
    ordinary word that must not be carried alone across examples."""

    recognizer: CensusNameRecognizer
    full: set[tuple[str, ...]] = field(default_factory=set)
    parts: dict[str, str] = field(default_factory=dict)  # key -> "first" | "last"
    ordinary: set[str] = field(default_factory=set)

    def add(self, texts: list[str], findings: list[list[Finding]]) -> None:
        for text, fs in zip(texts, findings, strict=True):
            for f in fs:
                if f.entity_type == "PERSON":
                    self._add_name(text[f.start : f.end])

    def _add_name(self, mention: str) -> None:
        words = [
            w
            for w in NAME_TOKEN.findall(mention)
            if len(w) > 1 and w.lower() not in PARTICLES and w.lower() not in TITLES
        ]
        words = [w for w in words if w.lower() not in NOT_A_NAME_WORD]
        keys = tuple(name_key(w) for w in words)
        if len(keys) >= 2:
            self.full.add(keys)
        for i, (word, key) in enumerate(zip(words, keys, strict=True)):
            role = "last" if i == len(keys) - 1 and len(keys) > 1 else "first" if len(keys) > 1 else None
            # A double-barrelled name is also carried by each half ("Owusu-Ansah" … "Ansah").
            halves = zip(word.split("-"), key.split("-"), strict=False) if "-" in word else ()
            for w, k in ((word, key), *halves):
                if len(k) < 3:
                    continue
                if role and self.parts.get(k) != "first":
                    self.parts[k] = role
                self.parts.setdefault(k, "last")
                if self.recognizer.ordinary(w):
                    self.ordinary.add(k)

    def mark(self, text: str, findings: list[Finding], *, in_example: bool) -> None:
        """Add a PERSON finding for every other mention of these names in ``text``: a full name anywhere
        it is capitalised (or in capitals); a part alone where it is not an ordinary word, or, inside its
        own example (``in_example``), where an ordinary word reads as the name (not after "the", not in
        Title Case: "Comfort called" yes, "the Comfort Plus plan" no)."""
        if not self.parts:
            return
        tokens = _capitalised_tokens(text)
        i = 0
        while i < len(tokens):
            start, end, key, _ = tokens[i]
            span = self._full_at(text, tokens, i)
            if span:
                j, stop = span
            elif key in self.parts and (
                key not in self.ordinary or (in_example and self._reads_as_name(text, tokens, i))
            ):
                j, stop = i + 1, end
                prev = tokens[i - 1] if i > 0 else None
                # A capitalised word right before a surname is its given name ("Lars Berg").
                if (
                    prev
                    and text[prev[1] : start] == " "
                    and self.parts[key] == "last"
                    and self.recognizer.namelike(text[prev[0] : prev[1]])
                ):
                    start = prev[0]
            else:
                i += 1
                continue
            particle = re.search(r"(?<![\w])([^\W\d_]+)[ \t]$", text[max(0, start - 8) : start])
            if particle and particle.group(1).lower() in PARTICLES:  # "Ó Súilleabháin", "van Dijk"
                start -= len(particle.group(0))
            if all(stop <= f.start or start >= f.end for f in findings):
                findings.append(Finding("PERSON", start, stop, 0.5))
            i = j

    def _full_at(self, text: str, tokens: list[tuple[int, int, str, bool]], i: int) -> tuple[int, int] | None:
        """(index after, end) when a full name found elsewhere starts at token i."""
        keys: list[str] = []
        j = i
        best = None
        while j < len(tokens) and len(keys) < 6:
            if j > i and text[tokens[j - 1][1] : tokens[j][0]] != " ":
                break
            key = tokens[j][2]
            if key not in _PARTICLE_KEYS:
                keys.append(key)
            j += 1
            if len(keys) >= 2 and tuple(keys) in self.full:
                best = (j, tokens[j - 1][1])
        return best

    @staticmethod
    def _reads_as_name(text: str, tokens: list[tuple[int, int, str, bool]], i: int) -> bool:
        start, end, _, upper = tokens[i]
        if upper:
            return True
        before = re.search(r"([^\W\d_]+)([ \t]+)$", text[max(0, start - 30) : start])
        if before and (before.group(1).lower() in THING_BEFORE or before.group(1)[0].isupper()):
            sentence_start = re.search(r"(?:^|[.!?:;\n\"“(])\s*$", text[: start - len(before.group(0))])
            if before.group(1).lower() in THING_BEFORE or not sentence_start:
                return False
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        return not (after and text[end : after[0]] == " ")


_memo: dict[str, list[tuple[int, int, str, bool]]] = {}


def _capitalised_tokens(text: str) -> list[tuple[int, int, str, bool]]:
    """(start, end, name key, all capitals) of each capitalised word: the only words a name can be.
    Memoised: the same passage comes back in many examples."""
    hit = _memo.get(text)
    if hit is None:
        hit = [
            (m.start(), m.end(), name_key(m.group()), m.group().isupper() and len(m.group()) > 1)
            for m in NAME_TOKEN.finditer(text)
            if m.group()[0].isupper()
        ]
        if len(text) >= 400:
            if len(_memo) >= _MEMO_SIZE:
                _memo.pop(next(iter(_memo)))
            _memo[text] = hit
    return hit
