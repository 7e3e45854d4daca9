"""Pseudonymise personal data before an interaction becomes training data (curation, stage 5).

Detection is Presidio's AnalyzerEngine. Its default NLP engine needs a trained spaCy model, which an
air-gapped install does not have, so the default here (``ner="offline"``) runs Presidio's own pattern
recognizers (email, phone, IBAN, card, IP, national IDs…) on spaCy's rule-based tokenizer, which ships
with spaCy and needs no model, plus three recognizers written for ragloop: PERSON from the US Census 1990
name lists (the ``names`` package), STREET_ADDRESS and DATE_OF_BIRTH from patterns, and FR_NIR. A user
who has a spaCy or transformers NER model can plug it in (``ner="spacy:en_core_web_lg"``).

Every found value is replaced by a realistic surrogate of the same kind (a census name, an example.org
email, an IBAN with valid check digits…) chosen by an HMAC of the value under a secret: the same value
gets the same surrogate in every field of an example and in every example anonymised with that secret,
so datasets stay reproducible and co-references ("Anna Berg" … "Ms Berg") survive. The mapping back to
the originals is kept only if asked for (``vault_path``). Nothing here logs a value, found or replaced.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import logging
import re
import secrets
import sqlite3
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import phonenumbers
import tldextract
from presidio_analyzer import (
    AnalysisExplanation,
    AnalyzerEngine,
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    EsNieRecognizer,
    EsNifRecognizer,
    IbanRecognizer,
    IpRecognizer,
    ItFiscalCodeRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    PlPeselRecognizer,
    UkNinoRecognizer,
    UrlRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as AnonymizerSpan

from ragloop.errors import ConfigError

LANGUAGE = "en"
# Presidio's scores: patterns validated by a checksum score 1.0, names 0.6-0.85, weak patterns (SSN,
# passport) reach 0.4 only with a context word nearby ("SSN", "passport").
SCORE_THRESHOLD = 0.4
DEFAULT_ENTITIES = [
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "IBAN_CODE",
    "CREDIT_CARD",
    "IP_ADDRESS",
    "STREET_ADDRESS",
    "DATE_OF_BIRTH",
    "US_SSN",
    "US_PASSPORT",
    "UK_NHS",
    "UK_NINO",
    "ES_NIF",
    "ES_NIE",
    "IT_FISCAL_CODE",
    "PL_PESEL",
    "FR_NIR",
]
# Also detectable on request; off by default because documentation is full of harmless links.
OPTIONAL_ENTITIES = ["URL"]
# Phone numbers written in national format ("030 1234567") are read as numbers of these countries;
# numbers in international format ("+49 30 1234567") are found whatever the list.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IE")


_MEMO_MIN_CHARS = 400  # fields at least this long (passages) are detected alone and memoised
_MEMO_SIZE = 20_000


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its type, its [start, end) span in the text and Presidio's score."""

    entity_type: str
    start: int
    end: int
    score: float


# --- names: US Census 1990 first and last names, read from the `names` package's data files ----------------

# A name must be at least this common (percent of the 1990 population) to count: the long tail of the
# lists holds words such as "State", "Union" or "Party" that are also someone's surname.
FIRST_NAME_MIN_FREQ = 0.002
LAST_NAME_MIN_FREQ = 0.001
# A surname this common can stand after a given name the census does not know ("Priya Patel").
COMMON_LAST_NAME_FREQ = 0.01


def fold(text: str) -> str:
    """Accents off, length kept ("Lucía Sánchez" → "Lucia Sanchez"): the census files are plain ASCII,
    and a name is the same name with or without its accents."""
    return "".join(_fold_char(c) for c in text)


@lru_cache(maxsize=4096)
def _fold_char(c: str) -> str:
    base = "".join(b for b in unicodedata.normalize("NFKD", c) if not unicodedata.combining(b))
    return base if len(base) == 1 else c


@dataclass(frozen=True)
class NameLists:
    """Census frequencies (percent), keyed by the upper-case ASCII name as the files spell it."""

    female: dict[str, float]
    male: dict[str, float]
    last: dict[str, float]

    def _first_freq(self, token: str) -> float:
        key = fold(token).upper()
        return max(self.female.get(key, 0.0), self.male.get(key, 0.0))

    def is_first(self, token: str) -> bool:
        """A census first name, or a hyphenated one starting with one ("Jean-Luc"); not a possessive."""
        if re.search(r"['’]s$", token):
            return False
        return self._first_freq(re.split(r"[-'’]", token)[0]) >= FIRST_NAME_MIN_FREQ

    def last_freq(self, token: str) -> float:
        return self.last.get(re.sub(r"['’]", "", fold(token)).upper(), 0.0)  # the files write OBRIEN

    def is_last(self, token: str) -> bool:
        return self.last_freq(token) >= LAST_NAME_MIN_FREQ

    def is_common_last(self, token: str) -> bool:
        """Common enough that the word is more likely a surname than anything else ("Hall", "Park")."""
        return self.last_freq(token) >= COMMON_LAST_NAME_FREQ

    def role(self, token: str) -> str | None:
        """The pool a surrogate for this word is drawn from, by census frequency: female or male first
        names, or surnames; None for a word the census does not know."""
        key = fold(token).upper()
        f, m, last = self.female.get(key, 0.0), self.male.get(key, 0.0), self.last.get(key, 0.0)
        if not (f or m or last):
            return None
        if max(f, m) > last:
            return "female" if f >= m else "male"
        return "last"


@lru_cache(maxsize=1)
def census_names() -> NameLists:
    """Read the three frequency files shipped by the ``names`` package (MIT; the data are the US Census
    Bureau's 1990 name files, a public-domain US government work). The files are read directly: the
    package's own code, which draws random names, is never run."""
    try:
        dist = importlib.metadata.distribution("names")
    except importlib.metadata.PackageNotFoundError as e:
        raise ConfigError("PII detection needs the 'names' package: pip install names==0.3.0") from e

    def read(filename: str) -> dict[str, float]:
        path = Path(str(dist.locate_file(f"names/{filename}")))
        out: dict[str, float] = {}
        for line in path.read_text(encoding="ascii").splitlines():
            parts = line.split()
            if len(parts) == 4:
                out[parts[0]] = float(parts[1])
        return out

    return NameLists(read("dist.female.first"), read("dist.male.first"), read("dist.all.last"))


def words(text: str) -> frozenset[str]:
    """A set of words written as one string: long vocabularies stay readable."""
    return frozenset(text.split())


# First names that are also everyday English words: found by comparing the census first names with an
# English word list, then pruned by hand of words that are mostly names (John, Peter, Victor…). As the
# first word of a name they need stronger evidence: a census surname after them, not at sentence start.
AMBIGUOUS_FIRST_NAMES = words(
    """alpha amber angel angle art august aura autumn basil beau belle berry bill birdie blanch bonny brain
    brandy brook brooks buck bud buddy buster candy caprice carol chance charity chase chastity cherish cherry
    clay clement cliff coral crystal dale dawn dean delta desire destiny diamond dimple dolly dot dusty earl
    earnest ebony echo else emery era ester eve faith fawn fern flora forest foster frank freeman gale
    garland garnet gay gene genie ginger glen glory grace grant guy harmony hazel heath heather holly honey
    hope hunter iris ivory ivy jack jade jasmine jasper jay jewel joy junior karma king lacy lady lance lane
    laurel liberty lily loan long lore magnolia major man manual maple mark marquis marry marvel mason max
    may melody mercy merry miles misty noble nova olive omega opal page pansy pat patience pearl penny piper
    porter precious prince princess prudence queen raven ray reed rich robin rocky rose rosemary royal ruby
    rusty sandy savanna scarlet sierra so sol son song soon spring star sterling stormy summer sun sunny
    sunshine tanner tiny trinity velvet viola violet wade walker ward will windy young"""
)
# Words that end an organisation or a place, not a person's name ("Grace Hospital", "Victoria Street"),
# unless they are also common surnames ("Rebecca Hall", "Linda Park").
NOT_A_NAME = words(
    """street st road rd avenue ave lane ln drive boulevard blvd court place square way terrace close
    crescent gardens parkway highway hospital clinic surgery pharmacy practice laboratory university college
    school academy bank group ltd limited inc corp gmbh ag sa llc llp plc foundation institute agency
    authority board council commission committee tribunal act regulation directive article recital chapter
    section annex treaty agreement convention union states state republic kingdom ministry department office
    centre center station airport port harbour harbor park river lake sea ocean bay valley coast beach
    island islands mountain hills heights bridge hall house palace castle abbey church cathedral museum
    gallery library stadium arena market mall plaza festival prize award fund trust partners associates
    holdings services solutions systems technologies medical health care insurance capital county city town
    village district province region wing ward block unit building tower floor room period day team support
    customer service club monday tuesday wednesday thursday friday saturday sunday january february march april
    june july august september october november december protection data privacy policy terms law code"""
)
# Capitalised words that are grammar, greetings or the first word of a place, never the start of a name.
NOT_A_NAME_WORD = words(
    """the this that these those in on at for from with by of and or but if when where what which who how
    why all any each our your their his her its we you they he she it i a an as to is are was were be has
    have had do does did not no yes please thanks thank dear hi hello regards kind best sir madam colleague
    colleagues customer customers team everyone there here after before since during according under
    pursuant my me mine san santa santo saint sao são los las fort mount new north south east west upper lower"""
)
TITLES = words("mr mrs ms miss mx dr prof professor sir dame lord lady judge rev reverend father")
PARTICLES = words("van von de der den da di del della la le du dos das bin ibn al el ter ten")

_NAME_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Words that announce a person. Strong cues (a greeting, a form label at the start of a line, a
# sign-off) make any capitalised words after them a name; weak ones (a role such as "my client", an
# introduction) need one of those words to be a census name too.
_STRONG_CUE = re.compile(
    r"(?:\b(?:dear|hi|hello|attn\.?|c/o|next of kin|my name is|name is|full name)"
    r"|(?:^|\n|[.;][ \t])[ \t]*(?:name|patient|client|customer|applicant|employee|claimant|policyholder"
    r"|policy holder|account holder|cardholder|beneficiary|tenant|signed|from|to|cc|contact|prescriber"
    r"|physician|gp)[ \t]*:"
    r"|(?:regards|sincerely|faithfully|thanks|thank you|cheers|best wishes)(?:,[ \t]*|,?[ \t]*\n))[ \t]*$",
    re.IGNORECASE,
)
# Case-sensitive: a capitalised "Patient Directory" or "Customer Choice Notice" is a title, not a cue.
_WEAK_CUE = re.compile(
    r"(?:\b(?:patient|client|customer|colleague|user|caller|agent|admin|applicant|claimant|witness|tenant"
    r"|employee|cardholder|account holder|daughter|son|wife|husband|mother|father|brother|sister|partner"
    r"|on behalf of|signed by|seen by|reviewed by|referred by|represent|represents|authori[sz]e)"
    r"|\b(?:[Tt]his is|I am|I,)|(?:^|\n)[^\n:]{1,30}:)[ \t]*$"
)
# Place names that are also census first names: as a first word they need the same care as "May".
PLACE_FIRST_NAMES = words(
    """florida georgia virginia carolina dakota montana nevada indiana austin dallas houston phoenix
    denver jackson madison lincoln victoria florence sydney adelaide charlotte paris chelsea israel
    jordan kenya china india asia africa america geneva"""
)
_OPENS_SENTENCE = re.compile(r"(?:^|[.!?:;\n\"“(])\s*$")
_COUPLE_BEFORE = re.compile(r"(?<![\w])([^\W\d_]+)[ \t]+(?:and|&)[ \t]+$")
_GIVEN_AFTER_COMMA = re.compile(r",[ \t]*([^\W\d_]+(?:-[^\W\d_]+)?)")


def _is_org_word(token: str) -> bool:
    low = token.lower()
    return low in NOT_A_NAME or (low.endswith("s") and low[:-1] in NOT_A_NAME)


def _is_capitalised(token: str) -> bool:
    """True for "Anna", "McDonald", "O'Brien", "J"; false for "GDPR", "data"."""
    return token[0].isupper() and not token[1:].isupper()


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
            m = _COUPLE_BEFORE.search(text, 0, start)
            taken = any(s < m.end(1) and m.start(1) < e for s, e, _ in found) if m else True
            if not taken and end - start > len(text[start:end].split()[0]) and self._strong_first(m.group(1)):
                found.append((m.start(1), m.end(1), 0.6))
        return found

    @staticmethod
    def _runs(text: str) -> Iterator[list[re.Match[str]]]:
        """Maximal runs of word tokens separated by one space (or ". " after an initial or a title):
        the stretches where a name can be."""
        run: list[re.Match[str]] = []
        for m in _NAME_TOKEN.finditer(text):
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
            _is_capitalised(token)
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
        if low in TITLES and _is_capitalised(tok):
            end = self._extend(run, k + 1, free=True)
            if end > k + 1 and not self._org_follows(run, end):
                return run[k + 1].start(), run[end - 1].end(), 0.85, end
            return None
        if not _is_capitalised(tok) or low in NOT_A_NAME_WORD:
            return None
        before = max(0, run[k].start() - 40), run[k].start()
        strong = _STRONG_CUE.search(text, *before) is not None
        if strong or _WEAK_CUE.search(text, *before):
            end = self._extend(run, k, free=True)
            tokens = [m.group() for m in run[k:end]]
            if end > k and not self._org_follows(run, end) and (strong or any(map(self._known, tokens))):
                stop = run[end - 1].end()
                given = _GIVEN_AFTER_COMMA.match(text, stop)  # "Patient: Berg, Anna"
                name = given.group(1) if given and end == len(run) else ""
                if name and _is_capitalised(name) and name.lower() not in NOT_A_NAME_WORD:
                    stop = given.end() if strong or self._strong_first(name) else stop
                return run[k].start(), stop, 0.7, end
        end = self._extend(run, k, free=False)
        if end - k < 2 or self._org_follows(run, end) or re.search(r"['’]s$", tok):
            return None  # one word; an organisation; a possessive ("Sam's Club")
        span = run[k].start(), run[end - 1].end()
        last = run[end - 1].group()
        surname_known = self.names.is_last(last)
        opens_sentence = _OPENS_SENTENCE.search(text, 0, run[k].start()) is not None
        # In Title Case text ("Other Important Information Governing Law") capitals say nothing.
        prev = run[k - 1] if k > 0 else None
        title_case = (
            prev is not None
            and _is_capitalised(prev.group())
            and _OPENS_SENTENCE.search(text, 0, prev.start()) is None
        ) or (end < len(run) and _is_capitalised(run[end].group()))
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
        return end < len(run) and _is_org_word(run[end].group())

    def _extend(self, run: list[re.Match[str]], k: int, *, free: bool) -> int:
        """Index after the name that starts at token k: up to four capitalised name-like tokens,
        particles such as "van der" allowed inside. ``free``: after a title or a cue any capitalised
        word may be part of the name; otherwise the middle ones must be census names or initials."""
        end = k
        while end < len(run) and end - k < 4:
            tok = run[end].group()
            low = tok.lower()
            if low in PARTICLES and end > k and end + 1 < len(run) and _is_capitalised(run[end + 1].group()):
                end += 1
                continue
            if not _is_capitalised(tok) or low in NOT_A_NAME_WORD:
                break
            if _is_org_word(tok) and not self.names.is_common_last(tok):
                break
            is_last_token = end + 1 == len(run) or not _is_capitalised(run[end + 1].group())
            known = len(tok) == 1 or self.names.is_first(tok) or self.names.is_last(tok)
            if not free and end > k and not is_last_token and not known:
                break
            end += 1
        while end > k and run[end - 1].group().lower() in PARTICLES:  # a particle cannot end a name
            end -= 1
        return end


# --- pattern recognizers written for ragloop -------------------------------------------------------------

# Presidio compiles patterns case-insensitively; (?-i:…) keeps street and city names capitalised.
_CAP = r"(?-i:[A-ZÀ-ÖØ-Þ][a-zà-öø-ÿ'’-]+)"
_STREET_TYPE = (
    r"(?:Street|St\.?|Road|Rd\.?|Avenue|Ave\.?|Lane|Ln\.?|Drive|Dr\.?|Boulevard|Blvd\.?|Court|Ct\.?|Place"
    r"|Pl\.?|Square|Sq\.?|Way|Terrace|Close|Crescent|Gardens|Parkway|Highway|Row|Walk|Mews|Grove)"
)
_UK_POSTCODE = r"(?-i:[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2})"
_US_STATE_ZIP = r"(?-i:[A-Z]{2})[ \t]+\d{5}(?:-\d{4})?"
_EU_POSTCODE_CITY = (
    r"(?:(?-i:[A-Z]{1,2})-)?(?:\d{3}[ \t]\d{2}|\d{4,5})(?:[ \t](?-i:[A-Z]{2}))?[ \t]+"
    + _CAP
    + r"(?:[ \t]"
    + _CAP
    + r")?"
)
_GERMANIC_STREET = (
    r"(?-i:[A-ZÄÖÜ][a-zäöüß]{2,}(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|gracht|laan"
    r"|straat|plein|kade|gatan|vägen|vej|veien|katu|tie))"
)
_ROMANCE_STREET = (
    r"(?:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai|calle|avenida|plaza|paseo|carrer|via"
    r"|viale|piazza|corso|largo|rua|travessa)"
)
_ADDRESS_PATTERNS = [
    # 221B Baker Street, London NW1 6XE / 1600 Pennsylvania Avenue NW, Washington, DC 20500
    Pattern(
        "number street (city postcode)",
        r"\b\d{1,5}[A-Za-z]?,?[ \t]+(?:" + _CAP + r"[ \t]+){1,3}" + _STREET_TYPE + r"(?![\w])"
        r"(?:[ \t]+(?-i:NW|NE|SW|SE|N|S|E|W)\b)?"
        r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Unit|Flat)\.?[ \t]*\w+)?"
        r"(?:,[ \t]*" + _CAP + r"(?:[ \t]" + _CAP + r")?)?"
        r"(?:,?[ \t]+(?:" + _UK_POSTCODE + r"|" + _US_STATE_ZIP + r"))?",
        0.7,
    ),
    # 61 Kingsway, Manchester M19 2LL / 8 Elm Close, Springfield, IL 62704: no street word, but the
    # postcode after the town says it is an address.
    Pattern(
        "number name, town postcode",
        r"\b\d{1,5}[A-Za-z]?,?[ \t]+(?:"
        + _CAP
        + r"[ \t]+){0,2}"
        + _CAP
        + r",[ \t]*"
        + _CAP
        + r"(?:[ \t]"
        + _CAP
        + r")?,?[ \t]+(?:"
        + _UK_POSTCODE
        + r"|"
        + _US_STATE_ZIP
        + r")\b",
        0.7,
    ),
    # Hauptstraße 12, 10115 Berlin / Keizersgracht 123, 1015 CJ Amsterdam
    Pattern(
        "street number (postcode city)",
        r"\b" + _GERMANIC_STREET + r"[ \t]+\d{1,4}[a-zA-Z]?(?:,?[ \t]+" + _EU_POSTCODE_CITY + r")?",
        0.7,
    ),
    # 12 rue de la Paix, 75002 Paris / Calle Mayor 5, 28013 Madrid / Via Roma 10, 00184 Roma
    Pattern(
        "romance street",
        r"(?:\b\d{1,4}(?:[ \t]?(?:bis|ter))?,?[ \t]+)?\b"
        + _ROMANCE_STREET
        + r"[ \t]+(?:(?:de|del|della|di|da"
        r"|du|des|la|le|l'|d')[ \t]*){0,2}" + _CAP + r"(?:[ \t]" + _CAP + r"){0,2}"
        r"(?:,?[ \t]+\d{1,4}[a-zA-Z]?\b(?![ \t]?\d))?(?:,[ \t]*" + _EU_POSTCODE_CITY + r")?",
        0.7,
    ),
]


class StreetAddressRecognizer(PatternRecognizer):
    """Street addresses in US/UK ("221B Baker Street, London NW1 6XE"), Germanic ("Hauptstraße 12,
    10115 Berlin") and Romance ("12 rue de la Paix, 75002 Paris") forms. A Romance street word alone
    ("via") is weak evidence, so that pattern must also carry a number to count."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="STREET_ADDRESS",
            name="StreetAddressRecognizer",
            patterns=_ADDRESS_PATTERNS,
            context=["address", "street", "lives", "live", "resides", "deliver", "delivery", "ship", "mail"],
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        return None if any(c.isdigit() for c in pattern_text) else False


_DATE = (
    r"(?:\d{1,2}[./-]\d{1,2}[./-](?:19|20)\d{2}|(?:19|20)\d{2}-\d{2}-\d{2}"
    r"|\d{1,2}(?:st|nd|rd|th)?[ \t]+(?:of[ \t]+)?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,?[ \t]+(?:19|20)\d{2}"
    r"|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?[ \t]+\d{1,2}(?:st|nd|rd|th)?,?[ \t]+(?:19|20)\d{2})"
)


class DateOfBirthRecognizer(PatternRecognizer):
    """A date right after "born", "DOB" or "date of birth". Other dates (of a regulation, an invoice, a
    meeting) are not personal data and stay: training on RAG answers needs them."""

    def __init__(self) -> None:
        cue = r"(?<=\b(?:born(?:[ \t]+on)?|d\.?o\.?b\.?|date[ \t]+of[ \t]+birth|birth[ \t]*date|birthday)[ \t]*(?:is|was|:|-)?[ \t]*)"
        super().__init__(
            supported_entity="DATE_OF_BIRTH",
            name="DateOfBirthRecognizer",
            patterns=[Pattern("date after a birth cue", cue + _DATE + r"\b", 0.85)],
        )


class FrNirRecognizer(PatternRecognizer):
    """French social security number (NIR, 15 digits with a mod-97 key): "1 84 12 76 451 089 46"."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="FR_NIR",
            name="FrNirRecognizer",
            patterns=[
                Pattern(
                    "NIR",
                    r"\b[12][ \t]?\d{2}[ \t]?(?:0[1-9]|1[0-2]|[2-9]\d)[ \t]?(?:\d{2}|2[ABab])[ \t]?\d{3}"
                    r"[ \t]?\d{3}[ \t]?\d{2}\b",
                    0.3,
                )
            ],
            context=["sécurité sociale", "securite sociale", "nir", "insee", "social security", "numéro"],
        )

    def validate_result(self, pattern_text: str) -> bool:
        digits = re.sub(r"[ \t]", "", pattern_text).upper()
        body = digits[:13].replace("2A", "19").replace("2B", "18")
        return body.isdigit() and 97 - int(body) % 97 == int(digits[13:])


# tldextract's default extractor downloads the Public Suffix List on first use; this one only reads the
# snapshot bundled with tldextract, so validating an email domain never touches the network.
_OFFLINE_DOMAINS = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class PhoneNumberRecognizer(PhoneRecognizer):
    """Presidio's PhoneRecognizer (python-phonenumbers), faster and stricter on prose.

    Faster: phonenumbers scans the whole text once per region; here it reads only the stretches that
    look like a number (digits with separators), which is most of the saving on long passages.
    Stricter: a match whose digit grouping is not how any of the regions writes numbers ("2023-004512",
    "0.62-0.89" in a table of confidence intervals) scores 0.1, so it counts only with a word such as
    "phone", "call" or "reach" nearby.
    """

    CANDIDATE = re.compile(r"(?<![\w+.,])[+(]?\d[\d \t().\-/]{4,}\d(?![\w])")
    CONTEXT = [*PhoneRecognizer.CONTEXT, "tel", "reach", "contact", "fax", "whatsapp", "sms", "callback"]

    def __init__(self) -> None:
        super().__init__(context=self.CONTEXT, supported_regions=PHONE_REGIONS)

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for candidate in self.CANDIDATE.finditer(text):
            chunk, offset = candidate.group(), candidate.start()
            spans = {
                (m.start, m.end)
                for region in self.supported_regions
                for m in phonenumbers.PhoneNumberMatcher(chunk, region, leniency=self.leniency)
            }
            for start, end in spans:
                strict = any(
                    any(True for _ in phonenumbers.PhoneNumberMatcher(chunk[start:end], region, leniency=2))
                    for region in self.supported_regions
                )
                score = self.SCORE if strict else 0.1
                results.append(
                    RecognizerResult(
                        self.supported_entities[0],
                        offset + start,
                        offset + end,
                        score,
                        analysis_explanation=AnalysisExplanation(self.name, score, "phonenumbers match"),
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        },
                    )
                )
        return EntityRecognizer.remove_duplicates(results)


class NhsNumberRecognizer(NhsRecognizer):
    """Presidio's NHS number recognizer, but a valid checksum alone is not enough: any ten-digit number
    (an order reference) passes it one time in eleven. The checksum vetoes; "NHS" nearby confirms."""

    def __init__(self) -> None:
        super().__init__(patterns=[Pattern("NHS (weak)", NhsRecognizer.PATTERNS[0].regex, 0.1)])

    def validate_result(self, pattern_text: str) -> bool | None:
        return None if super().validate_result(pattern_text) else False


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's EmailRecognizer, its domain check made offline."""

    def validate_result(self, pattern_text: str) -> bool:
        return _OFFLINE_DOMAINS(pattern_text).fqdn != ""


# --- NLP engine: spaCy's tokenizer, no trained model ---------------------------------------------------------


class TokenizerNlpEngine(NlpEngine):
    """Tokens for Presidio's context words ("IBAN", "passport" near a match raise its score) from
    spaCy's rule-based English tokenizer (``spacy.blank("en")``, part of spaCy, no download). It finds
    no entities: names come from CensusNameRecognizer."""

    def __init__(self) -> None:
        self.nlp = None

    def load(self) -> None:
        import spacy

        self.nlp = spacy.blank(LANGUAGE)

    def is_loaded(self) -> bool:
        return self.nlp is not None

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        doc = self.nlp.make_doc(text)
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lower_ for t in doc],
            nlp_engine=self,
            language=language,
            scores=[],
        )

    def process_batch(
        self, texts: Iterable[str], language: str, batch_size: int = 1, n_process: int = 1, **kwargs
    ) -> Iterator[tuple[str, NlpArtifacts]]:
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return self.nlp.vocab[word].is_stop

    def is_punct(self, word: str, language: str) -> bool:
        return self.nlp.vocab[word].is_punct

    def get_supported_entities(self) -> list[str]:
        return []

    def get_supported_languages(self) -> list[str]:
        return [LANGUAGE]


def pattern_recognizers() -> list[EntityRecognizer]:
    """Presidio's predefined recognizers for the default entities, each for English text (national ID
    recognizers are registered by Presidio for their own language; here they look for, say, a Spanish
    NIF in an English support ticket), plus the ones written for ragloop."""
    return [
        OfflineEmailRecognizer(),
        PhoneNumberRecognizer(),
        IbanRecognizer(),
        CreditCardRecognizer(),
        IpRecognizer(),
        UrlRecognizer(),
        UsSsnRecognizer(),
        # Presidio's own context for passports includes "united" and "states", which every EU text has.
        UsPassportRecognizer(context=["passport", "passport number", "passport no"]),
        NhsNumberRecognizer(),
        UkNinoRecognizer(),
        EsNifRecognizer(supported_language=LANGUAGE, context=["dni", "nif", "documento", "identidad"]),
        EsNieRecognizer(supported_language=LANGUAGE, context=["nie", "extranjero", "foreigner"]),
        ItFiscalCodeRecognizer(supported_language=LANGUAGE, context=["codice fiscale", "fiscal code", "cf"]),
        PlPeselRecognizer(supported_language=LANGUAGE, context=["pesel"]),
        FrNirRecognizer(),
        StreetAddressRecognizer(),
        DateOfBirthRecognizer(),
    ]


def build_analyzer(ner: str = "offline") -> AnalyzerEngine:
    """A Presidio AnalyzerEngine for English text, built once per Anonymizer.

    ``ner``: ``"offline"`` (patterns + census names, no model), ``"spacy:<package or path>"`` (adds the
    PERSON/LOCATION/… entities of an installed spaCy pipeline) or ``"transformers:<local folder>"``
    (adds a Hugging Face token-classification model). A model is never downloaded: a missing one is a
    ConfigError that says how to install it.
    """
    kind, _, model = ner.partition(":")
    # Presidio's debug messages quote the words around each finding: raw PII. Keep them off whatever
    # level the application logs at.
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in pattern_recognizers():
        registry.add_recognizer(recognizer)
    registry.add_recognizer(CensusNameRecognizer())
    if kind == "offline" and not model:
        nlp_engine: NlpEngine = TokenizerNlpEngine()
    elif kind == "spacy" and model:
        nlp_engine = _spacy_engine(model)
        registry.add_nlp_recognizer(nlp_engine=nlp_engine)
    elif kind == "transformers" and model:
        nlp_engine = TokenizerNlpEngine()
        registry.add_recognizer(_transformers_recognizer(model))
    else:
        raise ConfigError(f"unknown NER {ner!r}: use 'offline', 'spacy:<model>' or 'transformers:<folder>'")
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=[LANGUAGE],
        default_score_threshold=SCORE_THRESHOLD,
    )


def _spacy_engine(model: str) -> NlpEngine:
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    # Checked here because Presidio would otherwise try to download a missing model.
    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise ConfigError(
            f"spaCy model {model!r} is not installed: install its wheel (pip install "
            f"./{model}-<version>.whl) or point ner at a model folder, or use ner='offline'"
        )
    engine = SpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": model}])
    engine.load()
    return engine


def _transformers_recognizer(folder: str) -> EntityRecognizer:
    from presidio_analyzer.predefined_recognizers import HuggingFaceNerRecognizer

    if not (Path(folder) / "config.json").is_file():
        raise ConfigError(
            f"no transformers model in {folder!r} (config.json missing): give a local folder holding a "
            "token-classification model, or use ner='offline'"
        )
    recognizer = HuggingFaceNerRecognizer(model_name=folder, supported_language=LANGUAGE, device="cpu")
    recognizer.load()
    return recognizer


# --- surrogates ------------------------------------------------------------------------------------------


class _Draws:
    """Deterministic integers from an HMAC digest (SHAKE-256 stream): the same value and secret give the
    same surrogate on every machine and Python version."""

    def __init__(self, digest: bytes) -> None:
        self._stream = hashlib.shake_256(digest).digest(256)
        self._pos = 0

    def below(self, n: int) -> int:
        if self._pos + 8 > len(self._stream):
            self._stream = hashlib.shake_256(self._stream).digest(256)
            self._pos = 0
        chunk = self._stream[self._pos : self._pos + 8]
        self._pos += 8
        return int.from_bytes(chunk, "big") % n

    def choice(self, options: list[str] | str) -> str:
        return options[self.below(len(options))]


def _keep_format(value: str, draws: _Draws, keep_digits: int = 0) -> str:
    """Same length and layout: each digit, upper- and lower-case letter replaced by one of its kind (the
    first ``keep_digits`` digits kept, e.g. a phone number's country code)."""
    out, digits = [], 0
    for c in value:
        if c.isdigit():
            out.append(c if digits < keep_digits else draws.choice(string.digits))
            digits += 1
        elif c.isupper():
            out.append(draws.choice(string.ascii_uppercase))
        elif c.islower():
            out.append(draws.choice(string.ascii_lowercase))
        else:
            out.append(c)
    return "".join(out)


def _pour(mention: str, chars: str) -> str:
    """The mention's layout ("+44 20 7946 0958") filled with the surrogate's digits and letters."""
    it = iter(chars)
    return "".join(next(it) if c.isalnum() else c for c in mention)


def _iban(compact: str, draws: _Draws) -> str:
    """Same country and length, random account, valid check digits (ISO 13616 mod 97)."""
    country, bban = compact[:2], _keep_format(compact[4:], draws)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def _card(digits: str, draws: _Draws) -> str:
    """Same network digit and length, random number, valid Luhn check digit."""
    body = digits[0] + "".join(draws.choice(string.digits) for _ in digits[1:-1])
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def _ip(value: str, draws: _Draws) -> str:
    if ":" in value:  # IPv6: the documentation prefix 2001:db8::/32 (RFC 3849)
        return f"2001:db8::{draws.below(0xFFFF):x}"
    net = draws.choice(["192.0.2", "198.51.100", "203.0.113"])  # IPv4 documentation ranges (RFC 5737)
    return f"{net}.{1 + draws.below(254)}"


_MONTH_NAMES = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def _date(value: str, draws: _Draws) -> str:
    def number(m: re.Match[str]) -> str:
        if len(m.group()) == 4:
            return str(1940 + draws.below(66))
        # 01-12 reads as a valid day and a valid month, whichever order the original used.
        return f"{1 + draws.below(12):0{len(m.group())}d}"

    def month(m: re.Match[str]) -> str:
        name = draws.choice(_MONTH_NAMES)
        return name[: len(m.group())] if len(m.group()) <= 4 else name

    value = re.sub(r"\d+", number, value)
    return re.sub(r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*", month, value)


def _normalise_value(entity_type: str, value: str) -> str:
    """What makes two mentions one value: "+44 20 7946 0958" and "+442079460958" are one phone."""
    if entity_type == "EMAIL_ADDRESS":
        return value.strip().lower()
    if entity_type in ("PHONE_NUMBER", "CREDIT_CARD"):
        return re.sub(r"\D", "", value)
    if entity_type == "IBAN_CODE":
        return re.sub(r"\W", "", value).upper()
    return " ".join(value.split())


_STREET_WORD = re.compile(_STREET_TYPE + r"$|" + _ROMANCE_STREET + r"$", re.IGNORECASE)
_STREET_SUFFIX = re.compile(
    r"(straße|strasse|weg|gasse|platz|allee|damm|ufer|gracht|laan|straat|plein|kade|gatan|vägen)$"
)


# --- vault -------------------------------------------------------------------------------------------------


class Vault:
    """Pseudonym → original, in an SQLite file only its owner can read. Opt-in: it holds the very data
    anonymisation removes, so it belongs on a protected disk, never beside the dataset."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vault (pseudonym TEXT PRIMARY KEY, original TEXT NOT NULL, "
            "entity_type TEXT NOT NULL)"
        )
        self._pattern: re.Pattern[str] | None = None

    def original_of(self, pseudonym: str) -> str | None:
        row = self.db.execute("SELECT original FROM vault WHERE pseudonym = ?", (pseudonym,)).fetchone()
        return row[0] if row else None

    def add(self, entries: dict[str, tuple[str, str]]) -> None:
        """Record pseudonym → (original, entity type); a pseudonym already recorded keeps its original."""
        if entries:
            rows = [(p, o, t) for p, (o, t) in entries.items()]
            self.db.executemany("INSERT OR IGNORE INTO vault VALUES (?, ?, ?)", rows)
            self.db.commit()
            self._pattern = None

    def deanonymize(self, text: str) -> str:
        rows = dict(self.db.execute("SELECT pseudonym, original FROM vault").fetchall())
        if not rows:
            return text
        if self._pattern is None:
            alternatives = "|".join(re.escape(p) for p in sorted(rows, key=len, reverse=True))
            self._pattern = re.compile(rf"(?<![\w@.])(?:{alternatives})(?![\w@])")
        return self._pattern.sub(lambda m: rows[m.group()], text)

    def close(self) -> None:
        self.db.close()


# --- anonymizer --------------------------------------------------------------------------------------------

_FIELD_SEPARATOR = "\n\n"


class Anonymizer:
    """Find personal data in the fields of a training example and replace it with consistent surrogates.

    ``entities``: what to look for (default DEFAULT_ENTITIES; OPTIONAL_ENTITIES may be added).
    ``secret``: key of the HMAC that picks surrogates; the same secret gives the same pseudonyms across
    runs. Without one a random key is drawn, so pseudonyms are consistent only within this Anonymizer
    (a fixed default key would let anyone re-derive them from a list of candidate names).
    ``vault_path``: keep the pseudonym → original mapping in that SQLite file so ``deanonymize`` can undo
    it. ``ner``: see build_analyzer. ``stats`` counts the entities replaced, per type; it never holds a
    value.
    """

    def __init__(
        self,
        entities: list[str] | None = None,
        vault_path: Path | None = None,
        secret: str | None = None,
        ner: str = "offline",
    ) -> None:
        self.entities = list(entities or DEFAULT_ENTITIES)
        self.analyzer = build_analyzer(ner)
        supported = set(self.analyzer.get_supported_entities(LANGUAGE))
        unknown = [e for e in self.entities if e not in supported]
        if unknown:
            raise ConfigError(f"unknown PII entities {unknown}; known: {sorted(supported)}")
        self.names = census_names()
        # Surrogates are drawn from the commoner census names, so they read as ordinary names.
        self._pools = {
            "female": sorted(n for n, f in self.names.female.items() if f >= 0.01),
            "male": sorted(n for n, f in self.names.male.items() if f >= 0.01),
            "last": sorted(n for n, f in self.names.last.items() if f >= 0.005),
        }
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self.vault = Vault(vault_path) if vault_path else None
        self.stats: Counter[str] = Counter()
        self._engine = AnonymizerEngine()
        self._memo: dict[bytes, tuple[Finding, ...]] = {}  # passage text sha256 -> findings

    # detection

    def detect(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, by position. Where two overlap, the one containing the
        other wins, else the higher score, then the longer span."""
        results = self.analyzer.analyze(text, language=LANGUAGE, entities=self.entities)
        chosen: list[Finding] = []
        for r in sorted(results, key=lambda r: (-r.score, r.start - r.end, r.start)):
            overlapping = [c for c in chosen if r.start < c.end and c.start < r.end]
            # A span containing the ones already chosen is the fuller reading ("Via Giuseppe Garibaldi
            # 22, 10122 Torino" is an address, though "Giuseppe Garibaldi" alone scores higher as a name).
            if overlapping and all(
                r.start <= c.start and c.end <= r.end and r.end - r.start > c.end - c.start
                for c in overlapping
            ):
                chosen = [c for c in chosen if c not in overlapping]
                overlapping = []
            if not overlapping:
                chosen.append(Finding(r.entity_type, r.start, r.end, round(r.score, 4)))
        return sorted(chosen, key=lambda f: f.start)

    def detect_example(self, texts: list[str]) -> list[list[Finding]]:
        """Findings per text of one example: ``detect`` on all of them at once, plus every other mention
        of a name found somewhere in the example (see _propagate_names)."""
        # Short fields go through one analyzer call per example, not per field: Presidio's per-call
        # overhead dominates on short texts. No recognizer matches across the blank line that separates
        # them. Long fields are passages, which repeat across examples (the same chunk is retrieved for
        # many questions): those are detected alone and memoised, so each distinct passage costs once.
        out: list[list[Finding]] = [[] for _ in texts]
        short = [i for i, t in enumerate(texts) if len(t) < _MEMO_MIN_CHARS]
        for i, text in enumerate(texts):
            if len(text) >= _MEMO_MIN_CHARS:
                out[i] = list(self._detect_memo(text))
        found = self.detect(_FIELD_SEPARATOR.join(texts[i] for i in short)) if short else []
        offset = 0
        for i in short:
            end = offset + len(texts[i])
            out[i] = [
                Finding(f.entity_type, f.start - offset, f.end - offset, f.score)
                for f in found
                if f.start >= offset and f.end <= end
            ]
            offset = end + len(_FIELD_SEPARATOR)
        self._propagate_names(texts, out)
        return out

    def _detect_memo(self, text: str) -> tuple[Finding, ...]:
        key = hashlib.sha256(text.encode("utf-8")).digest()
        hit = self._memo.get(key)
        if hit is None:
            hit = tuple(self.detect(text))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = hit
        return hit

    def _propagate_names(self, texts: list[str], findings: list[list[Finding]]) -> None:
        """A name found once ("Dr. Anna Berg") is a name wherever else its words appear in the example
        ("Berg replied", "Lars Berg", "Sanchez" for "Sánchez"), with a capitalised word right before a
        known surname taken as a given name."""
        parts = {
            tok
            for text, fs in zip(texts, findings, strict=True)
            for f in fs
            if f.entity_type == "PERSON"
            for tok in _NAME_TOKEN.findall(text[f.start : f.end])
            if len(tok) > 2 and tok.lower() not in PARTICLES and tok.lower() not in NOT_A_NAME_WORD
        }
        if not parts:
            return
        # Also in capitals ("ANNA BERG" in a form), but not in lower case: "Young" or "Rose" are words too.
        variants = {fold(p) for p in parts} | {fold(p).upper() for p in parts}
        alternatives = "|".join(re.escape(p) for p in sorted(variants, key=len, reverse=True))
        pattern = re.compile(rf"(?:(?<![\w])[A-Z][a-z]+[ \t])?(?<![\w])(?:{alternatives})(?![\w])")
        for text, fs in zip(texts, findings, strict=True):
            # Matched on the accent-folded text, which has the same length, so offsets carry over.
            for m in pattern.finditer(fold(text)):
                start, end = m.span()
                head = m.group().split()[0]
                if " " in m.group() and (head.lower() in NOT_A_NAME_WORD or head.lower() in TITLES):
                    start += len(head) + 1
                if all(end <= f.start or start >= f.end for f in fs):
                    fs.append(Finding("PERSON", start, end, 0.5))

    # pseudonymisation

    def anonymize_example(self, fields: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        """The example with every finding replaced by its surrogate; lists (passages) keep their length
        and order, values that are not text pass through. One value gets one surrogate in every field."""
        slots: list[tuple[str, int | None]] = []
        texts: list[str] = []
        for name, value in fields.items():
            if isinstance(value, str):
                slots.append((name, None))
                texts.append(value)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, str):
                        slots.append((name, i))
                        texts.append(item)
        findings = self.detect_example(texts)
        mentions = [
            (f.entity_type, t[f.start : f.end]) for t, fs in zip(texts, findings, strict=True) for f in fs
        ]
        plan = _ExampleSurrogates(self, {m for _, m in mentions})
        # Names first: their surrogates shape the emails built from them ("anna.berg@…").
        for entity_type, mention in sorted(mentions, key=lambda m: m[0] != "PERSON"):
            plan.surrogate(entity_type, mention)
        self.stats.update(t for t, _ in mentions)

        out_texts = []
        for text, fs in zip(texts, findings, strict=True):
            operators = {
                t: OperatorConfig("custom", {"lambda": lambda v, t=t: plan.surrogate(t, v)})
                for t in {f.entity_type for f in fs}
            }
            spans = [AnonymizerSpan(f.entity_type, f.start, f.end, f.score) for f in fs]
            out_texts.append(
                self._engine.anonymize(text, spans, operators, merge_entities_with_spaces=False).text
            )
        if self.vault:
            self.vault.add(plan.vault_entries())

        out: dict[str, str | list[str]] = {
            k: (list(v) if isinstance(v, list) else v) for k, v in fields.items()
        }
        for (name, index), text in zip(slots, out_texts, strict=True):
            if index is None:
                out[name] = text
            else:
                out[name][index] = text  # type: ignore[index]
        return out

    def anonymize(self, text: str) -> str:
        """One text on its own: ``anonymize_example({"text": text})["text"]``."""
        return str(self.anonymize_example({"text": text})["text"])

    def deanonymize(self, text: str) -> str:
        """Undo the pseudonyms recorded in the vault. Needs ``vault_path``."""
        if not self.vault:
            raise ConfigError("deanonymize needs the vault: create the Anonymizer with vault_path=…")
        return self.vault.deanonymize(text)

    def draws(self, kind: str, key: str, attempt: int = 0) -> _Draws:
        """The random stream for one value: an HMAC of it under the secret."""
        return _Draws(hmac.new(self._key, f"{kind}\x1f{key}\x1f{attempt}".encode(), hashlib.sha256).digest())


class _ExampleSurrogates:
    """The surrogates of one example: one per value (whatever its layout in each mention) and one per
    word of a name, none equal to an original of the example or to another value's surrogate, and —
    with a vault — none already standing for a different original."""

    def __init__(self, anonymizer: Anonymizer, originals: set[str]) -> None:
        self.a = anonymizer
        self.originals = originals | {w for o in originals for w in _NAME_TOKEN.findall(o)}
        self.names: dict[str, str] = {}  # word of a name, folded and lower-cased → its surrogate
        self.values: dict[tuple[str, str], str] = {}  # (type, normalised value) → canonical surrogate
        self.rendered: dict[str, tuple[str, str]] = {}  # surrogate as written → (original, type)

    def surrogate(self, entity_type: str, mention: str) -> str:
        if entity_type == "PERSON":
            out, pos = [], 0
            tokens = list(_NAME_TOKEN.finditer(mention))
            for i, m in enumerate(tokens):
                out.append(
                    mention[pos : m.start()] + self._name_word(m.group(), is_last=i == len(tokens) - 1)
                )
                pos = m.end()
            return "".join(out) + mention[pos:]
        key = (entity_type, _normalise_value(entity_type, mention))
        if key not in self.values:
            taken = set(self.values.values())
            for attempt in range(50):
                canonical = self._canonical(entity_type, key[1], mention, attempt)
                written = self._render(entity_type, mention, canonical)
                if canonical not in taken and written not in self.originals and self._free(written, mention):
                    break
            self.values[key] = canonical
        written = self._render(entity_type, mention, self.values[key])
        self.rendered[written] = (mention, entity_type)
        return written

    def _free(self, pseudonym: str, original: str) -> bool:
        vault = self.a.vault
        clash = vault.original_of(pseudonym) if vault else None
        return clash is None or clash == original

    def _name_word(self, word: str, *, is_last: bool) -> str:
        """One word of a name → a census name of the same role (female or male first name, surname),
        the same every time within the example ("Berg", "BERG") and, for a given secret, everywhere. A
        word the census does not know takes its role from its place: the last word of a name is the
        surname."""
        if len(word) == 1 or word.lower() in PARTICLES or word.lower() in TITLES:
            return word
        key = fold(word).lower()
        if key not in self.names:
            role = self.a.names.role(word)
            if role is None:
                role = "last" if is_last else ("female", "male")[self.a.draws("PERSON", key).below(2)]
            taken = {n.lower() for n in self.names.values()} | {o.lower() for o in self.originals}
            for attempt in range(50):
                candidate = self.a.draws("PERSON", f"{role}:{key}", attempt).choice(self.a._pools[role])
                if candidate.lower() not in taken and self._free(candidate.capitalize(), word):
                    break
            self.names[key] = candidate.capitalize()
        written = self.names[key].upper() if word.isupper() and len(word) > 1 else self.names[key]
        self.rendered[written] = (word, "PERSON")
        return written

    def _canonical(self, entity_type: str, key: str, mention: str, attempt: int) -> str:
        draws = self.a.draws(entity_type, key, attempt)
        if entity_type == "PHONE_NUMBER":
            return _keep_format(key, draws, keep_digits=2)  # the country or area code stays
        if entity_type == "CREDIT_CARD":
            return _card(key, draws)
        if entity_type == "IBAN_CODE":
            return _iban(key, draws)
        if entity_type == "EMAIL_ADDRESS":
            return self._email(key, draws)
        if entity_type == "IP_ADDRESS":
            return _ip(key, draws)
        if entity_type == "URL":
            return f"https://example.org/{draws.below(16**8):08x}"
        if entity_type == "DATE_OF_BIRTH":
            return _date(mention, draws)
        if entity_type == "STREET_ADDRESS":
            return self._address(mention, draws)
        return _keep_format(mention, draws)  # identifiers: same layout, checksum not kept

    @staticmethod
    def _render(entity_type: str, mention: str, canonical: str) -> str:
        if entity_type in ("PHONE_NUMBER", "CREDIT_CARD"):
            return _pour(mention, canonical)
        if entity_type == "IBAN_CODE" and re.search(r"\s", mention.strip()):
            return " ".join(canonical[i : i + 4] for i in range(0, len(canonical), 4))
        return canonical

    def _email(self, key: str, draws: _Draws) -> str:
        """An example.org address; when its local part is made of the words of a name found in the
        example ("anna.berg@…"), it is made of their surrogates, so the text stays coherent."""
        local, _, _ = key.partition("@")
        words = {w: s.lower() for w, s in self.names.items()}
        pieces = re.split(r"([._-])", local)
        if any(p.isalpha() and p in words for p in pieces):
            local = "".join(
                words.get(p, p if not p.isalpha() else draws.choice(self.a._pools["last"]).lower())
                for p in pieces
            )
            local = re.sub(r"\d", lambda _: draws.choice(string.digits), local)
        else:
            first = draws.choice(self.a._pools[draws.choice(["female", "male"])])
            local = f"{first}.{draws.choice(self.a._pools['last'])}".lower()
        return f"{local}@{draws.choice(['example.org', 'example.com', 'example.net'])}"

    def _address(self, mention: str, draws: _Draws) -> str:
        """Street and place names from the census surnames, numbers and postcode letters redrawn; street
        words ("Road", "rue", "-straße") kept, so the surrogate still reads as an address."""
        pool = self.a._pools["last"]

        def word(m: re.Match[str]) -> str:
            w = m.group()
            if _STREET_WORD.match(w) or not w[0].isupper():
                return w
            if w.isupper() and len(w) <= 3:  # postcode letters, state code
                return _keep_format(w, draws)
            suffix = _STREET_SUFFIX.search(w)
            return draws.choice(pool).capitalize() + (suffix.group(1) if suffix else "")

        out = re.sub(r"[^\W\d_]+", word, mention)
        # House numbers and postcodes: random digits, no leading zero.
        return re.sub(r"\d+", lambda m: str(1 + draws.below(9)) + _keep_format(m.group()[1:], draws), out)

    def vault_entries(self) -> dict[str, tuple[str, str]]:
        return dict(self.rendered)


__all__ = [
    "DEFAULT_ENTITIES",
    "OPTIONAL_ENTITIES",
    "Anonymizer",
    "CensusNameRecognizer",
    "Finding",
    "build_analyzer",
    "census_names",
]
