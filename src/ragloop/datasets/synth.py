"""Cold start: question/answer pairs generated from the knowledge base's own chunks.

A new deployment has documents but no traffic. ``synth`` samples chunks, asks a generator (the configured
one, or a stronger OpenAI-compatible teacher) for a question the chunk answers and its answer, keeps the
pairs whose answer is supported by the chunk, and adds the passages the retriever really returns for that
question as hard-negative distractors. The output is the documented generic QA JSONL, so it goes through
the same RAFT builder as everything else (``ragloop dataset build --import generic:FILE``).

``method="extractive"`` needs no generator: the question comes from the chunk's heading and the answer is
the chunk's most informative sentence. It is crude but never fails, which is what a top-up needs.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from ragloop.config import Settings
from ragloop.curation.verify import verify_statement
from ragloop.errors import RagloopError
from ragloop.generation.backends import Backend, GenParams, OpenAIBackend
from ragloop.generation.citations import split_sentences
from ragloop.ingest.kb import KnowledgeBase
from ragloop.retrieval.search import Retriever

SYNTH_PROMPT = (
    "Read the passage and write one question that it answers, then the answer in one sentence, using only the "
    "passage. Reply exactly in this form:\nQuestion: <question>\nAnswer: <answer>\n\nPassage ({title}, {section}):\n{text}"
)
QA = re.compile(r"Question:\s*(?P<q>.+?)\s*\n+\s*Answer:\s*(?P<a>.+)", re.IGNORECASE | re.DOTALL)


def parse_qa(output: str) -> tuple[str, str] | None:
    m = QA.search(output)
    if not m:
        return None
    question = " ".join(m.group("q").split())
    answer = " ".join(m.group("a").strip().split("\n")[0].split())
    if len(question) < 8 or not question.endswith("?") or len(answer) < 2:
        return None
    return question, answer


def extractive_qa(row: dict) -> tuple[str, str] | None:
    """Question from the heading path and the answer's topic, answer = the chunk's longest sentence
    (deterministic). The topic keeps the questions of one section (or of a heading-less preamble, which
    falls back to the document title) apart: "What does Article 70 say?" five times over, with five
    different answers, would teach nothing and be deduplicated away."""
    heading = (row.get("section") or "").split(" > ")[-1].strip() or _short(row.get("title") or "")
    spans = split_sentences(row["text"])
    if not heading or not spans:
        return None
    s, e = max(spans, key=lambda se: se[1] - se[0])
    answer = row["text"][s:e].strip()
    topic = _topic(answer, heading)
    return (f"What does {heading} say about {topic}?" if topic else f"What does {heading} say?"), answer


def _short(title: str, words: int = 8) -> str:
    parts = title.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def _topic(sentence: str, heading: str, most: int = 5) -> str:
    """The sentence's longest run of content words (a noun-phrase stand-in, no parser needed). A run ends
    at punctuation, at a stop word (spaCy's English list, installed with Presidio, plus the modal verbs of
    legal text) and at a word the heading already says."""
    from spacy.lang.en.stop_words import STOP_WORDS

    stop = STOP_WORDS | {"shall", "may", "must", "should"} | {w.lower() for w in re.findall(r"\w+", heading)}
    best: list[str] = []
    run: list[str] = []
    for tok in [*re.findall(r"[A-Za-z][\w-]*|[^\w\s]", sentence), "."]:
        if tok[0].isalpha() and len(tok) > 2 and tok.lower() not in stop:
            run.append(tok)
            continue
        if len(run) > len(best):
            best = run
        run = []
    return " ".join(best[:most])


def synthesize(
    settings: Settings,
    n: int,
    out: Path,
    *,
    method: str = "llm",
    teacher_url: str | None = None,
    teacher_model: str | None = None,
    backend: Backend | None = None,
    n_distractors: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write up to ``n`` generic-format QA records to ``out``; returns counts (written, unparsed, unsupported)."""
    if method not in ("llm", "extractive"):
        raise RagloopError("--method is llm or extractive.")
    kb = KnowledgeBase(settings)
    if not kb.count():
        raise RagloopError("The knowledge base is empty: `ragloop ingest` documents first.")
    rows = kb.random_chunks(min(kb.count(), n * 2), seed)
    random.Random(seed).shuffle(rows)
    if method == "llm" and backend is None:
        if teacher_url:
            import os

            backend = OpenAIBackend(
                teacher_url, teacher_model or "default", os.environ.get(settings.generator.api_key_env)
            )
        else:
            from ragloop.generation.assistant import Assistant

            assistant = Assistant(settings)
            backend = assistant.backend_for(_base_version(settings))[0]
    retriever = Retriever(settings, kb)
    counts = {"written": 0, "unparsed": 0, "unsupported": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for k, row in enumerate(rows):
            if counts["written"] >= n:
                break
            if progress:
                progress(counts["written"], n)
            qa = None
            if method == "llm":
                prompt = SYNTH_PROMPT.format(
                    title=row["title"], section=row["section"], text=row["text"][:2000]
                )
                gen = backend.generate(
                    [{"role": "user", "content": prompt}], GenParams(max_new_tokens=96, temperature=0.0)
                )  # type: ignore[union-attr]
                qa = parse_qa(gen.text)
                if qa is None:
                    counts["unparsed"] += 1
                    continue
                if not verify_statement(qa[1], row["text"]).supported:
                    counts["unsupported"] += 1
                    continue
            else:
                qa = extractive_qa(row)
                if qa is None:
                    counts["unparsed"] += 1
                    continue
            question, answer = qa
            hits = [h for h in retriever.search(question, n_distractors + 1) if h.chunk_id != row["chunk_id"]]
            record = {
                "id": f"synth-{seed}-{k}-{row['chunk_id'][:12]}",
                "question": question,
                "answers": [answer],
                "gold": [_passage(row)],
                "distractors": [_passage(h.__dict__) for h in hits[:n_distractors]],
                "answer_type": "free",
                "group": f"{row['doc_id']}|{row['section']}",
                "meta": {"synth": method, "chunk_id": row["chunk_id"]},
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts["written"] += 1
    return counts


def _passage(row: dict) -> dict:
    return {
        "id": row["chunk_id"],
        "title": row["title"],
        "text": row["text"],
        "source_path": row["source_path"],
        "section": row["section"],
    }


def _base_version(settings: Settings):  # type: ignore[no-untyped-def]
    from ragloop.store import aliases
    from ragloop.store.db import session_scope

    with session_scope(settings.db_url) as s:
        version, _ = aliases.resolve(s, "base")
        return version
