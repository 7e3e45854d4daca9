"""Chunks: the unit the knowledge base stores and the retriever returns.

(The splitting itself is filled in below ``Chunk``.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
