"""PII pseudonymisation, offline: recall on seeded records, false positives on traps, no identifier left
behind, consistent and reversible pseudonyms. Presidio is imported once per module (it is slow to
import: it pulls in torch and transformers)."""

from __future__ import annotations

import json
import logging
import re
import socket
import stat
import time
from collections import Counter
from pathlib import Path

import pytest

from ragloop.curation import pii
from ragloop.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "curation"


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


RECORDS = _load("pii_seeded.jsonl")
# Written after the recognizers were tuned on pii_seeded.jsonl and measured once (docs/curation.md):
# how the method does on names and layouts it was not shaped on.
HELD_OUT = _load("pii_heldout.jsonl")
SEEDED = [r for r in RECORDS if r["pii"]]
TRAPS = [r for r in RECORDS if not r["pii"]]
PATTERN_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "CREDIT_CARD")
# Each one discussed in docs/curation.md; found on the trap records when this test was written: none.
MAX_TRAP_FALSE_POSITIVES = 2


@pytest.fixture(scope="module")
def anonymizer() -> pii.Anonymizer:
    return pii.Anonymizer(secret="test-secret")


def _covered(item: dict, findings: list, text: str, same_type: bool = True) -> bool:
    """Every letter and digit of the seeded value lies inside a finding (of its type)."""
    left = set(range(item["start"], item["end"]))
    for f in findings:
        if not same_type or f.entity_type == item["type"]:
            left -= set(range(f.start, f.end))
    return all(not text[i].isalnum() for i in left)


def recall_by_type(anonymizer: pii.Anonymizer, records: list[dict] = SEEDED) -> tuple[Counter, Counter]:
    found, total = Counter(), Counter()
    for r in records:
        findings = anonymizer.detect(r["text"])
        for item in r["pii"]:
            total[item["type"]] += 1
            found[item["type"]] += _covered(item, findings, r["text"])
    return found, total


def test_fixture_has_the_records_the_docs_describe():
    assert len(SEEDED) >= 60 and len(TRAPS) >= 30
    kinds = Counter(r["kind"] for r in SEEDED)
    assert set(kinds) == {"support_ticket", "medical_note", "bank_email", "legal_letter"}
    for r in SEEDED:
        for item in r["pii"]:
            assert r["text"][item["start"] : item["end"]] == item["value"]


def test_recall_per_entity_type(anonymizer):
    found, total = recall_by_type(anonymizer)
    patterns = sum(found[t] for t in PATTERN_TYPES) / sum(total[t] for t in PATTERN_TYPES)
    assert patterns >= 0.95, {t: (found[t], total[t]) for t in PATTERN_TYPES}
    for t in PATTERN_TYPES:
        assert found[t] / total[t] >= 0.95, (t, found[t], total[t])
    assert found["PERSON"] / total["PERSON"] >= 0.85, (found["PERSON"], total["PERSON"])
    assert sum(found.values()) / sum(total.values()) >= 0.9


def test_held_out_records_stay_where_they_were_measured(anonymizer):
    # Regression guard at the measured level, not a target: 13/18 PERSON with the census alone, 17/18
    # with the names of many origins of issue 15 (docs/curation.md).
    found, total = recall_by_type(anonymizer, [r for r in HELD_OUT if r["pii"]])
    assert sum(found[t] for t in PATTERN_TYPES) == sum(total[t] for t in PATTERN_TYPES) - 1
    assert found["PERSON"] >= 17 and sum(found.values()) >= 36, (found, total)
    traps = [r for r in HELD_OUT if not r["pii"]]
    assert sum(len(anonymizer.detect(r["text"])) for r in traps) <= 1  # "Morgan Stanley"


def test_false_positives_on_trap_records(anonymizer):
    # Article numbers, amounts, regulation numbers, case numbers, dates, capitalised "May", "Will",
    # "Grace", "Victoria Station", "Santa Clara", invoice and order numbers.
    false_positives = [(r["id"], f.entity_type) for r in TRAPS for f in anonymizer.detect(r["text"])]
    assert len(false_positives) <= MAX_TRAP_FALSE_POSITIVES, false_positives


def test_no_seeded_identifier_survives_anonymization(anonymizer):
    leaks = []
    for r in SEEDED:
        out = anonymizer.anonymize_example({"text": r["text"]})["text"]
        leaks += [(r["id"], item["type"]) for item in r["pii"] if item["value"] in out]
    assert leaks == []


def test_traps_come_out_unchanged(anonymizer):
    changed = [r["id"] for r in TRAPS if anonymizer.anonymize(r["text"]) != r["text"]]
    assert len(changed) <= MAX_TRAP_FALSE_POSITIVES, changed


EXAMPLE = {
    "question": "What did Dr. Anna Berg write to anna.berg@clinic.de about IBAN DE89 3704 0044 0532 0130 00?",
    "passages": [
        "Anna Berg confirmed the transfer to DE89370400440532013000. Berg signed it.",
        "Article 17 gives the data subject the right to erasure.",
    ],
    "answer": "Ms. Berg confirmed the transfer [1]. She can be called on +44 7911 123456.",
    "interaction_id": 42,
}


def test_same_value_same_pseudonym_across_fields_and_layouts(anonymizer):
    out = anonymizer.anonymize_example(EXAMPLE)
    assert out["interaction_id"] == 42 and len(out["passages"]) == 2
    assert out["passages"][1] == EXAMPLE["passages"][1]
    q, p, a = out["question"], out["passages"][0], out["answer"]
    first, last = re.search(r"Dr\. (\w+) (\w+)", q).groups()
    assert f"{first} {last} confirmed" in p and f"Ms. {last} confirmed" in a and f"{last} signed" in p
    # The email is rebuilt from the name's surrogate; the IBAN keeps each mention's layout.
    assert f"{first.lower()}.{last.lower()}@example." in q
    iban_spaced = re.search(r"DE\d\d(?: \d{4}){4} \d\d", q).group()
    assert iban_spaced.replace(" ", "") in p
    for value in ("Anna", "Berg", "anna.berg@clinic.de", "DE89", "7911 123456"):
        assert value not in json.dumps(out)


def test_surrogates_are_realistic_and_valid():
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, IbanRecognizer

    a = pii.Anonymizer(secret="s", entities=["IBAN_CODE", "CREDIT_CARD", "IP_ADDRESS", "EMAIL_ADDRESS"])
    text = "IBAN GB82 WEST 1234 5698 7654 32, card 4111 1111 1111 1111, IP 81.174.52.203, mail x@corp.com"
    out = a.anonymize(text)
    iban = re.search(r"GB\d\d \w{4}(?: \d{4}){3} \d\d", out).group()
    card = re.search(r"\d{4} \d{4} \d{4} \d{4}", out).group()
    assert IbanRecognizer().validate_result(iban) and iban != "GB82 WEST 1234 5698 7654 32"
    assert CreditCardRecognizer().validate_result(card) and card != "4111 1111 1111 1111"
    assert re.search(r"IP (192\.0\.2|198\.51\.100|203\.0\.113)\.\d+", out)
    assert re.search(r"@example\.(org|com|net)", out)


def test_pseudonyms_are_deterministic_per_secret(anonymizer):
    again = pii.Anonymizer(secret="test-secret").anonymize_example(EXAMPLE)
    assert again == anonymizer.anonymize_example(EXAMPLE)
    assert pii.Anonymizer(secret="another").anonymize_example(EXAMPLE) != again


def test_vault_is_opt_in_private_and_reversible(tmp_path):
    vault = tmp_path / "vault.sqlite"
    a = pii.Anonymizer(secret="v", vault_path=vault)
    out = a.anonymize_example(EXAMPLE)
    assert stat.S_IMODE(vault.stat().st_mode) == 0o600
    assert a.deanonymize(out["answer"]) == EXAMPLE["answer"]
    assert a.deanonymize(out["passages"][0]) == EXAMPLE["passages"][0]
    with pytest.raises(ConfigError, match="vault_path"):
        pii.Anonymizer(secret="v").deanonymize(out["answer"])


def test_stats_count_types_and_nothing_is_logged(anonymizer, caplog):
    before = anonymizer.stats.copy()
    with caplog.at_level(logging.DEBUG):
        anonymizer.anonymize_example(EXAMPLE)
    added = anonymizer.stats - before
    assert added["PERSON"] >= 4 and added["IBAN_CODE"] == 2 and added["EMAIL_ADDRESS"] == 1
    logged = " ".join(r.getMessage() for r in caplog.records)
    for value in ("Berg", "anna.berg", "DE89", "7911"):
        assert value not in logged


def test_detection_never_touches_the_network(anonymizer, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during PII detection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    findings = anonymizer.detect("Write to someone.new@brand-new-domain.co.uk or visit 10.0.0.7")
    assert {f.entity_type for f in findings} == {"EMAIL_ADDRESS", "IP_ADDRESS"}


def test_throughput_on_short_records(anonymizer):
    records = [{"text": r["text"]} for r in RECORDS]
    anonymizer.anonymize_example(records[0])
    start = time.perf_counter()
    for r in records:
        anonymizer.anonymize_example(r)
    per_second = len(records) / (time.perf_counter() - start)
    # ~700/s on the 2-core dev machine (docs/curation.md); the bound leaves room for a loaded CI box.
    assert per_second >= 100, per_second


def test_ner_choice_is_validated_and_never_downloads():
    with pytest.raises(ConfigError, match="unknown NER"):
        pii.build_analyzer("stanza")
    with pytest.raises(ConfigError, match="not installed"):
        pii.build_analyzer("spacy:en_core_web_nonexistent")
    with pytest.raises(ConfigError, match="config.json"):
        pii.build_analyzer("transformers:/nonexistent/model")
    with pytest.raises(ConfigError, match="unknown PII entities"):
        pii.Anonymizer(entities=["SHOE_SIZE"])


def test_spacy_pipeline_from_a_folder_is_wired_in(tmp_path):
    import spacy  # presidio-analyzer's own dependency, and the offline engine's tokenizer

    spacy.blank("en").to_disk(tmp_path / "pipeline")  # no NER inside: checks the wiring, offline
    analyzer = pii.build_analyzer(f"spacy:{tmp_path / 'pipeline'}")
    found = analyzer.analyze("Dr. Anna Berg, anna.berg@clinic.de", language="en")
    assert {r.entity_type for r in found} >= {"PERSON", "EMAIL_ADDRESS"}


def test_transformers_model_from_a_folder_is_wired_in(tmp_path):
    import transformers

    # A tiny random token-classifier: checks the wiring (local folder, no hub, CPU), not the quality.
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "anna", "berg", "wrote", "to", "the", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "O", 1: "B-PER", 2: "I-PER"},
        label2id={"O": 0, "B-PER": 1, "I-PER": 2},
    )
    transformers.BertForTokenClassification(config).save_pretrained(tmp_path / "ner")
    tokenizer.save_pretrained(tmp_path / "ner")
    analyzer = pii.build_analyzer(f"transformers:{tmp_path / 'ner'}")
    assert "HuggingFaceNerRecognizer" in [r.name for r in analyzer.registry.recognizers]
    found = analyzer.analyze("Anna Berg wrote to the DPO.", language="en")
    assert any(r.entity_type == "PERSON" for r in found)


def test_person_recognizer_reasons():
    names = pii.CensusNameRecognizer()

    def spans(text: str) -> list[str]:
        return [text[s:e] for s, e, _ in names.find(text)]

    assert spans("Yesterday Mr. Smith met Dr. Anna Berg.") == ["Smith", "Anna Berg"]
    assert spans("Dear Katarzyna,\nthanks.") == ["Katarzyna"]
    assert spans("Patient: Nowak, Katarzyna. Stable.") == ["Nowak, Katarzyna"]
    assert spans("Our admin Priya Patel called.") == ["Priya Patel"]
    assert spans("May I ask? Will Member States comply? Grace periods apply; Mark the tube.") == []
    assert spans("Victoria Station and the Grace Hospital are near Santa Clara.") == []
    assert spans("I spoke with Mark Johnson and Rebecca Hall.") == ["Mark Johnson", "Rebecca Hall"]
