"""The Anonymizer, the PII stage's entry point: it runs the analyzer over the fields of a training example
(or of every example of a dataset), resolves overlapping findings, adds the names that identifiers give
away, carries a name found once to its other mentions, and replaces each finding with its surrogate
through Presidio's AnonymizerEngine."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from pathlib import Path

from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as AnonymizerSpan

from ragloop.curation.pii.analyzer import build_analyzer
from ragloop.curation.pii.census import census_names
from ragloop.curation.pii.entities import DEFAULT_ENTITIES, LANGUAGE, Finding
from ragloop.curation.pii.identifier_names import names_from_identifiers
from ragloop.curation.pii.name_recognizer import CensusNameRecognizer
from ragloop.curation.pii.propagation import NameIndex
from ragloop.curation.pii.surrogates import Draws, ExampleSurrogates
from ragloop.curation.pii.vault import Vault
from ragloop.errors import ConfigError

_MEMO_MIN_CHARS = 400  # fields at least this long (passages) are detected alone and memoised
_MEMO_SIZE = 20_000
_FIELD_SEPARATOR = "\n\n"


class Anonymizer:
    """Find personal data in the fields of a training example and replace it with consistent surrogates.

    ``entities``: what to look for (default DEFAULT_ENTITIES; OPTIONAL_ENTITIES may be added).
    ``secret``: key of the HMAC that picks surrogates; the same secret gives the same pseudonyms across
    runs. Without one a random key is drawn, so pseudonyms are consistent only within this Anonymizer
    (a fixed default key would let anyone re-derive them from a list of candidate names).
    ``vault_path``: keep the pseudonym → original mapping in that SQLite file so ``deanonymize`` can undo
    it. ``ner``: see build_analyzer. ``stats`` counts the entities replaced, per type; it never holds a
    value. ``many_origins=False`` finds people as before issue 15 (census lists and cues only: no names of
    other origins, no names given away by an identifier, no propagation across examples); it is kept to
    measure what the new recognizers cost (bench/curation.py), not for building datasets.
    """

    def __init__(
        self,
        entities: list[str] | None = None,
        vault_path: Path | None = None,
        secret: str | None = None,
        ner: str = "offline",
        *,
        many_origins: bool = True,
    ) -> None:
        self.entities = list(entities or DEFAULT_ENTITIES)
        self.many_origins = many_origins
        self.analyzer = build_analyzer(ner, many_origins=many_origins)
        self.recognizer = next(
            r for r in self.analyzer.registry.recognizers if isinstance(r, CensusNameRecognizer)
        )
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
        self._roles: dict[str, str] = {}  # name word key -> "first" | "last", across the examples at hand

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
        if self.many_origins and "PERSON" in self.entities:
            chosen += names_from_identifiers(text, chosen, self.recognizer)
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
        ("Berg replied", "Lars Berg", "Sanchez" for "Sánchez"); see propagation.py."""
        index = NameIndex(self.recognizer)
        index.add(texts, findings)
        for text, fs in zip(texts, findings, strict=True):
            index.mark(text, fs, in_example=True)

    # pseudonymisation

    def anonymize_example(self, fields: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        """The example with every finding replaced by its surrogate; lists (passages) keep their length
        and order, values that are not text pass through. One value gets one surrogate in every field."""
        return self.anonymize_examples([fields])[0]

    def anonymize_examples(
        self, examples: list[dict[str, str | list[str]]]
    ) -> list[dict[str, str | list[str]]]:
        """Every example of a dataset, as ``anonymize_example`` each, plus: a full name found in one
        example is replaced wherever it appears in the others, and so is a part of it that is not an
        ordinary word ("Agyekum" yes, "Comfort" no), each with the same pseudonym as in its own example."""
        prepared = [_texts_of(fields) for fields in examples]
        findings = [self.detect_example(texts) for _, texts in prepared]
        self._roles = {}
        if self.many_origins and len(examples) > 1 and "PERSON" in self.entities:
            index = NameIndex(self.recognizer)
            for (_, texts), fs in zip(prepared, findings, strict=True):
                index.add(texts, fs)
            for (_, texts), fs in zip(prepared, findings, strict=True):
                for text, text_findings in zip(texts, fs, strict=True):
                    index.mark(text, text_findings, in_example=False)
            self._roles = index.parts
        try:
            return [
                self._replace(fields, slots, texts, fs)
                for fields, (slots, texts), fs in zip(examples, prepared, findings, strict=True)
            ]
        finally:
            self._roles = {}

    def _replace(
        self,
        fields: dict[str, str | list[str]],
        slots: list[tuple[str, int | None]],
        texts: list[str],
        findings: list[list[Finding]],
    ) -> dict[str, str | list[str]]:
        mentions = [
            (f.entity_type, t[f.start : f.end]) for t, fs in zip(texts, findings, strict=True) for f in fs
        ]
        plan = ExampleSurrogates(self, {m for _, m in mentions})
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

    def draws(self, kind: str, key: str, attempt: int = 0) -> Draws:
        """The random stream for one value: an HMAC of it under the secret."""
        return Draws(hmac.new(self._key, f"{kind}\x1f{key}\x1f{attempt}".encode(), hashlib.sha256).digest())


def _texts_of(fields: dict[str, str | list[str]]) -> tuple[list[tuple[str, int | None]], list[str]]:
    """The texts of an example, each with its slot: (field, None) or (field, index in the list)."""
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
    return slots, texts
