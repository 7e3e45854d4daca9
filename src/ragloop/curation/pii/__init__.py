"""Pseudonymise personal data before an interaction becomes training data (curation, stage 5).

Detection is Presidio's AnalyzerEngine. Its default NLP engine needs a trained spaCy model, which an
air-gapped install does not have, so the default here (``ner="offline"``) runs Presidio's own pattern
recognizers (email, phone, IBAN, card, IP, national IDs…) on spaCy's rule-based tokenizer, which ships
with spaCy and needs no model, plus three recognizers written for ragloop: PERSON from the US Census 1990
name lists (the ``names`` package), Faker's name lists of many origins, person cues and the shape of a
name, STREET_ADDRESS and DATE_OF_BIRTH from patterns, and FR_NIR. A user
who has a spaCy or transformers NER model can plug it in (``ner="spacy:en_core_web_lg"``).

Every found value is replaced by a realistic surrogate of the same kind (a census name, an example.org
email, an IBAN with valid check digits…) chosen by an HMAC of the value under a secret: the same value
gets the same surrogate in every field of an example and in every example anonymised with that secret,
so datasets stay reproducible and co-references ("Anna Berg" … "Ms Berg") survive. The mapping back to
the originals is kept only if asked for (``vault_path``). Nothing here logs a value, found or replaced.

The package, one idea per module, in the order detection then replacement runs:

- ``entities.py``: the entity types looked for, and a Finding;
- ``census.py``: the census name lists; ``name_lists.py``: given and family names of many origins
  (Faker's lists); ``english_words.py``: which words are ordinary English words; ``name_cues.py``: the
  words and cues around a name; ``places.py``: towns and countries (GeoNames), which are no person;
  ``name_recognizer.py``: CensusNameRecognizer, PERSON from those;
- ``pattern_recognizers.py``: every recognizer that works from a value's shape (email, phone, address…);
- ``analyzer.py``: build_analyzer, the Presidio AnalyzerEngine with all of them registered;
- ``identifier_names.py``: names an email or phone number gives away; ``propagation.py``: a name found
  once, found everywhere in the example and the dataset;
- ``surrogates.py``: the surrogate of each value; ``vault.py``: the optional mapping back;
- ``anonymizer.py``: Anonymizer, which detects and replaces across the fields of an example.

The names below are imported on first use: Presidio takes seconds to import, and a caller that only
reads ``RECOGNIZER_VERSION`` (``ragloop dataset list``) should not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "SCORE_THRESHOLD": "analyzer",
    "TokenizerNlpEngine": "analyzer",
    "build_analyzer": "analyzer",
    "Anonymizer": "anonymizer",
    "NameLists": "census",
    "census_names": "census",
    "fold": "census",
    "DEFAULT_ENTITIES": "entities",
    "LANGUAGE": "entities",
    "OPTIONAL_ENTITIES": "entities",
    "RECOGNIZER_VERSION": "entities",
    "Finding": "entities",
    "CensusNameRecognizer": "name_recognizer",
    "OriginNames": "name_lists",
    "name_key": "name_lists",
    "origin_names": "name_lists",
    "PHONE_REGIONS": "pattern_recognizers",
    "DateOfBirthRecognizer": "pattern_recognizers",
    "FrNirRecognizer": "pattern_recognizers",
    "NhsNumberRecognizer": "pattern_recognizers",
    "OfflineEmailRecognizer": "pattern_recognizers",
    "PhoneNumberRecognizer": "pattern_recognizers",
    "StreetAddressRecognizer": "pattern_recognizers",
    "pattern_recognizers": "pattern_recognizers",
    "Vault": "vault",
}
__all__ = [
    "Anonymizer",
    "CensusNameRecognizer",
    "DEFAULT_ENTITIES",
    "DateOfBirthRecognizer",
    "Finding",
    "FrNirRecognizer",
    "LANGUAGE",
    "NameLists",
    "NhsNumberRecognizer",
    "OPTIONAL_ENTITIES",
    "OfflineEmailRecognizer",
    "OriginNames",
    "PHONE_REGIONS",
    "PhoneNumberRecognizer",
    "RECOGNIZER_VERSION",
    "SCORE_THRESHOLD",
    "StreetAddressRecognizer",
    "TokenizerNlpEngine",
    "Vault",
    "build_analyzer",
    "census_names",
    "fold",
    "name_key",
    "origin_names",
    "pattern_recognizers",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from ragloop.curation.pii.analyzer import SCORE_THRESHOLD, TokenizerNlpEngine, build_analyzer
    from ragloop.curation.pii.anonymizer import Anonymizer
    from ragloop.curation.pii.census import NameLists, census_names, fold
    from ragloop.curation.pii.entities import (
        DEFAULT_ENTITIES,
        LANGUAGE,
        OPTIONAL_ENTITIES,
        RECOGNIZER_VERSION,
        Finding,
    )
    from ragloop.curation.pii.name_lists import OriginNames, name_key, origin_names
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
