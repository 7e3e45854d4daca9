"""Chunking by the embedding model's own tokens: within sections, never mid-word, with overlap, stable ids,
and offsets that point back into the document text."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest

from ragloop.config import EmbeddingSettings, IngestSettings, LimitSettings
from ragloop.errors import ConfigError
from ragloop.ingest.chunking import Chunk, chunk_document
from ragloop.ingest.embed import get_embedder
from ragloop.ingest.loaders import LoadedDocument, load_bytes, load_file

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
GDPR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gdpr"


@pytest.fixture(scope="session")
def tokenizer():
    return get_embedder(EmbeddingSettings()).tokenizer


def load_text(text: str, name: str = "doc.txt") -> LoadedDocument:
    [doc] = load_bytes(name, text.encode(), IngestSettings(), LimitSettings())
    return doc


def chunk(doc: LoadedDocument, tokenizer, **kwargs) -> list[Chunk]:
    return chunk_document(
        doc, doc_id="doc-1", collection="c", source_path="a/doc.txt", tokenizer=tokenizer, **kwargs
    )


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_chunks(doc: LoadedDocument, chunks: list[Chunk], tokenizer, chunk_tokens: int) -> None:
    """Invariants every chunking must keep."""
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert doc.text[c.char_start : c.char_end] == c.text
        assert n_tokens(tokenizer, c.text) <= chunk_tokens
        # Whole words only: a chunk starts and ends at whitespace or the edge of the text.
        assert c.char_start == 0 or doc.text[c.char_start - 1].isspace()
        assert c.char_end == len(doc.text) or doc.text[c.char_end].isspace()
        # Inside one section (two sections may share a path, so look for one that holds the chunk).
        assert any(
            " > ".join(s.path) == c.section
            and s.char_start <= c.char_start <= c.char_end <= s.char_start + len(s.text)
            for s in doc.sections
        )
        assert c.text_sha256 == hashlib.sha256(c.text.encode()).hexdigest()
        assert c.chunk_id == hashlib.sha256(f"doc-1\x00{c.chunk_index}\x00{c.text}".encode()).hexdigest()[:32]
        assert c.title == doc.title


def long_text(paragraphs: int = 12, seed: int = 0) -> str:
    """Deterministic prose with long words (several word pieces each) and sentence and paragraph breaks."""
    rng = random.Random(seed)
    words = ["data", "controller", "processing", "internationalisation", "pseudonymisation", "erasure"]
    words += ["rights", "of", "the", "a", "to"]
    paras = []
    for _ in range(paragraphs):
        sentences = [
            " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "."
            for _ in range(6)
        ]
        paras.append(" ".join(sentences))
    return "\n\n".join(paras)


def test_short_sections_are_one_chunk_each(tokenizer):
    doc = load_file(FIXTURES / "handbook.md", IngestSettings(), LimitSettings())[0]
    chunks = chunk(doc, tokenizer)
    check_chunks(doc, chunks, tokenizer, 200)
    assert [c.text for c in chunks] == [s.text for s in doc.sections]  # no merging across sections
    assert chunks[1].section == "Staff handbook > Leave > Annual leave"
    assert {c.doc_id for c in chunks} == {"doc-1"} and chunks[0].source_path == "a/doc.txt"


def test_long_section_is_split_within_the_limit_with_overlap(tokenizer):
    doc = load_text(long_text())
    chunks = chunk(doc, tokenizer, chunk_tokens=60, overlap=12)
    check_chunks(doc, chunks, tokenizer, 60)
    assert len(chunks) > 10
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.char_start < a.char_end, "consecutive chunks of a section share text"
        assert b.char_start > a.char_start
    # Cuts prefer sentence and paragraph ends: almost every chunk but the last ends with a full stop.
    ends = [c.text.endswith(".") for c in chunks[:-1]]
    assert sum(ends) >= 0.8 * len(ends)
    # Nothing is lost: the chunks cover the text.
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(doc.text)


def test_overlap_zero_gives_disjoint_chunks(tokenizer):
    doc = load_text(long_text(seed=1))
    chunks = chunk(doc, tokenizer, chunk_tokens=40, overlap=0)
    check_chunks(doc, chunks, tokenizer, 40)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.char_start >= a.char_end


def test_no_mid_word_cuts_with_tiny_windows(tokenizer):
    doc = load_text("Pseudonymisation internationalisation " * 30)
    chunks = chunk(doc, tokenizer, chunk_tokens=7, overlap=2)
    check_chunks(doc, chunks, tokenizer, 7)
    assert all(c.text.split()[0] in ("Pseudonymisation", "internationalisation") for c in chunks)


def test_a_word_longer_than_the_window_still_fits(tokenizer):
    # No whitespace at all: the chunker falls back to word edges (the hyphens), never over the limit.
    text = "-".join(["segment"] * 200)
    doc = load_text(text)
    chunks = chunk(doc, tokenizer, chunk_tokens=50, overlap=5)
    assert len(chunks) > 1
    for c in chunks:
        assert doc.text[c.char_start : c.char_end] == c.text
        assert n_tokens(tokenizer, c.text) <= 50


def test_offsets_survive_lowercasing_and_accents(tokenizer):
    doc = load_text(("ÄRZTE Überprüfen DIE Datenschutz-Grundverordnung (DSGVO) sorgfältig. " * 40).strip())
    chunks = chunk(doc, tokenizer, chunk_tokens=30, overlap=5)
    check_chunks(doc, chunks, tokenizer, 30)
    assert "ÄRZTE" in chunks[0].text  # original casing, not the tokenizer's lowercase


def test_chunk_ids_are_stable_and_depend_on_doc_and_text(tokenizer):
    doc = load_text(long_text(seed=2))
    first = chunk(doc, tokenizer, chunk_tokens=50, overlap=10)
    again = chunk(load_text(long_text(seed=2)), tokenizer, chunk_tokens=50, overlap=10)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in again]
    other = chunk_document(
        doc, doc_id="doc-2", collection="c", source_path="x", tokenizer=tokenizer, chunk_tokens=50
    )
    assert not {c.chunk_id for c in first} & {c.chunk_id for c in other}


def test_every_fixture_chunks_cleanly(tokenizer):
    for path in sorted(FIXTURES.iterdir()):
        for doc in load_file(path, IngestSettings(), LimitSettings()):
            check_chunks(doc, chunk(doc, tokenizer, chunk_tokens=8, overlap=2), tokenizer, 8)


def test_bad_window_settings_are_refused(tokenizer):
    doc = load_text("Some text.")
    with pytest.raises(ConfigError, match="chunk_overlap"):
        chunk(doc, tokenizer, chunk_tokens=32, overlap=32)
    with pytest.raises(ConfigError, match="chunk_tokens"):
        chunk(doc, tokenizer, chunk_tokens=0, overlap=0)


@pytest.mark.parametrize(
    "name", ["gdpr-consolidated-with-corrected-preamble-en.xml", "gdpr.json"], ids=["xml", "json"]
)
def test_gdpr_chunks_fast_and_article_17_is_findable(tokenizer, name):
    if not GDPR.is_dir():
        pytest.fail(f"GDPR test data missing at {GDPR} (shared/data next to the repository)")
    [doc] = load_file(GDPR / name, IngestSettings(), LimitSettings())
    started = time.perf_counter()
    chunks = chunk(doc, tokenizer)
    assert time.perf_counter() - started < 3.0, "a ~500 KB file must chunk in well under a few seconds"
    check_chunks(doc, chunks, tokenizer, 200)
    assert 350 < len(chunks) < 600

    art17 = [c for c in chunks if "Article 17  Right to erasure" in c.section]
    assert 1 <= len(art17) <= 4
    assert art17[0].section.lower().startswith("chapter iii  rights of the data subject > section 3")
    assert "erasure of personal data" in art17[0].text
    articles = {c.section.split(" > ")[-1].split("  ")[0] for c in chunks if "Article " in c.section}
    assert len(articles) == 99
