"""The curation policy: a versioned config file that says which records become training data.

It is stored whole with every dataset built from it, so a dataset can always say why each record is in it.
Format (YAML or JSON)::

    name: default
    version: 1
    filters:                       # applied in this order; each reports how many records it dropped
      - accepted: {min_rating: 4}  # reviewed and liked (thumbs up or rating >= min_rating); a correction counts
      - cites_shown_passage: {}    # the answer cites a shown passage, a reviewer marked one gold, or pinned
                                   # evidence the retriever missed: a passage to read the answer from
      - verify_citations: {threshold: null}   # every cited statement supported (null = the validated default)
      - refusal: {}                # drop refusals ("I don't know") from answer targets
      - length: {min_question_chars: 3, max_question_chars: 2000, min_answer_chars: 1, max_answer_chars: 4000}
      - dedupe: {threshold: 0.8}   # exact + MinHash near-duplicate questions
    pii: {enabled: true, entities: null, vault: false}
    split: {train: 0.8, val: 0.1, test: 0.1}
    raft: {n_passages: 5, p_oracle: 0.8, policy: answer, target: reasoning}
    end_user_corrections: review   # review | trust | ignore: what an end user's correction (chat page,
                                   # non-admin key: feedback source end_user) counts for, see below

End users are not reviewers: ``review`` (the default) never makes an end user's correction a target by
itself; it puts the answer in the review queue, where a reviewer accepts it (saves it, edited or not, as
their own correction) or not, and until a reviewer has looked the answer is held out ("end-user correction
awaiting review"). ``trust`` takes it like a reviewer's; ``ignore`` neither uses nor waits for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ragloop.errors import RagloopError
from ragloop.feedback.service import END_USER_CORRECTIONS

FILTERS: dict[str, dict[str, Any]] = {
    "accepted": {"min_rating": 4, "allow_unreviewed": False},
    "cites_shown_passage": {},
    "verify_citations": {"threshold": None},
    "refusal": {},
    "length": {
        "min_question_chars": 3,
        "max_question_chars": 2000,
        "min_answer_chars": 1,
        "max_answer_chars": 4000,
    },
    "dedupe": {"threshold": 0.8},
}
SECTIONS = {"name", "version", "filters", "pii", "split", "raft", "description", "end_user_corrections"}


@dataclass
class Policy:
    name: str = "default"
    version: int = 1
    filters: list[tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: [(name, dict(args)) for name, args in FILTERS.items()]
    )
    pii: dict[str, Any] = field(default_factory=lambda: {"enabled": True, "entities": None, "vault": False})
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    raft: dict[str, Any] = field(
        default_factory=lambda: {"n_passages": 5, "p_oracle": 0.8, "policy": "answer", "target": "reasoning"}
    )
    end_user_corrections: str = "review"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "filters": [{n: a} for n, a in self.filters],
            "pii": self.pii,
            "split": self.split,
            "raft": self.raft,
            "end_user_corrections": self.end_user_corrections,
        }

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def parse_policy(data: Any, origin: str = "policy") -> Policy:
    """Validate a policy document completely; unknown filters or keys are errors, not silently ignored."""
    if not isinstance(data, dict):
        raise RagloopError(f"{origin}: a policy must be a mapping with keys {sorted(SECTIONS)}.")
    unknown = set(data) - SECTIONS
    if unknown:
        raise RagloopError(f"{origin}: unknown policy keys {sorted(unknown)}; allowed: {sorted(SECTIONS)}.")
    policy = Policy(name=str(data.get("name", "default")), version=int(data.get("version", 1)))
    if "filters" in data:
        raw = data["filters"]
        if not isinstance(raw, list):
            raise RagloopError(
                f"{origin}: `filters` must be a list like [{{accepted: {{min_rating: 4}}}}, ...]."
            )
        policy.filters = []
        for entry in raw:
            if isinstance(entry, str):
                name, args = entry, {}
            elif isinstance(entry, dict) and len(entry) == 1:
                ((name, args),) = entry.items()
            else:
                raise RagloopError(f"{origin}: each filter is a name or a one-key mapping, got {entry!r}.")
            if name not in FILTERS:
                raise RagloopError(f"{origin}: unknown filter {name!r}; known filters: {', '.join(FILTERS)}.")
            args = args or {}
            if not isinstance(args, dict) or set(args) - set(FILTERS[name]):
                raise RagloopError(
                    f"{origin}: filter {name!r} takes {sorted(FILTERS[name]) or 'no options'}, got {args!r}."
                )
            policy.filters.append((name, {**FILTERS[name], **args}))
    for section in ("pii", "split", "raft"):
        if section in data:
            value = data[section]
            defaults = getattr(policy, section)
            if not isinstance(value, dict) or set(value) - set(defaults):
                raise RagloopError(f"{origin}: `{section}` takes {sorted(defaults)}, got {value!r}.")
            defaults.update(value)
    if "end_user_corrections" in data:
        value = data["end_user_corrections"]
        if value not in END_USER_CORRECTIONS:
            raise RagloopError(
                f"{origin}: end_user_corrections is one of {', '.join(END_USER_CORRECTIONS)}, got {value!r}."
            )
        policy.end_user_corrections = value
    total = sum(float(policy.split.get(k, 0)) for k in ("train", "val", "test"))
    if abs(total - 1.0) > 1e-6:
        raise RagloopError(f"{origin}: split shares must add up to 1 (got {total}).")
    if policy.raft["policy"] not in ("answer", "abstain") or policy.raft["target"] not in (
        "plain",
        "reasoning",
    ):
        raise RagloopError(f"{origin}: raft.policy is answer|abstain and raft.target plain|reasoning.")
    return policy


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path`` (YAML or JSON), or the default policy."""
    if path is None:
        return Policy()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RagloopError(f"Cannot read policy file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise RagloopError(f"Policy file {path} is not valid YAML/JSON: {exc}") from exc
    return parse_policy(data, str(path))
