"""Loaders: every format becomes sections with heading paths and exact offsets; bad files are refused with
a message that says what to do."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ragloop.config import IngestSettings, LimitSettings
from ragloop.errors import IngestError
from ragloop.ingest.loaders import SUPPORTED_SUFFIXES, LoadedDocument, load_bytes, load_file

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
GDPR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gdpr"
SETTINGS = IngestSettings()
LIMITS = LimitSettings()


def load(name: str, settings: IngestSettings = SETTINGS) -> list[LoadedDocument]:
    return load_file(FIXTURES / name, settings, LIMITS)


def paths(doc: LoadedDocument) -> list[tuple[str, ...]]:
    return [s.path for s in doc.sections]


def assert_offsets(doc: LoadedDocument) -> None:
    """The contract the chunker relies on: sections are slices of the text, joined by blank lines."""
    assert doc.text == "\n\n".join(s.text for s in doc.sections)
    for section in doc.sections:
        assert section.text
        assert doc.text[section.char_start : section.char_start + len(section.text)] == section.text


def make_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with a real text layer, written by hand so the test needs no PDF writer."""
    content = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content.encode()),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# Formats ---------------------------------------------------------------------------------------------------


def test_txt_paragraphs_with_normalised_whitespace():
    [doc] = load("notes.txt")
    assert doc.doc_key == "" and doc.title == "notes"
    assert paths(doc) == [()]
    assert doc.text.split("\n\n") == [
        "Meeting notes, 3 March.",
        "The team agreed to move the release to Friday.",
        "Open questions: who signs off on the privacy review?",
    ]
    assert_offsets(doc)


def test_markdown_headings_build_the_path():
    [doc] = load("handbook.md")
    assert doc.title == "Staff handbook"
    assert paths(doc) == [
        ("Staff handbook",),
        ("Staff handbook", "Leave", "Annual leave"),
        ("Staff handbook", "Sick leave"),  # setext heading, level 2
        ("Appendix",),
    ]
    leave = doc.sections[1].text
    assert "Everyone gets 25 days of annual leave. Unused days expire in March." in leave
    assert "\n\n- Book leave in the portal.\n\n- Tell your manager." in leave
    assert "# this is code, not a heading" in doc.sections[2].text  # inside a fence: text, not heading
    assert "front matter" not in doc.text and "```" not in doc.text
    assert_offsets(doc)


def test_html_headings_and_dropped_chrome():
    [doc] = load("page.html")
    assert doc.title == "Expense policy"
    assert paths(doc) == [
        ("Expenses",),
        ("Expenses", "Travel"),
        ("Expenses", "Travel", "Hotels"),
        ("Expenses", "Meals"),
    ]
    assert doc.sections[0].text == "Keep every receipt. Scans are fine."
    assert doc.sections[1].text.split("\n\n") == [
        "Book trains when the trip is under four hours.",
        "Economy class only.",
        "No taxis for short trips.",
    ]
    for junk in ("tracking", "color", "Home", "About", "comment"):
        assert junk not in doc.text
    assert_offsets(doc)


def test_pdf_text_layer_one_section_per_page():
    [doc] = load_bytes(
        "report.pdf", make_pdf(["Quarterly report.", "Revenue grew by ten percent."]), SETTINGS, LIMITS
    )
    assert doc.title == "report"
    assert paths(doc) == [("Page 1",)]
    assert "Quarterly report." in doc.text and "Revenue grew by ten percent." in doc.text
    assert_offsets(doc)


def test_json_list_of_records():
    docs = load("records.json")
    assert [d.doc_key for d in docs] == ["faq-1", "3"]  # the record without text is skipped
    assert docs[0].title == "Reset a password"
    assert docs[0].text == "Open the login page and click Forgot password."
    assert docs[1].title == "records [3]"
    assert docs[1].text == "We are open 9 to 5.\n\nClosed on public holidays."
    for doc in docs:
        assert_offsets(doc)


def test_jsonl_records_use_id_else_index():
    docs = load("records.jsonl")
    assert [(d.doc_key, d.title, d.text) for d in docs] == [
        ("a", "First", "Alpha paragraph."),
        ("1", "records [1]", "Beta paragraph without id."),
    ]


def test_json_dotted_text_and_id_fields():
    settings = IngestSettings(json_text_fields=["doc.body"], json_id_fields=["meta.key"])
    data = b'[{"meta": {"key": "k1"}, "doc": {"body": "Nested text."}}, {"doc": {"body": "More."}}]'
    docs = load_bytes("nested.json", data, settings, LIMITS)
    assert [(d.doc_key, d.text) for d in docs] == [("k1", "Nested text."), ("1", "More.")]


def test_json_single_flat_object_is_one_document():
    [doc] = load_bytes("one.json", b'{"id": "x", "title": "Note", "text": "Just this."}', SETTINGS, LIMITS)
    assert (doc.doc_key, doc.title, doc.text) == ("", "Note", "Just this.")


def test_json_nested_document_is_walked_generically():
    [doc] = load("handbook.json")
    assert doc.title == "Staff handbook"
    assert paths(doc) == [
        ("Part 1  Leave", "Rule 1.1  Annual leave"),
        ("Part 1  Leave", "Sick leave"),
        ("Glossary",),  # text with no heading is filed under its top-level key
    ]
    # Untitled points and subpoints stay in their rule's section, numbered, lead-in before the items.
    assert doc.sections[0].text.split("\n\n") == [
        "1. Everyone gets 25 days.",
        "(a) part-time staff pro rata;",
        "(b) interns get 10 days.",
        "2. Unused days expire in March.",
    ]
    assert "2024-1" not in doc.text  # scalar metadata is not text
    assert_offsets(doc)


def test_xml_title_children_make_headings():
    [doc] = load("manual.xml")
    assert doc.title == "Device manual"
    assert paths(doc) == [
        (),
        ("Chapter 1  Setup", "Unpacking"),  # ti + sti combined into one heading
        ("Chapter 1  Setup", "Power"),
        ("Chapter 2  Care",),
    ]
    assert doc.sections[0].text.endswith("Read this manual before use.")
    assert doc.sections[1].text == "1. Remove the ‘device’ from the box.\n\n2. Keep the box for returns."
    assert "20240101" not in doc.text  # metadata without words is dropped
    assert "Needed for returns" not in doc.text  # footnotes would land mid-sentence
    assert doc.sections[2].text == "Use the supplied charger only."
    assert_offsets(doc)


def test_load_bytes_matches_load_file_and_ignores_directories_in_name():
    data = (FIXTURES / "handbook.md").read_bytes()
    assert load_bytes("../../etc/handbook.md", data, SETTINGS, LIMITS) == load("handbook.md")


def test_utf8_bom_and_utf16_text_are_read():
    text = "Grüße aus Köln.\n\nZweiter Absatz."
    for data in (b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")):
        [doc] = load_bytes("g.txt", data, SETTINGS, LIMITS)
        assert doc.text == "Grüße aus Köln.\n\nZweiter Absatz."


def test_every_suffix_has_a_reader():
    assert {
        ".txt",
        ".md",
        ".markdown",
        ".html",
        ".htm",
        ".pdf",
        ".json",
        ".jsonl",
        ".xml",
    } == SUPPORTED_SUFFIXES


# The GDPR in its two published shapes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gdpr_docs() -> dict[str, LoadedDocument]:
    if not GDPR.is_dir():
        pytest.fail(f"GDPR test data missing at {GDPR} (shared/data next to the repository)")
    return {
        fmt: load_file(GDPR / name, SETTINGS, LIMITS)[0]
        for fmt, name in (("xml", "gdpr-consolidated-with-corrected-preamble-en.xml"), ("json", "gdpr.json"))
    }


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_gdpr_articles_are_sections_under_their_chapter(gdpr_docs, fmt):
    doc = gdpr_docs[fmt]
    assert_offsets(doc)
    articles = [s for s in doc.sections if s.path and s.path[-1].startswith("Article ")]
    assert len({s.path[-1].split("  ")[0] for s in articles}) == 99
    assert all(s.path[0].lower().startswith("chapter ") for s in articles)

    [art17] = [s for s in articles if s.path[-1].startswith("Article 17  ")]
    assert "Right to erasure" in art17.path[-1]
    assert art17.path[0].lower() == "chapter iii  rights of the data subject"
    assert art17.path[1] == "Section 3  Rectification and erasure"
    assert art17.text.startswith(
        "1. The data subject shall have the right to obtain from the controller the erasure"
    )
    assert "\n\n(a) the personal data are no longer necessary" in art17.text


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_gdpr_recitals_are_kept_apart_from_articles(gdpr_docs, fmt):
    doc = gdpr_docs[fmt]
    [recitals] = [s for s in doc.sections if "The protection of natural persons in relation to" in s.text]
    assert not any("Article" in h for h in recitals.path)
    assert "173" in recitals.text and "vis-à-vis" in recitals.text
    assert "20160504" not in doc.text  # bibliographic metadata is not text


# Bad input -------------------------------------------------------------------------------------------------

BAD_FILES = {
    "random.pdf": random.Random(0).randbytes(2048),
    "truncated.pdf": make_pdf(["Some real text."])[:300],
    "binary.txt": b"PK\x03\x04\x00\x00binary\x00\x00" * 10,
    "latin1.txt": "Caf\xe9 cr\xe8me".encode("latin-1"),
    "empty.md": b"",
    "blank.txt": b"  \n\t\n  ",
    "broken.json": b'[{"text": "a"},\n {"text": "b",}]',
    "broken.jsonl": b'{"text": "a"}\n{"text": \n',
    "broken.xml": b"<doc>\n<p>open\n</doc>",
    "slides.pptx": b"PK\x03\x04",
}
EXPECTED = {
    "random.pdf": "corrupt or encrypted PDF",
    "truncated.pdf": "corrupt or encrypted PDF",
    "binary.txt": "binary",
    "latin1.txt": "re-save it as UTF-8",
    "empty.md": "empty",
    "blank.txt": "empty",
    "broken.json": "line 2",
    "broken.jsonl": "line 2",
    "broken.xml": "line 3",
    "slides.pptx": "unsupported file type '.pptx'",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_refused_with_a_helpful_message(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(IngestError, match=name.replace(".", r"\.")) as info:
        load_file(path, SETTINGS, LIMITS)
    assert EXPECTED[name] in str(info.value)
    with pytest.raises(IngestError):  # the upload door refuses the same bytes
        load_bytes(name, BAD_FILES[name], SETTINGS, LIMITS)


def test_pdf_without_text_layer_says_scanned():
    with pytest.raises(IngestError, match="no extractable text.*OCR"):
        load_bytes("scan.pdf", make_pdf([]), SETTINGS, LIMITS)


def test_encrypted_pdf_is_refused():
    import io

    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf(["Secret."]))))
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(IngestError, match="encrypted"):
        load_bytes("locked.pdf", out.getvalue(), SETTINGS, LIMITS)


def test_file_over_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("word " * 100)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a file over the limit"))
    with pytest.raises(IngestError, match=r"500 bytes is over the limit of 100 bytes.*max_file_bytes"):
        load_file(path, SETTINGS, LimitSettings(max_file_bytes=100))
    with pytest.raises(IngestError, match="over the limit"):
        load_bytes("big.txt", b"x" * 101, SETTINGS, LimitSettings(max_file_bytes=100))


def test_json_without_any_text_field_names_the_fields_tried():
    data = b'[{"question": "a", "answer": "b"}]'
    with pytest.raises(IngestError, match=r"tried text, content.*json_text_fields"):
        load_bytes("qa.json", data, SETTINGS, LIMITS)
    with pytest.raises(IngestError, match=r"json_text_fields"):
        load_bytes("tree.json", b'{"title": "T", "parts": [{"title": "x", "n": 1}]}', SETTINGS, LIMITS)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(IngestError, match="cannot be read"):
        load_file(tmp_path / "nope.txt", SETTINGS, LIMITS)
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(IngestError, match="not a regular file"):
        load_file(tmp_path / "dir.txt", SETTINGS, LIMITS)


def test_xml_internal_entities_expand_but_external_ones_are_refused(tmp_path):
    data = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY org "Example Corp">]><d><p>Hi from &org;.</p></d>'
    assert load_bytes("x.xml", data, SETTINGS, LIMITS)[0].text == "Hi from Example Corp."

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    data = f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]><d><p>Hi &x;</p></d>'
    with pytest.raises(IngestError, match="not well-formed XML") as info:
        load_bytes("x.xml", data.encode(), SETTINGS, LIMITS)
    assert "TOP SECRET" not in str(info.value)


def test_xml_billion_laughs_is_refused():
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    data = f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY l0 "lol">{entities}]><d>&l9;</d>'
    with pytest.raises(IngestError, match="not well-formed XML"):
        load_bytes("bomb.xml", data.encode(), SETTINGS, LIMITS)


def test_json_tree_walks_a_text_key_that_holds_nested_sections():
    data = b"""{"name": "Guide", "content": [
        {"heading": "Intro", "content": "Hello there."},
        {"heading": "Usage", "content": ["Step one.", "Step two."], "sections": [{"title": "Tips", "body": "Be brief."}]}
    ]}"""
    [doc] = load_bytes("guide.json", data, SETTINGS, LIMITS)
    assert doc.title == "Guide"
    assert [(s.path, s.text) for s in doc.sections] == [
        (("Intro",), "Hello there."),
        (("Usage",), "Step one.\n\nStep two."),
        (("Usage", "Tips"), "Be brief."),
    ]
