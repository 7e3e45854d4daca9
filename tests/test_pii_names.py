"""Names of many origins (issue 15): people who introduce themselves, file requests or stand beside their
email never reach a training export under their real name; a name found in one example is replaced in
every other; a given name that is also a word stays where it is the word; datasets built with older
recognizers are marked. The names here are this file's own (none is in the held-out set)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.curation import pii
from ragloop.datasets.export import FORMATS
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, ModelVersion

# Ten people of ten origins: (full name, given name used alone, surname used alone, email, phone, IBAN).
PEOPLE = [
    ("Caoimhe Ní Dhomhnaill", "Caoimhe", "Dhomhnaill", "caoimhe.nidhomhnaill@postbox.ie", "+353 87 412 9930",
     "IE29AIBK93115212345678"),
    ("Barış Çelikkol", "Barış", "Çelikkol", "b.celikkol@mailnet.com.tr", "+90 533 271 44 18",
     "TR330006100519786457841326"),
    ("Mercy Owusu-Ansah", "Mercy", "Owusu-Ansah", "mercy.owusuansah@ghmail.com", "+233 24 418 0192",
     "GB82WEST12345698765432"),
    ("Ifeoma Nwachukwu", "Ifeoma", "Nwachukwu", "ifeoma.n@naijamail.ng", "+234 803 417 0147",
     "DE89370400440532013000"),
    ("Trịnh Bảo Ngọc", "Ngọc", "Trịnh", "ngoc.trinh@vnmail.vn", "+84 90 418 1234",
     "FR1420041010050500013M02606"),
    ("Grzegorz Brzęczyszczykiewicz", "Grzegorz", "Brzęczyszczykiewicz", "g.brzeczyszczykiewicz@poczta.pl",
     "+48 601 418 321", "PL61109010140000071219812874"),
    ("Øystein Kvalheim", "Øystein", "Kvalheim", "oystein.kvalheim@epost.no", "+47 912 41 403",
     "NO9386011117947"),
    ("Vlasta Dvořáková", "Vlasta", "Dvořáková", "vlasta.dvorakova@seznam.cz", "+420 601 418 789",
     "CZ6508000000192000145399"),
    ("Anirudh Venkataraman", "Anirudh", "Venkataraman", "anirudh.v@inmail.in", "+91 98450 41812",
     "GB29NWBK60161331926819"),
    ("Takumi Hoshino", "Takumi", "Hoshino", "t.hoshino@jpmail.jp", "+81 90 4187 0123",
     "DE44500105175407324931"),
]  # fmt: skip
PARTICLES = {"ní", "nic", "ó", "al", "de", "van"}
GDPR_XML = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "gdpr"
    / "gdpr-consolidated-with-corrected-preamble-en.xml"
)


def _name_tokens(full: str) -> list[str]:
    return [t for t in re.split(r"[\s-]+", full) if t.lower() not in PARTICLES]


def _left(text: str) -> list[str]:
    """Every name word, email, phone or IBAN of PEOPLE still in ``text`` (names also without accents)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    left = []
    for name, _, _, *identifiers in PEOPLE:
        for token in _name_tokens(name):
            bare = "".join(c for c in unicodedata.normalize("NFKD", token) if not unicodedata.combining(c))
            if re.search(rf"(?<!\w){re.escape(token)}(?!\w)", text) or re.search(
                rf"(?<!\w){re.escape(bare)}(?!\w)", plain
            ):
                left.append(token)
        left += [v for v in identifiers if v in text or v.replace(" ", "") in text]
    return left


def _records() -> list[dict]:
    """The issue's scenario: a self-introduction with email and phone in the question, a request-log
    passage with the email, phone and IBAN, and the answer naming the person."""
    return [
        {
            "id": f"r{i}",
            "question": f"I am {name}, reachable at {email} or {phone}. Can I get a copy of the data you hold on me?",
            "answers": [f"Yes, {given} can ask for a copy under Article 15; {family} should get it within a month."],
            "gold": [{"id": f"log-{i}", "title": "Request log", "text":
                      f"Request log, 2024-03-{i + 1:02d}: access request from {name} ({email}, tel. {phone}, IBAN "
                      f"{iban}). Identity checked; {family} asked for an electronic copy."}],
            "distractors": ["Article 17 gives the data subject the right to erasure."],
            "answer_type": "free",
        }
        for i, (name, given, family, email, phone, iban) in enumerate(PEOPLE)
    ]  # fmt: skip


def test_no_real_name_reaches_any_export(home, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in _records()) + "\n", encoding="utf-8")
    assert sorted(set(_left(data.read_text(encoding="utf-8")))) != []  # the check sees the originals
    runner = CliRunner()
    r = runner.invoke(app, ["dataset", "build", "--name", "intro", "--import", f"generic:{data}",
                            "--no-interactions", "--home", str(home.home)])  # fmt: skip
    assert r.exit_code == 0, r.output
    dataset_id = re.search(r"built: (ds-\w+)", r.output).group(1)
    for fmt in FORMATS:
        out = tmp_path / fmt
        r = runner.invoke(app, ["dataset", "export", dataset_id, "--format", fmt, "--out", str(out),
                                "--home", str(home.home)])  # fmt: skip
        assert r.exit_code == 0, r.output
        text = _exported_text(out, fmt)
        assert text.strip(), fmt
        assert _left(text) == [], fmt
    with session_scope(home.db_url) as s:
        assert s.get(DatasetVersion, dataset_id).pii_recognizer == pii.RECOGNIZER_VERSION


def _exported_text(out, fmt: str) -> str:
    if fmt == "hf":  # Arrow files: read back the rows, as a trainer would
        from datasets import load_from_disk

        return json.dumps({k: v.to_list() for k, v in load_from_disk(str(out)).items()}, ensure_ascii=False)
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.json*")))


@pytest.fixture(scope="module")
def anonymizer() -> pii.Anonymizer:
    return pii.Anonymizer(secret="names-test")


def test_person_contexts_find_names_no_list_holds(anonymizer):
    def people(text: str) -> list[str]:
        return [text[f.start : f.end] for f in anonymizer.detect(text) if f.entity_type == "PERSON"]

    assert people("Hi, this is Saoirse Mhic Fhionnlaoich from payroll.") == ["Saoirse Mhic Fhionnlaoich"]
    assert people("Complaint filed by Oluwakemi Adeyemi-Bakare on 3 May.") == ["Oluwakemi Adeyemi-Bakare"]
    assert people("I write on behalf of Dagný Þorsteinsdóttir, my aunt.") == ["Dagný Þorsteinsdóttir"]
    assert people("Contact Zdeňka Šťastná <z.stastna@firma.cz> for access.") == ["Zdeňka Šťastná"]
    # The address spells the name once accents are off: "Eoghan Ó Fearghail" is eoghan.ofearghail.
    assert people("Send it to eoghan.ofearghail@mail.ie; Eoghan Ó Fearghail is away today.") == [
        "Eoghan Ó Fearghail"
    ]
    # Capitalised words that are no one.
    for text in (
        "I am Satisfied with the answer, and this is Article 17 of the Regulation.",
        "The reply was sent on behalf of the Controller and submitted by the Data Protection Officer.",
        "Requests go to Customer Service <customer.service@shop.example> or Sales <sales@shop.example>.",
        "Member States shall ensure that the European Data Protection Board is consulted.",
    ):
        assert people(text) == [], text


def test_a_name_found_in_one_example_is_replaced_in_every_other(tmp_path):
    a = pii.Anonymizer(secret="names-test", vault_path=tmp_path / "vault.sqlite")
    examples = [
        {"question": "I am Comfort Agyekum-Boateng and I want my file.", "answer": "Noted."},
        {"question": "Did Agyekum-Boateng get the file?", "answer": "Yes, Boateng got it on Monday."},
        {"question": "Is the Comfort Plus plan included?", "answer": "Comfort is included in every plan."},
    ]
    first, second, third = a.anonymize_examples(examples)
    surname = re.search(r"I am \w+ (\S+) and", first["question"]).group(1)
    assert "Agyekum" not in json.dumps([first, second]) and "Boateng" not in json.dumps([first, second])
    # The same pseudonym in every example; the vault maps it back there too.
    assert second["question"] == f"Did {surname} get the file?"
    assert a.deanonymize(second["question"]) == examples[1]["question"]
    # "Comfort" is a word too: alone in another example it stays.
    assert third == examples[2]
    # One example at a time, the surname alone elsewhere is not found: this is what the dataset adds.
    assert "Agyekum-Boateng" in a.anonymize_example(examples[1])["question"]


def test_given_names_that_are_words_stay_where_they_are_words(anonymizer):
    example = {
        "question": "I am Patience Ofori-Atta. The Patience Plus plan was never installed.",
        "answer": "Patience will get a refund. We thank you for your patience.",
    }
    out = anonymizer.anonymize_example(example)
    assert "Ofori" not in json.dumps(out) and "Atta" not in json.dumps(out)
    assert "The Patience Plus plan" in out["question"] and out["answer"].endswith("for your patience.")
    assert not out["answer"].startswith("Patience ")  # the person, alone, at the start of a sentence


def test_a_given_name_that_is_a_word_opens_a_sentence_before_an_unknown_surname(anonymizer):
    """A given name that is also a word ("Joy", "Precious") opening a sentence, before a surname no list
    holds and a verb, is a person; the word before a word, a country or a name's lookalike is not."""

    def people(text: str) -> list[str]:
        return [text[f.start : f.end] for f in anonymizer.detect(text) if f.entity_type == "PERSON"]

    assert people("Joy Mabuza-Sithole approved the refund on Friday.") == ["Joy Mabuza-Sithole"]
    assert people("The export failed twice. Precious Chiwenga restarted it at noon.") == ["Precious Chiwenga"]
    assert people("Destiny Nwankwo-Okeke wants a copy of the invoice.") == ["Destiny Nwankwo-Okeke"]
    for text in (
        "Hope Namibia funded the school roof.",
        "Joy Luck opened a second restaurant.",
        "Grace Cathedral hosts the concert on Sunday.",
        "Charity Navigator rates the foundation highly.",
    ):
        assert people(text) == [], text


def test_places_that_read_as_a_given_name_and_a_surname_are_no_one(anonymizer):
    """A town or country of GeoNames is not a person, even when its words are a given name and a surname;
    one whose words are a census given name and surname is a place only after "in", "near"…"""

    def people(text: str) -> list[str]:
        return [text[f.start : f.end] for f in anonymizer.detect(text) if f.entity_type == "PERSON"]

    assert people("Call volumes from Abu Dhabi and Ras Al Khaimah doubled.") == []
    assert people("Our branch in Bento Gonçalves closed; the new office in Juan Díaz opens in May.") == []
    assert people("Juan Díaz signed the lease last week.") == ["Juan Díaz"]


def test_dataset_list_marks_older_recognizers_and_their_models(home):
    policy = {"pii": {"enabled": True}}
    with session_scope(home.db_url) as s:
        s.add_all([
            DatasetVersion(id="ds-old", name="old", content_hash="a", policy=policy, source="interactions",
                           path="/x", command="ragloop dataset build --name old --seed 3"),
            DatasetVersion(id="ds-new", name="new", content_hash="b", policy=policy, source="interactions",
                           path="/y", pii_recognizer=pii.RECOGNIZER_VERSION),
            DatasetVersion(id="ds-raw", name="raw", content_hash="c", policy={"pii": {"enabled": False}},
                           source="interactions", path="/z"),
            ModelVersion(id="sft-old", base_model="m", dataset_id="ds-old"),
            ModelVersion(id="dpo-old", base_model="m", dataset_id="ds-new", parent_id="sft-old"),
            ModelVersion(id="sft-new", base_model="m", dataset_id="ds-new"),
        ])  # fmt: skip
    r = CliRunner().invoke(app, ["dataset", "list", "--home", str(home.home)])
    assert r.exit_code == 0, r.output
    rows = {line.split()[1]: line for line in r.output.splitlines() if re.match(r"│ ds-", line)}
    assert "older" in rows["ds-old"] and "older" not in rows["ds-new"] + rows["ds-raw"]
    said = " ".join(r.output.split())  # as printed, whatever the terminal's width
    assert "ds-old: PII replaced by recognizer v1" in said
    assert "Rebuild: ragloop dataset build --name old --seed 3" in said
    assert "trained on it: dpo-old, sft-old" in said
    assert "ds-new:" not in said and "ds-raw:" not in said and "sft-new" not in said


def test_the_gdpr_comes_out_unchanged(anonymizer):
    """Every recital and article of the regulation, as one dataset: no span is a person (or anything
    else personal), so nothing is replaced, propagation across the sections included."""
    from ragloop.config import Settings
    from ragloop.ingest.loaders import load_file

    settings = Settings()
    sections = [s.text for doc in load_file(GDPR_XML, settings.ingest, settings.limits) for s in doc.sections]
    assert sum(map(len, sections)) > 300_000  # the whole regulation
    found = [(t[f.start : f.end], f.entity_type) for t in sections for f in anonymizer.detect(t)]
    assert found == []
    assert anonymizer.anonymize_examples([{"text": t} for t in sections]) == [{"text": t} for t in sections]
