"""PERSON without a model: CensusNameRecognizer reads runs of capitalised words and decides, from titles,
cues and the census name lists, which of them are people's names. Its vocabularies and cues live in
name_cues.py, the census lists in census.py."""

from __future__ import annotations

import re
from collections.abc import Iterator

from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from ragloop.curation.pii.census import NameLists, census_names
from ragloop.curation.pii.english_words import EnglishWords, english_words
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
    PERSON_CUE,
    PLACE_FIRST_NAMES,
    STRONG_CUE,
    THING_BEFORE,
    TITLES,
    WEAK_CUE,
    WORD_AFTER,
    is_capitalised,
    is_name_shaped,
    is_org_word,
)
from ragloop.curation.pii.name_lists import OriginNames, name_key, origin_names
from ragloop.curation.pii.places import Gazetteer, place_names


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

    With ``many_origins`` (the default; issue 15) the words of a name need not be in the census:

    * a person cue precedes it — a self-introduction ("I am", "this is", "my name is"), who filed,
      submitted or requested something, "on behalf of" — and it looks like a name (``plausible``): not
      only ordinary English words ("I am Satisfied"), its last word not one unless a surname: 0.7;
    * it is a given name of some origin (Faker's lists, name_lists.py) and a surname-like word, or a word
      and a surname of some origin ("Folasade Ogunleye", "Tadhg Ó Súilleabháin"): 0.6;
    * it is two to four words no dictionary knows (english_words.py) and no place, followed by a word in
      small letters, not in Title Case and not after "the", "in", "using"… ("Lubna Bensaïd won the
      hackathon", "yesterday Niamh Breathnach fixed it"): 0.5. A word that is also a given name
      ("Comfort", "Joy") is no evidence here, except before one or two such words that no town is
      called and a word in small letters ("Joy Tshabalala approved it"): 0.5.

    A known place (Faker's lists, GeoNames' towns and countries: places.py) is no person without a cue
    ("Rahim Yar Khan", "Ha Long"); one whose words are a census given name and surname ("Juan Díaz") only
    after "in", "the"….

    A run followed by an organisation word ("Grace Kelly Foundation", "Contoso Ltd") is not a person.
    """

    def __init__(self, names: NameLists | None = None, *, many_origins: bool = True) -> None:
        self.names = names or census_names()
        self.many_origins = many_origins
        self.origins: OriginNames | None = origin_names() if many_origins else None
        self.words = english_words() if many_origins else EnglishWords(frozenset(), frozenset())
        self.places = place_names() if many_origins else Gazetteer(frozenset(), frozenset())
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
        cue = PERSON_CUE.search(text, *before) if self.many_origins else None
        if strong or cue or WEAK_CUE.search(text, *before):
            end = self._extend(run, k, free=True)
            tokens = [m.group() for m in run[k:end]]
            if cue and not strong and not any(map(self._known, tokens)):
                while (
                    end - k > 1
                    and self.ordinary(run[end - 1].group())
                    and not self.family(run[end - 1].group())
                ):
                    end -= 1  # "this is Niamh Breathnach Senior Engineer at…"
                tokens = [m.group() for m in run[k:end]]
                accepted = self.plausible(tokens, by=cue.group("by") is not None)
            else:
                accepted = strong or any(map(self._known, tokens))
            if end > k and not self._org_follows(run, end) and accepted:
                stop = run[end - 1].end()
                given = GIVEN_AFTER_COMMA.match(text, stop)  # "Patient: Berg, Anna"
                name = given.group(1) if given and end == len(run) else ""
                if name and is_capitalised(name) and name.lower() not in NOT_A_NAME_WORD:
                    stop = given.end() if strong or self._strong_first(name) else stop
                return run[k].start(), stop, 0.7, end
        hit = self._census_name(text, run, k)
        if hit is None and self.many_origins:
            hit = self._origin_name(text, run, k)
        return hit

    def _census_name(self, text: str, run: list[re.Match[str]], k: int) -> tuple[int, int, float, int] | None:
        """A name from the census lists alone, with no cue before it."""
        tok = run[k].group()
        end = self._extend(run, k, free=False)
        if end - k < 2 or self._org_follows(run, end) or re.search(r"['’]s$", tok):
            return None  # one word; an organisation; a possessive ("Sam's Club")
        span = run[k].start(), run[end - 1].end()
        last = run[end - 1].group()
        if self._known_place([m.group() for m in run[k:end]], text, run[k].start()):
            return None  # "in Hai Phong", "Alice Springs", "Ciudad Juárez"
        surname_known = self.names.is_last(last)
        opens_sentence = OPENS_SENTENCE.search(text, 0, run[k].start()) is not None
        # In Title Case text ("Other Important Information Governing Law") capitals say nothing.
        title_case = _in_title_case(run, k, end, text)
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
            and not (self.many_origins and (self.ordinary(tok) or self._place([tok, last])))
        ):
            return *span, 0.5, end  # not "Labour Day", "Hai Phong"
        return None

    def _origin_name(self, text: str, run: list[re.Match[str]], k: int) -> tuple[int, int, float, int] | None:
        """A name whose words no census list holds: a given name or a surname of some origin, or words no
        list or dictionary knows, placed where a person's name stands in prose."""
        tok = run[k].group()
        # An ordinary word opens a name on list evidence only if the census has it as a first name ("Grace
        # Kowalczyk"): other lists hold words as given names too ("Wells Fargo", "Comfort Zone"). Any
        # given name that is a word may still open one before a word of a name's shape (``word_given``).
        word_given = not self.namelike(tok) and not self.names.is_first(tok)
        if word_given and not self.given(tok):
            return None
        end = self._extend(run, k, free=False, unknown=True)
        while end - k > 2 and self.ordinary(run[end - 1].group()) and not self.family(run[end - 1].group()):
            end -= 1
        if self._org_follows(run, end):
            return None
        names = [m.group() for m in run[k:end] if m.group().lower() not in PARTICLES]
        if len(names) < 2 or re.search(r"['’]s$", names[0]):
            return None
        first, last = names[0], names[-1]
        if self._known_place([m.group() for m in run[k:end]], text, run[k].start()):
            return None  # "Puerto Rico", "Costa Rica", "Hai Phong"
        listed_first = self.given(first) and self.namelike(first)
        listed_last = self.family(last) and self.namelike(last)
        if not (self.namelike(last) or self.family(last)) or not all(
            self.namelike(t) or self.given(t) or self.family(t) for t in names[1:-1]
        ):
            return None
        if _in_title_case(run, k, end, text):
            return None
        word_before = re.search(r"([^\W\d_]+)[ \t]+$", text[max(0, run[k].start() - 30) : run[k].start()])
        # Followed by a word in small letters (a verb: "… Bensaïd won the hackathon"), not by a noun
        # the words would name ("Comfort Zone"), and no place ("Kuala Lumpur is hot" aside).
        reads = (end == len(run) or not is_capitalised(run[end].group())) and not self._place(names)
        shaped = self.namelike(last) and self.namelike(first)  # a word that is a given name is no evidence
        # A given name that is also a word ("Joy", "Gift", "Favour"), then one or two words of a name's
        # shape that no list or dictionary knows and no town is called, then a verb: "Joy Tshabalala
        # approved it", not "Joy Division played", "Hope Kenya raised" or "Wells Fargo announced".
        word_name = (
            reads
            and self.given(first)
            and len(names) <= 3
            and all(self.namelike(t) and name_key(t) not in self.places.towns for t in names[1:])
            and self._verb_after(text, run[end - 1].end())
        )
        if word_before and word_before.group(1).lower() in THING_BEFORE:
            evidence = listed_first and listed_last  # "in Puerto Rico", "using Mozilla Firefox"
        elif word_given:
            evidence = word_name
        else:
            evidence = listed_first or listed_last or (reads and shaped) or word_name
        if not evidence:
            return None
        return run[k].start(), run[end - 1].end(), 0.6 if listed_first or listed_last else 0.5, end

    # what a word is, for the rules above and for names evidenced by identifiers (identifier_names.py)

    def ordinary(self, token: str) -> bool:
        """An everyday English word ("Comfort", "Satisfied", "Hall"), grammar, or an organisation word: no
        evidence of a person by itself. A census first name is one only if it is in AMBIGUOUS_FIRST_NAMES
        or PLACE_FIRST_NAMES ("Rose", "May", "Florence"; not "John", whom subtitles also write "john")."""
        low = re.sub(r"['’]s$", "", token).lower()
        if low in NOT_A_NAME_WORD or is_org_word(low) or low in TITLES:
            return True
        if self.names.is_first(token):
            return low in AMBIGUOUS_FIRST_NAMES or low in PLACE_FIRST_NAMES
        levels = [self.words.level(part) for part in name_key(low).split("-")]
        if all(level == 2 for level in levels):
            return True
        # A rarer word is a word unless a name list holds it ("contractual" yes, "lars" no).
        return all(levels) and not (self.given(token) or self.family(token))

    def given(self, token: str) -> bool:
        """A given name in the census or in some origin's list."""
        return self.names.is_first(token) or (
            self.origins is not None and name_key(token) in self.origins.given
        )

    def family(self, token: str) -> bool:
        """A surname in the census or in some origin's list."""
        return self.names.is_last(token) or (
            self.origins is not None and name_key(token) in self.origins.family
        )

    def namelike(self, token: str) -> bool:
        """Written as a name ("Ogunleye", "Ní", "O'Brien") and not an ordinary word: whether or not a list
        knows it, the shape of most people's names in English text."""
        return self.many_origins and len(token) > 1 and is_name_shaped(token) and not self.ordinary(token)

    def _known_place(self, names: list[str], text: str, start: int) -> bool:
        """All the words together are a known place: a country or a town of Faker's lists ("Puerto
        Rico"), or of GeoNames' ("Hai Phong", "Rahim Yar Khan"). A place that reads as a census given name
        and surname ("Alice Springs", "Juan Díaz") is one only after "in", "near", "the"…"""
        key = name_key(" ".join(names))
        if self.origins is not None and key in self.origins.places:
            return True
        if len(names) < 2 or key not in self.places.whole:
            return False
        first, last = names[0], names[-1]
        if self._strong_first(first) and self.names.is_last(last):
            before = re.search(r"([^\W\d_]+)[ \t]+$", text[max(0, start - 30) : start])
            return before is not None and before.group(1).lower() in THING_BEFORE
        return True

    def _place(self, names: list[str]) -> bool:
        """Some of the words, or all of them together, are a place ("Lagos", "Hai Phong")."""
        if self.origins is None:
            return False
        places = self.origins.places
        return name_key(" ".join(names)) in places or any(name_key(n) in places for n in names)

    def plausible(self, tokens: list[str], *, by: bool = False) -> bool:
        """After a person cue: do these capitalised words read as a name? Not only ordinary words ("I am
        Very Satisfied"), the first and last not ordinary words unless a given name and a surname ("I am
        Comfort Agyekum" yes, "submitted by Data Protection" no). After "by" or "on behalf of" one word
        alone must be a listed name: it is as often a company ("on behalf of Contoso")."""
        names = [t for t in tokens if t.lower() not in PARTICLES]
        if not names or not all(len(t) == 1 or is_name_shaped(t) for t in names):
            return False
        if len(names) == 1:
            (token,) = names
            listed = self.given(token) or self.family(token)
            return self.namelike(token) and (listed or not by)
        first, last = names[0], names[-1]
        return (
            any(map(self.namelike, names))
            and (self.namelike(first) or self.given(first) or len(first) == 1)
            and (self.namelike(last) or self.family(last))
        )

    @staticmethod
    def _verb_after(text: str, end: int) -> bool:
        after = WORD_AFTER.match(text, end)
        return after is not None and after.group(1).islower()

    @staticmethod
    def _org_follows(run: list[re.Match[str]], end: int) -> bool:
        return end < len(run) and is_org_word(run[end].group())

    def _extend(self, run: list[re.Match[str]], k: int, *, free: bool, unknown: bool = False) -> int:
        """Index after the name that starts at token k: up to four capitalised name-like tokens,
        particles such as "van der" allowed inside. ``free``: after a title or a cue any capitalised
        word may be part of the name; otherwise the middle ones must be census names or initials, or with
        ``unknown`` names of some origin or words no dictionary knows ("Kiều Khánh Uyên")."""
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
            if unknown and not known:
                known = self.namelike(tok) or self.given(tok) or self.family(tok)
            if not free and end > k and not is_last_token and not known:
                break
            end += 1
        while end > k and run[end - 1].group().lower() in PARTICLES:  # a particle cannot end a name
            end -= 1
        return end


def _in_title_case(run: list[re.Match], k: int, end: int, text: str) -> bool:
    """Whether the capitalised words ``run[k:end]`` stand inside Title Case text: a capitalised word before
    them that does not open a sentence, or one right after them. There capitals say nothing of a name."""
    prev = run[k - 1] if k > 0 else None
    return (
        prev is not None
        and is_capitalised(prev.group())
        and OPENS_SENTENCE.search(text, 0, prev.start()) is None
    ) or (end < len(run) and is_capitalised(run[end].group()))
