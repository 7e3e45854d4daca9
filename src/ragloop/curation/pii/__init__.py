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

The package, one idea per module, in the order detection then replacement runs:

- ``entities.py``: the entity types looked for, and a Finding;
- ``census.py``: the census name lists; ``name_cues.py``: the words and cues around a name;
  ``name_recognizer.py``: CensusNameRecognizer, PERSON from those two;
- ``pattern_recognizers.py``: every recognizer that works from a value's shape (email, phone, address…);
- ``analyzer.py``: build_analyzer, the Presidio AnalyzerEngine with all of them registered;
- ``surrogates.py``: the surrogate of each value; ``vault.py``: the optional mapping back;
- ``anonymizer.py``: Anonymizer, which detects and replaces across the fields of an example.
"""

from __future__ import annotations

from ragloop.curation.pii.analyzer import SCORE_THRESHOLD, TokenizerNlpEngine, build_analyzer
from ragloop.curation.pii.anonymizer import Anonymizer
from ragloop.curation.pii.census import NameLists, census_names, fold
from ragloop.curation.pii.entities import DEFAULT_ENTITIES, LANGUAGE, OPTIONAL_ENTITIES, Finding
from ragloop.curation.pii.name_recognizer import CensusNameRecognizer
from ragloop.curation.pii.pattern_recognizers import (
    PHONE_REGIONS,
    DateOfBirthRecognizer,
    FrNirRecognizer,
    NhsNumberRecognizer,
    OfflineEmailRecognizer,
    PhoneNumberRecognizer,
    StreetAddressRecognizer,
    pattern_recognizers,
)
from ragloop.curation.pii.vault import Vault

__all__ = [
    "DEFAULT_ENTITIES",
    "LANGUAGE",
    "OPTIONAL_ENTITIES",
    "PHONE_REGIONS",
    "SCORE_THRESHOLD",
    "Anonymizer",
    "CensusNameRecognizer",
    "DateOfBirthRecognizer",
    "Finding",
    "FrNirRecognizer",
    "NameLists",
    "NhsNumberRecognizer",
    "OfflineEmailRecognizer",
    "PhoneNumberRecognizer",
    "StreetAddressRecognizer",
    "TokenizerNlpEngine",
    "Vault",
    "build_analyzer",
    "census_names",
    "fold",
    "pattern_recognizers",
]
