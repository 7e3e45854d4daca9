"""Curation: recorded interactions + their feedback -> candidates that passed every filter of a policy.

Each candidate carries the passages exactly as the model saw them (read back at the recorded KB version),
followed by any evidence a reviewer pinned that the retriever had missed, the target answer (a reviewer's
correction wins over the model's answer), which passages are the oracle (marked gold or pinned as evidence
by a reviewer, else cited by an accepted answer) and, for preference data, the rejected answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ragloop.config import Settings
from ragloop.curation.dedupe import find_duplicates
from ragloop.curation.policy import Policy
from ragloop.curation.refusal import is_refusal
from ragloop.curation.verify import DEFAULT_THRESHOLD, verify_answer, verify_statement
from ragloop.feedback.service import Judgement, judgement
from ragloop.generation.citations import CITE, parse_citations, split_sentences
from ragloop.generation.replay import ShownPassage, fetch_rows, rows_by_version, shown_passages
from ragloop.store.db import session_scope
from ragloop.store.models import Feedback, Interaction


@dataclass
class Candidate:
    interaction_id: str
    conversation_id: str
    kb_version: int | None
    question: str
    passages: list[ShownPassage]
    answer: str  # the target: a correction if a reviewer gave one, else the model's answer
    from_correction: bool
    judgement: Judgement
    model_answer: str
    oracle_ranks: list[int] = field(default_factory=list)
    shown: int = 0  # passages[:shown] were shown to the model; the rest is evidence a reviewer added

    @property
    def rejected(self) -> str | None:
        """The answer a reviewer rejected (thumbs down, then corrected): the 'rejected' side of a DPO pair."""
        if (
            self.from_correction
            and self.judgement.thumbs_down
            and self.model_answer.strip() != self.answer.strip()
        ):
            return self.model_answer
        return None


@dataclass
class FilterReport:
    name: str
    before: int
    dropped: int
    reasons: dict[str, int] = field(default_factory=dict)


def load_candidates(
    settings: Settings, interaction_ids: list[str] | None = None, *, policy: Policy | None = None
) -> list[Candidate]:
    """Every recorded interaction (or the given ones) as a candidate, oldest first. Feedback is folded as
    ``policy`` (default: the default policy) says to treat end users' corrections."""
    end_user = (policy or Policy()).end_user_corrections
    from ragloop.ingest.kb import KnowledgeBase  # LanceDB: only when the knowledge base is read

    kb = KnowledgeBase(settings)
    out: list[Candidate] = []
    with session_scope(settings.db_url) as s:
        q = (
            select(Interaction)
            .options(selectinload(Interaction.passages))
            .order_by(Interaction.created_at, Interaction.id)
        )
        if interaction_ids is not None:
            q = q.where(Interaction.id.in_(interaction_ids))
        # Eval answers are reviewed, never trained on: they would leak the evaluation set into training.
        q = q.where(Interaction.source != "eval")
        interactions = list(s.scalars(q))
        feedback: dict[str, list[Feedback]] = {}
        ids = [i.id for i in interactions]
        for fb in s.scalars(select(Feedback).where(Feedback.interaction_id.in_(ids))) if ids else []:
            feedback.setdefault(fb.interaction_id, []).append(fb)
    rows = fetch_rows(kb, interactions)
    judgements = {
        i.id: judgement(feedback.get(i.id, []), end_user_corrections=end_user) for i in interactions
    }
    rows.update(_evidence_rows(kb, judgements.values()))
    for i in interactions:
        passages, _problems = shown_passages(kb, i, rows)
        j = judgements[i.id]
        answer = j.corrected_answer or i.answer
        cited = sorted({c["n"] for c in parse_citations(answer, passages) if c.get("valid")})
        shown = len(passages)
        passages += _evidence_passages(j, rows, {p.chunk_id for p in passages})
        evidence_ranks = list(range(shown + 1, len(passages) + 1))
        out.append(
            Candidate(
                interaction_id=i.id,
                conversation_id=i.conversation_id,
                kb_version=i.kb_version,
                question=i.messages[-1]["content"],
                passages=passages,
                answer=answer,
                from_correction=bool(j.corrected_answer),
                judgement=j,
                model_answer=i.answer,
                oracle_ranks=sorted(set(j.gold_ranks or cited) | set(evidence_ranks)),
                shown=shown,
            )
        )
    return out


def _evidence_rows(kb, judgements) -> dict[tuple[int | None, str], dict]:  # type: ignore[no-untyped-def]
    """Rows of every pinned evidence passage, batched per KB version as the shown passages are."""
    wanted: dict[int | None, set[str]] = {}
    for j in judgements:
        for e in j.evidence:
            wanted.setdefault(e.get("kb_version"), set()).add(e["chunk_id"])
    return rows_by_version(kb, wanted)


def _evidence_passages(j: Judgement, rows: dict, shown_ids: set[str]) -> list[ShownPassage]:
    """The reviewer's evidence as passages, read at its pinned version. One whose text no longer matches
    its pinned hash (or that is gone) is left out: training must see what the reviewer vouched for."""
    out = []
    for e in j.evidence:
        row = rows.get((e.get("kb_version"), e["chunk_id"]))
        if e["chunk_id"] in shown_ids or row is None:
            continue
        if hashlib.sha256(row["text"].encode("utf-8")).hexdigest() != e.get("text_sha256"):
            continue
        out.append(
            ShownPassage(
                e["chunk_id"], row["doc_id"], row["title"], row["source_path"], row["section"], row["text"]
            )
        )
    return out


def _accepted(c: Candidate, min_rating: int, allow_unreviewed: bool) -> str | None:
    j = c.judgement
    if j.awaiting_review:  # an end user says it is wrong; a reviewer decides (policy end_user_corrections)
        return "end-user correction awaiting review"
    if c.from_correction:
        return None
    if j.accepted is None:
        return None if allow_unreviewed else "unreviewed"
    if not j.accepted:
        return "rejected"
    if j.mean_rating is not None and j.mean_rating < min_rating:
        return "low rating"
    return None


def _cites(c: Candidate) -> str | None:
    """Training data needs a passage to read the answer from: one the answer cites, one a reviewer marked
    gold, or evidence a reviewer pinned. Without any, the example would teach answering from memory."""
    return None if c.oracle_ranks else "cites no shown passage, no evidence"


def _verified(c: Candidate, threshold: float | None) -> str | None:
    """Every cited (or quoted) statement must be supported by the passages it cites (together: a multi-hop
    answer citing its bridge passage is kept, ``verify_cited``). An answer that cites nothing
    (its oracle came from a reviewer's gold marks) must have every sentence supported by an oracle passage:
    a thumbs-up on a fluent but unfounded answer must not turn it into training data."""
    if c.from_correction:  # a reviewer wrote it against the passages: trusted
        return None
    t = threshold if threshold is not None else DEFAULT_THRESHOLD
    texts = [p.text for p in c.passages]
    checks = verify_answer(c.answer, texts, t)
    if checks:
        return "unsupported citation" if any(not check.supported for check in checks) else None
    oracle = [texts[r - 1] for r in c.oracle_ranks if 1 <= r <= len(texts)]
    for s, e in split_sentences(c.answer):
        if not any(verify_statement(c.answer[s:e], p, t).supported for p in oracle):
            return "unsupported statement"
    return None


def _refusal(c: Candidate) -> str | None:
    return "refusal" if is_refusal(c.answer) else None


def _length(
    c: Candidate,
    min_question_chars: int,
    max_question_chars: int,
    min_answer_chars: int,
    max_answer_chars: int,
) -> str | None:
    q, a = len(c.question.strip()), len(CITE.sub("", c.answer).strip())
    if not min_question_chars <= q <= max_question_chars:
        return "question length"
    if not min_answer_chars <= a <= max_answer_chars:
        return "answer length"
    return None


CHECKS: dict[str, Callable[..., str | None]] = {
    "accepted": _accepted,
    "cites_shown_passage": _cites,
    "verify_citations": _verified,
    "refusal": _refusal,
    "length": _length,
}


def apply_filters(candidates: list[Candidate], policy: Policy) -> tuple[list[Candidate], list[FilterReport]]:
    """Run the policy's filters in order; each reports how many it dropped and why."""
    reports = []
    for name, args in policy.filters:
        before = len(candidates)
        report = FilterReport(name, before, 0)
        if name == "dedupe":
            drop = set(find_duplicates([c.question for c in candidates], threshold=args["threshold"]))
            if drop:
                report.reasons["duplicate question"] = len(drop)
            candidates = [c for k, c in enumerate(candidates) if k not in drop]
        else:
            kept = []
            for c in candidates:
                reason = CHECKS[name](c, **args)
                if reason is None:
                    kept.append(c)
                else:
                    report.reasons[reason] = report.reasons.get(reason, 0) + 1
            candidates = kept
        report.dropped = before - len(candidates)
        reports.append(report)
    return candidates, reports
