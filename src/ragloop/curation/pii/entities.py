"""What the PII stage looks for and what it reports (curation, stage 5): the entity types, the one language
the recognizers are registered for, and a Finding. Every other module of this package reads these."""

from __future__ import annotations

from dataclasses import dataclass

LANGUAGE = "en"
# The version of what counts as personal data here, recorded with every dataset built (DatasetVersion.
# pii_recognizer): bump it whenever a change finds more, so `ragloop dataset list` can say which datasets
# were built with an older one. 1: census names and patterns; 2: names of many origins, person contexts,
# names given away by identifiers, propagation across a dataset (issue 15); 3: known places (GeoNames) are
# no person, a given name that is a word opens a name before an unknown name-shaped word and a verb.
RECOGNIZER_VERSION = 3
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


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its type, its [start, end) span in the text and Presidio's score."""

    entity_type: str
    start: int
    end: int
    score: float
