"""Every recognizer that works from the shape of a value (curation, stage 5): Presidio's predefined ones,
some made stricter or offline, and the ones written for ragloop (street addresses, dates of birth,
French NIR). ``pattern_recognizers()`` lists what the analyzer registers besides names."""

from __future__ import annotations

import re

import phonenumbers
import tldextract
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts
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

from ragloop.curation.pii.entities import LANGUAGE

# Phone numbers written in national format ("030 1234567") are read as numbers of these countries;
# numbers in international format ("+49 30 1234567") are found whatever the list.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IE")

# Presidio compiles patterns case-insensitively; (?-i:…) keeps street and city names capitalised.
_CAP = r"(?-i:[A-ZÀ-ÖØ-Þ][a-zà-öø-ÿ'’-]+)"
STREET_TYPE = (
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
ROMANCE_STREET = (
    r"(?:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai|calle|avenida|plaza|paseo|carrer|via"
    r"|viale|piazza|corso|largo|rua|travessa)"
)
_ADDRESS_PATTERNS = [
    # 221B Baker Street, London NW1 6XE / 1600 Pennsylvania Avenue NW, Washington, DC 20500
    Pattern(
        "number street (city postcode)",
        r"\b\d{1,5}[A-Za-z]?,?[ \t]+(?:" + _CAP + r"[ \t]+){1,3}" + STREET_TYPE + r"(?![\w])"
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
        r"(?:\b\d{1,4}(?:[ \t]?(?:bis|ter))?,?[ \t]+)?\b" + ROMANCE_STREET + r"[ \t]+(?:(?:de|del|della|di|da"
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
