"""The analyzer factory: one Presidio AnalyzerEngine with the pattern and name recognizers registered, on
an NLP engine that needs no download (spaCy's rule-based tokenizer), or on an installed spaCy or
transformers model when the user names one."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine

from ragloop.curation.pii.entities import LANGUAGE
from ragloop.curation.pii.name_recognizer import CensusNameRecognizer
from ragloop.curation.pii.pattern_recognizers import pattern_recognizers
from ragloop.errors import ConfigError

# Presidio's scores: patterns validated by a checksum score 1.0, names 0.6-0.85, weak patterns (SSN,
# passport) reach 0.4 only with a context word nearby ("SSN", "passport").
SCORE_THRESHOLD = 0.4


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


def build_analyzer(ner: str = "offline", *, many_origins: bool = True) -> AnalyzerEngine:
    """A Presidio AnalyzerEngine for English text, built once per Anonymizer.

    ``ner``: ``"offline"`` (patterns + census names, no model), ``"spacy:<package or path>"`` (adds the
    PERSON/LOCATION/… entities of an installed spaCy pipeline) or ``"transformers:<local folder>"``
    (adds a Hugging Face token-classification model). A model is never downloaded: a missing one is a
    ConfigError that says how to install it. ``many_origins``: see CensusNameRecognizer.
    """
    kind, _, model = ner.partition(":")
    # Presidio's debug messages quote the words around each finding: raw PII. Keep them off whatever
    # level the application logs at.
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in pattern_recognizers():
        registry.add_recognizer(recognizer)
    registry.add_recognizer(CensusNameRecognizer(many_origins=many_origins))
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
