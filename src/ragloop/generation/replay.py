"""Rebuild the exact prompt of a recorded interaction.

The record keeps passage ids, text hashes and the KB version (tagged, so compaction never deletes it), the
template id and version, and the conversation. Replaying reads the passages back at that version, checks
their hashes, re-renders, and compares the prompt's sha256 with the recorded one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ragloop.config import Settings
from ragloop.errors import NotFound
from ragloop.generation.prompts import get_template, prompt_sha256
from ragloop.store.db import session_scope
from ragloop.store.models import Interaction

if TYPE_CHECKING:
    from ragloop.ingest.kb import KnowledgeBase


@dataclass
class ShownPassage:
    chunk_id: str
    doc_id: str
    title: str
    source_path: str
    section: str
    text: str


@dataclass
class Replay:
    interaction_id: str
    prompt: list[dict]
    sha256: str
    recorded_sha256: str
    passages: list[ShownPassage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.sha256 == self.recorded_sha256 and not self.problems


def load_interaction(settings: Settings, interaction_id: str) -> Interaction:
    with session_scope(settings.db_url) as s:
        interaction = s.get(Interaction, interaction_id)
        if interaction is None:
            raise NotFound(f"No interaction {interaction_id!r}; see `ragloop logs`.")
        interaction.passages  # noqa: B018 - load before the session closes
        return interaction


def fetch_rows(
    kb: KnowledgeBase, interactions: list[Interaction], batch: int = 2000
) -> dict[tuple[int | None, str], dict]:
    """Chunk rows for many interactions at once, keyed by (KB version, chunk id): one LanceDB query per
    version and batch instead of one per interaction (curating 10,000 records stays fast)."""
    wanted: dict[int | None, set[str]] = {}
    for interaction in interactions:
        for p in interaction.passages:
            wanted.setdefault(p.kb_version, set()).add(p.chunk_id)
    return rows_by_version(kb, wanted, batch)


def rows_by_version(
    kb: KnowledgeBase, wanted: dict[int | None, set[str]], batch: int = 2000
) -> dict[tuple[int | None, str], dict]:
    """Chunk rows keyed by (KB version, chunk id) for the ids wanted at each version, in batches: a
    LanceDB ``isin`` filter over tens of thousands of ids at once is slow and memory-hungry."""
    rows: dict[tuple[int | None, str], dict] = {}
    for version, ids in wanted.items():
        ordered = sorted(ids)
        for start in range(0, len(ordered), batch):
            for chunk_id, row in kb.get_chunks(ordered[start : start + batch], version=version).items():
                rows[(version, chunk_id)] = row
    return rows


def shown_passages(
    kb: KnowledgeBase, interaction: Interaction, rows: dict[tuple[int | None, str], dict] | None = None
) -> tuple[list[ShownPassage], list[str]]:
    """The passages exactly as shown, read at their recorded KB version, with any hash mismatch named.
    ``rows`` from ``fetch_rows`` saves the queries when many interactions are read together."""
    problems: list[str] = []
    rows = rows if rows is not None else fetch_rows(kb, [interaction])
    out = []
    for p in interaction.passages:
        row = rows.get((p.kb_version, p.chunk_id))
        if row is None:
            problems.append(f"passage [{p.rank}] {p.chunk_id} is missing from KB version {p.kb_version}")
            continue
        text = row["text"]
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != p.text_sha256:
            problems.append(f"passage [{p.rank}] {p.chunk_id} text differs from the recorded hash")
        out.append(ShownPassage(p.chunk_id, p.doc_id, p.title, p.source_path, p.section, text))
    return out, problems


def replay(settings: Settings, interaction_id: str, kb: KnowledgeBase | None = None) -> Replay:
    """Rebuild the prompt of ``interaction_id`` and say whether it is byte-identical to what was sent."""
    interaction = load_interaction(settings, interaction_id)
    if kb is None:
        from ragloop.ingest.kb import KnowledgeBase

        kb = KnowledgeBase(settings)
    passages, problems = shown_passages(kb, interaction)
    template = get_template(interaction.template_id, interaction.template_version)
    prompt = template.render(interaction.messages, passages)
    return Replay(
        interaction.id, prompt, prompt_sha256(prompt), interaction.prompt_sha256, passages, problems
    )
