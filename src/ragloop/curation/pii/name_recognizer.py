"""PERSON without a model: CensusNameRecognizer reads runs of capitalised words and decides, from titles,
cues and the census name lists, which of them are people's names. Its vocabularies and cues live in
name_cues.py, the census lists in census.py."""

from __future__ import annotations

import re
from collections.abc import Iterator

from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from ragloop.curation.pii.census import NameLists, census_names
from ragloop.curation.pii.entities import LANGUAGE
from ragloop.curation.pii.name_cues import (
    AMBIGUOUS_FIRST_NAMES,
    COUPLE_BEFORE,
    GIVEN_AFTER_COMMA,
    NAME_TOKEN,
    NOT_A_NAME,
    NOT_A_NAME_WORD,
    OPENS_SENTENCE,
    PARTICLES,
    PLACE_FIRST_NAMES,
    STRONG_CUE,
    TITLES,
    WEAK_CUE,
    is_capitalised,
    is_org_word,
)


class CensusNameRecognizer(LocalRecognizer):
    """PERSON without a model. A run of capitalised words is a name when

    * a title precedes it ("Dr. Anna Berg", "Mr Smith"): score 0.85;
    * a cue precedes it ("Dear Anna", "Patient: Berg, Anna", "my client Jean Moreau", a sign-off):
      score 0.7;
    * it starts with a census first name and ends with a surname-like word ("Anna Berg", "Lars
      Kowalski"): 0.75 when the surname is in the census too, else 0.6. A first name that is also an
      English word ("May", "Will", "Grace") needs a census surname and must not open the sentence;
    * it is an initial and a census surname ("J. Smith"): 0.6;
    * it is an unknown word and a common census surname, mid-sentence ("Priya Patel"): 0.5;
    * or it is a first name joined by "and" to a name found ("David and Susan Reid"): 0.6.

    A run followed by an organisation word ("Grace Kelly Foundation", "Contoso Ltd") is not a person.
    """

    def __init__(self, names: NameLists | None = None) -> None:
        self.names = names or census_names()
        super().__init__(
            supported_entities=["PERSON"], supported_language=LANGUAGE, name="CensusNameRecognizer"
        )

    def load(self) -> None:  # the name lists are read once, in __init__
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        return [
            RecognizerResult(
                "PERSON",
                s,
                e,
                score,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                },
            )
            for s, e, score in self.find(text)
        ]

    def find(self, text: str) -> list[tuple[int, int, float]]:
        """(start, end, score) of each name in ``text``."""
        found: list[tuple[int, int, float]] = []
        for run in self._runs(text):
            k = 0
            while k < len(run):
                hit = self._name_at(text, run, k)
                if hit:
                    found.append(hit[:3])
                    k = hit[3]
                else:
                    k += 1
        for start, end, _ in list(found):
            m = COUPLE_BEFORE.search(text, 0, start)
            taken = any(s < m.end(1) and m.start(1) < e for s, e, _ in found) if m else True
            if not taken and end - start > len(text[start:end].split()[0]) and self._strong_first(m.group(1)):
                found.append((m.start(1), m.end(1), 0.6))
        return found

    @staticmethod
    def _runs(text: str) -> Iterator[list[re.Match[str]]]:
        """Maximal runs of word tokens separated by one space (or ". " after an initial or a title):
        the stretches where a name can be."""
        run: list[re.Match[str]] = []
        for m in NAME_TOKEN.finditer(text):
            if run:
                prev = run[-1]
                gap = text[prev.end() : m.start()]
                abbreviated = len(prev.group()) == 1 or prev.group().lower() in TITLES
                if not (gap == " " or (abbreviated and gap in (". ", "."))):
                    yield run
                    run = []
            run.append(m)
        if run:
            yield run

    def _strong_first(self, token: str) -> bool:
        low = token.lower()
        return (
            is_capitalised(token)
            and self.names.is_first(token)
            and low not in AMBIGUOUS_FIRST_NAMES
            and low not in PLACE_FIRST_NAMES
        )

    def _known(self, token: str) -> bool:
        return self.names.is_first(token) or self.names.is_last(token)

    def _name_at(self, text: str, run: list[re.Match[str]], k: int) -> tuple[int, int, float, int] | None:
        """A name starting at token k of the run: (start, end, score, index after it), or None."""
        tok = run[k].group()
        low = tok.lower()
        if low in TITLES and is_capitalised(tok):
            end = self._extend(run, k + 1, free=True)
            if end > k + 1 and not self._org_follows(run, end):
                return run[k + 1].start(), run[end - 1].end(), 0.85, end
            return None
        if not is_capitalised(tok) or low in NOT_A_NAME_WORD:
            return None
        before = max(0, run[k].start() - 40), run[k].start()
        strong = STRONG_CUE.search(text, *before) is not None
        if strong or WEAK_CUE.search(text, *before):
            end = self._extend(run, k, free=True)
            tokens = [m.group() for m in run[k:end]]
            if end > k and not self._org_follows(run, end) and (strong or any(map(self._known, tokens))):
                stop = run[end - 1].end()
                given = GIVEN_AFTER_COMMA.match(text, stop)  # "Patient: Berg, Anna"
                name = given.group(1) if given and end == len(run) else ""
                if name and is_capitalised(name) and name.lower() not in NOT_A_NAME_WORD:
                    stop = given.end() if strong or self._strong_first(name) else stop
                return run[k].start(), stop, 0.7, end
        end = self._extend(run, k, free=False)
        if end - k < 2 or self._org_follows(run, end) or re.search(r"['’]s$", tok):
            return None  # one word; an organisation; a possessive ("Sam's Club")
        span = run[k].start(), run[end - 1].end()
        last = run[end - 1].group()
        surname_known = self.names.is_last(last)
        opens_sentence = OPENS_SENTENCE.search(text, 0, run[k].start()) is not None
        # In Title Case text ("Other Important Information Governing Law") capitals say nothing.
        prev = run[k - 1] if k > 0 else None
        title_case = (
            prev is not None
            and is_capitalised(prev.group())
            and OPENS_SENTENCE.search(text, 0, prev.start()) is None
        ) or (end < len(run) and is_capitalised(run[end].group()))
        if len(tok) == 1:  # an initial: "J. Smith"
            if surname_known and last.lower() not in AMBIGUOUS_FIRST_NAMES:
                return *span, 0.6, end
            return None
        if self.names.is_first(tok):
            if not self._strong_first(tok) and (
                opens_sentence
                or not surname_known
                or last.lower() in AMBIGUOUS_FIRST_NAMES
                or last.lower() in NOT_A_NAME
            ):
                return None
            if not surname_known and title_case:
                return None
            return *span, 0.75 if surname_known else 0.6, end
        if (
            len(tok) > 2
            and end - k == 2
            and not (opens_sentence or title_case)
            and self.names.is_common_last(last)
        ):
            return *span, 0.5, end
        return None

    @staticmethod
    def _org_follows(run: list[re.Match[str]], end: int) -> bool:
        return end < len(run) and is_org_word(run[end].group())

    def _extend(self, run: list[re.Match[str]], k: int, *, free: bool) -> int:
        """Index after the name that starts at token k: up to four capitalised name-like tokens,
        particles such as "van der" allowed inside. ``free``: after a title or a cue any capitalised
        word may be part of the name; otherwise the middle ones must be census names or initials."""
        end = k
        while end < len(run) and end - k < 4:
            tok = run[end].group()
            low = tok.lower()
            if low in PARTICLES and end > k and end + 1 < len(run) and is_capitalised(run[end + 1].group()):
                end += 1
                continue
            if not is_capitalised(tok) or low in NOT_A_NAME_WORD:
                break
            if is_org_word(tok) and not self.names.is_common_last(tok):
                break
            is_last_token = end + 1 == len(run) or not is_capitalised(run[end + 1].group())
            known = len(tok) == 1 or self.names.is_first(tok) or self.names.is_last(tok)
            if not free and end > k and not is_last_token and not known:
                break
            end += 1
        while end > k and run[end - 1].group().lower() in PARTICLES:  # a particle cannot end a name
            end -= 1
        return end
