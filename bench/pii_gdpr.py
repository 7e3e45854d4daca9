"""False positives of PII anonymisation on a text that holds no personal data (issue 15): the GDPR, cut into
chunks exactly as `ragloop ingest` cuts it, every chunk through the anonymiser as one dataset (so names
also propagate across chunks, as in `ragloop dataset build`). Prints each replaced span with its section;
the target is none.

    python bench/pii_gdpr.py    # about a minute on the 2-core machine
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA  # noqa: E402

GDPR = DATA / "gdpr" / "gdpr-consolidated-with-corrected-preamble-en.xml"


def main() -> None:
    from ragloop.config import Settings
    from ragloop.curation.pii import Anonymizer
    from ragloop.ingest.chunking import chunk_document
    from ragloop.ingest.embed import get_embedder
    from ragloop.ingest.loaders import load_file

    settings = Settings()
    tokenizer = get_embedder(settings.embedding).tokenizer
    chunks = [
        c
        for doc in load_file(GDPR, settings.ingest, settings.limits)
        for c in chunk_document(
            doc,
            doc_id="gdpr",
            collection="gdpr",
            source_path=GDPR.name,
            tokenizer=tokenizer,
            chunk_tokens=settings.embedding.chunk_tokens,
            overlap=settings.embedding.chunk_overlap,
        )  # fmt: skip
    ]
    anonymizer = Anonymizer(secret="bench-pii-gdpr")
    start = time.perf_counter()
    found = [anonymizer.detect_example([c.text])[0] for c in chunks]
    outputs = anonymizer.anonymize_examples([{"text": c.text} for c in chunks])
    seconds = time.perf_counter() - start
    changed = [(c, out["text"]) for c, out in zip(chunks, outputs, strict=True) if out["text"] != c.text]
    spans = [
        (c.section, f.entity_type, c.text[f.start : f.end])
        for c, fs in zip(chunks, found, strict=True)
        for f in fs
    ]
    print(
        f"# PII on the GDPR: {len(chunks)} chunks, {sum(len(c.text) for c in chunks):,} characters, {seconds:.1f} s"
    )
    print(f"\nfindings in one chunk at a time: {len(spans)} {dict(Counter(t for _, t, _ in spans))}")
    for section, entity, text in spans:
        print(f"- {entity} {text!r} ({section[-80:]})")
    print(f"\nchunks changed by anonymize_examples over all chunks (propagation included): {len(changed)}")
    for c, out in changed:
        print(f"- {c.section[-80:]}: {c.text[:120]!r} -> {out[:120]!r}")


if __name__ == "__main__":
    main()
