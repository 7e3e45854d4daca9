"""Versioned prompt templates: numbered passages (title, source) before the question, answers cite [n].

A template is identified by (id, version) and rendered into chat messages. The rendering is a pure function
of the recorded inputs, so ``ragloop replay`` rebuilds it byte for byte and the training stages render
exactly what serving showed. Changing a template's wording means adding a new version, never editing one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

from ragloop.errors import ConfigError


class PassageLike(Protocol):
    title: str
    source_path: str
    section: str
    text: str


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    version: int
    system: str
    passage_header: str  # format with n, title, source (" (path)" or "" when the passage has none), section
    question_intro: str
    no_passages: str

    def render(self, messages: list[dict], passages: list[PassageLike]) -> list[dict]:
        """Chat messages for the model: the system turn, earlier turns as sent, and the last user turn
        with the numbered passages before the question."""
        history = [
            {"role": m["role"], "content": m["content"]}
            for m in messages[:-1]
            if m["role"] in ("user", "assistant")
        ]
        question = messages[-1]["content"]
        blocks = []
        for n, p in enumerate(passages, start=1):
            source = f" ({p.source_path})" if p.source_path else ""
            header = self.passage_header.format(
                n=n, title=p.title or "untitled", source=source, section=p.section
            )
            blocks.append(f"{header}\n{p.text.strip()}")
        context = "\n\n".join(blocks) if blocks else self.no_passages
        user = f"{context}\n\n{self.question_intro}{question}"
        return [{"role": "system", "content": self.system}, *history, {"role": "user", "content": user}]


TEMPLATES: dict[tuple[str, int], PromptTemplate] = {}
LATEST: dict[str, int] = {}


def register(template: PromptTemplate) -> PromptTemplate:
    key = (template.id, template.version)
    if key in TEMPLATES:
        raise ValueError(f"template {key} already registered: add a new version instead")
    TEMPLATES[key] = template
    LATEST[template.id] = max(LATEST.get(template.id, 0), template.version)
    return template


register(
    PromptTemplate(
        id="cited-answer",
        version=1,
        system=(
            "You answer questions using only the numbered documents given with the question. "
            "Cite the documents that support each statement with their number in brackets, like [1]. "
            "If the documents do not contain the answer, say that the documents do not say."
        ),
        passage_header="[{n}] {title}{source}",
        question_intro="Question: ",
        no_passages="(no documents were found)",
    )
)


def get_template(template_id: str, version: int | None = None) -> PromptTemplate:
    """A registered template; the latest version when none is given."""
    if template_id not in LATEST:
        raise ConfigError(f"Unknown prompt template {template_id!r}; known: {', '.join(sorted(LATEST))}.")
    version = version or LATEST[template_id]
    try:
        return TEMPLATES[(template_id, version)]
    except KeyError:
        raise ConfigError(f"Prompt template {template_id!r} has no version {version}.") from None


def prompt_sha256(messages: list[dict]) -> str:
    """The identity of a rendered prompt: sha256 of its canonical JSON."""
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
