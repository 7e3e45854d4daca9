"""Chunks: the unit the knowledge base stores and the retriever returns.

``chunk_document`` cuts a loaded document into passages measured in tokens of the embedding model, so no
chunk is longer than what the model reads. Chunks never cross a section (an article stays apart from the
next), never cut a word, and their offsets point back into the document text for citations.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

from ragloop.errors import ConfigError
from ragloop.ingest.loaders import LoadedDocument


@dataclass(frozen=True)
class Chunk:
    """One passage of one document, as stored in LanceDB (plus its vector) and shown to the model."""

    chunk_id: str  # sha256(doc_id, chunk_index, text)[:32]: stable for unchanged content
    doc_id: str
    collection: str
    source_path: str  # relative to the ingest root the user gave, never an absolute host path
    title: str
    section: str  # heading path joined by " > ", e.g. "Chapter III > Article 17 Right to erasure"
    text: str
    char_start: int  # offsets into the document's extracted text
    char_end: int
    chunk_index: int
    text_sha256: str

    def to_row(self) -> dict:
        return asdict(self)


# Splitting -------------------------------------------------------------------------------------------------

# How good a place is the gap before a token to end a chunk: the chunker takes the best one it can find.
_MID_WORD, _WORD_EDGE, _SPACE, _SENTENCE, _PARAGRAPH = range(5)
_SENTENCE_END = re.compile(r"[.!?][\"'’”)\]]*$")
_PREFERRED_TAIL = 0.3  # look for a paragraph or sentence end in the last 30% of the window


def chunk_document(
    doc: LoadedDocument,
    *,
    doc_id: str,
    collection: str,
    source_path: str,
    tokenizer: Any,
    chunk_tokens: int = 200,
    overlap: int = 32,
) -> list[Chunk]:
    """Cut a document into chunks of at most ``chunk_tokens`` tokens of the embedding model.

    Chunks stay inside one section (an article is never glued to the next one), end at whitespace (at a
    paragraph or sentence end when one is near the end of the window), and consecutive chunks of a section
    share about ``overlap`` tokens so a sentence cut in two is whole in one of them.
    """
    if chunk_tokens < 1 or not 0 <= overlap < chunk_tokens:
        raise ConfigError(
            f"chunk_tokens={chunk_tokens}, chunk_overlap={overlap}: need chunk_tokens >= 1 and "
            "0 <= chunk_overlap < chunk_tokens; fix [embedding] in ragloop.toml."
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("The embedding model needs a fast (Rust) tokenizer: chunks are cut by its offsets.")
    chunks: list[Chunk] = []
    for section in doc.sections:
        for start, end in _split_section(section.text, tokenizer, chunk_tokens, overlap):
            text = section.text[start:end]
            index = len(chunks)
            chunks.append(
                Chunk(
                    chunk_id=hashlib.sha256(f"{doc_id}\x00{index}\x00{text}".encode()).hexdigest()[:32],
                    doc_id=doc_id,
                    collection=collection,
                    source_path=source_path,
                    title=doc.title,
                    section=" > ".join(section.path),
                    text=text,
                    char_start=section.char_start + start,
                    char_end=section.char_start + end,
                    chunk_index=index,
                    text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                )
            )
    return chunks


def _split_section(text: str, tokenizer: Any, chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the chunks of one section's text.

    The text is tokenized once; spans are mapped back through the token offsets (the MiniLM tokenizer
    lowercases, so decoded tokens would not match the text).
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    n = len(offsets)
    if n == 0:
        return []
    gaps = _gap_kinds(text, offsets, enc.word_ids())
    spans = []
    start = 0
    while n - start > chunk_tokens:
        end = _best_end(gaps, start, chunk_tokens)
        spans.append((offsets[start][0], offsets[end - 1][1]))
        start = _next_start(gaps, start, end, overlap)
    spans.append((offsets[start][0], offsets[n - 1][1]))
    return spans


def _gap_kinds(text: str, offsets: list[tuple[int, int]], word_ids: list[int | None]) -> list[int]:
    """``gaps[i]``: what lies between token i-1 and token i (gaps[0] is unused)."""
    gaps = [_PARAGRAPH] * len(offsets)
    for i in range(1, len(offsets)):
        prev_end, start = offsets[i - 1][1], offsets[i][0]
        gap = text[prev_end:start]
        if "\n\n" in gap:
            gaps[i] = _PARAGRAPH
        elif any(c.isspace() for c in gap):
            gaps[i] = _SENTENCE if _SENTENCE_END.search(text[max(0, prev_end - 4) : prev_end]) else _SPACE
        elif word_ids[i] != word_ids[i - 1]:
            gaps[i] = _WORD_EDGE  # punctuation or CJK: a word boundary without a space
        else:
            gaps[i] = _MID_WORD
    return gaps


def _best_end(gaps: list[int], start: int, chunk_tokens: int) -> int:
    """Exclusive token index where the chunk starting at ``start`` ends (at most chunk_tokens later)."""
    limit = start + chunk_tokens
    preferred_from = limit - int(chunk_tokens * _PREFERRED_TAIL)
    for kind in (_PARAGRAPH, _SENTENCE):
        for i in range(limit, preferred_from - 1, -1):
            if gaps[i] >= kind:
                return i
    # No paragraph or sentence end near the end: the last space; only a single "word" longer than the
    # whole window (a URL, unspaced script) falls back to a word edge, then to a hard cut.
    for kind in (_SPACE, _WORD_EDGE):
        for i in range(limit, start, -1):
            if gaps[i] >= kind:
                return i
    return limit


def _next_start(gaps: list[int], start: int, end: int, overlap: int) -> int:
    """Start of the next chunk: a word start about ``overlap`` tokens before ``end``, preferably the start
    of a sentence (within half the overlap of that target), so the chunk does not open mid-sentence."""
    if not overlap:
        return end
    target = end - overlap
    near = range(max(start + 1, target - overlap // 2), min(end, target + overlap // 2 + 1))
    for kind, span in ((_SENTENCE, near), (_SPACE, near), (_SPACE, range(start + 1, end))):
        candidates = [i for i in span if gaps[i] >= kind]
        if candidates:
            return min(candidates, key=lambda i: (abs(i - target), -i))
    return end
