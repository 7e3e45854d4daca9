"""Expert review of eval answers, and how far reviewers agree with the automatic metrics.

Sampled answers go through the same review queue as live traffic: each becomes a shadow Interaction
(``source="eval"``) with the question, the passages shown and the output, linked from its EvalExample.
Eval passages are often in no knowledge base, so their texts travel in the shadow interaction itself:
``Interaction.filters = {"eval_passages": [{rank, passage_id, title, source_path, section, text}], "eval_run",
"example_id"}``, which the review page shows instead of reading chunks from the KB. The passages are not
stored with the run; they are rebuilt from the run's recorded config and checked against the stored prompt
sha256, so what a reviewer sees is exactly what the model saw.

Agreement answers "can we trust the numbers?": the share of reviewed answers where "the metric says right
(F1 >= 0.5, label or API match)" equals "the reviewer says good (thumbs up / rating >= 4)", and Cohen's kappa.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.evaluation.metrics import cohens_kappa
from ragloop.evaluation.run import get_run, rebuild_cases, run_examples
from ragloop.feedback.service import judgement
from ragloop.generation.citations import parse_citations
from ragloop.store.db import session_scope
from ragloop.store.models import EvalExample, Feedback, Interaction, Passage, ReviewItem

EVAL_QUEUE = "eval"  # its own queue: /review?queue=eval; live traffic's queue stays as it was


def pick_for_review(examples: list[Any], n: int, seed: int) -> list[Any]:
    """Up to ``n`` examples, alternating between those scored right and wrong (random within each): a
    sample of only one verdict could not show whether reviewers and metric disagree on the other."""
    rng = random.Random(seed)
    right = [e for e in examples if (e.scores or {}).get("correct")]
    wrong = [e for e in examples if not (e.scores or {}).get("correct")]
    rng.shuffle(right)
    rng.shuffle(wrong)
    out: list[Any] = []
    while len(out) < n and (right or wrong):
        for group in (wrong, right):
            if group and len(out) < n:
                out.append(group.pop())
    return out


def sample_for_review(
    settings: Settings, run_id: str, n: int = 20, *, seed: int = 0, queue: str = EVAL_QUEUE
) -> list[str]:
    """Queue ``n`` not yet reviewed answers of a run for expert review; returns the shadow interaction ids."""
    run = get_run(settings, run_id)
    if run.status != "done":
        raise RagloopError(f"Eval run {run.id} is {run.status}; only finished runs can be reviewed.")
    pending = [e for e in run_examples(settings, run.id) if e.interaction_id is None]
    chosen = pick_for_review(pending, n, seed)
    if not chosen:
        return []
    cases = rebuild_cases(settings, run, chosen)
    template = run.config.get("template") or {}
    ids = []
    with session_scope(settings.db_url) as s:
        for priority, e in enumerate(chosen):
            interaction = _shadow(run, e, cases[e.example_id], template)
            s.add(interaction)
            s.flush()
            s.add(ReviewItem(queue=queue, interaction_id=interaction.id, reason="eval", priority=priority))
            row = s.get(EvalExample, e.id)
            row.interaction_id = interaction.id
            ids.append(interaction.id)
    return ids


def _shadow(run: Any, e: EvalExample, case: Any, template: dict[str, Any]) -> Interaction:
    """The shadow Interaction of one eval answer (see the module docstring for where the passages go)."""
    from ragloop.generation.assistant import thread_sha256

    messages = [{"role": "user", "content": e.question}]
    citations = parse_citations(e.output, case.passages)
    for c in citations:
        if c.get("valid"):
            c["passage_id"] = case.passages[c["n"] - 1].id
    scores = e.scores or {}
    kb_version = case.kb_version or 0
    retrieval = scores.get("retrieval_scores") or []
    shown = [{"rank": rank, "passage_id": p.id, "title": p.title, "source_path": p.source_path, "section": p.section,
              "text": p.text} for rank, p in enumerate(case.passages, 1)]  # fmt: skip
    return Interaction(
        conversation_id=f"eval-{run.id}",
        turn_index=0,
        source="eval",
        messages=messages,
        thread_sha256=thread_sha256([*messages, {"role": "assistant", "content": e.output}]),
        retrieval_query=e.question,
        filters={"eval_passages": shown, "eval_run": run.id, "example_id": e.example_id},
        kb_version=case.kb_version,
        template_id=template.get("id", "cited-answer"),
        template_version=int(template.get("version", 1)),
        prompt_sha256=e.prompt_sha256,
        model_version=run.model_version,
        model_alias=run.config.get("model_alias"),
        gen_params=run.config.get("gen_params") or {},
        answer=e.output,
        citations=citations,
        finish_reason=scores.get("finish_reason", "stop"),
        prompt_tokens=int(scores.get("prompt_tokens") or 0),
        completion_tokens=int(scores.get("completion_tokens") or 0),
        latency_generate_ms=e.latency_ms,
        latency_total_ms=e.latency_ms,
        passages=[
            Passage(
                rank=rank,
                chunk_id=p.id[:64],
                doc_id=p.id[:64],
                collection="eval",
                source_path=p.source_path,
                title=p.title,
                section=p.section,
                text_sha256=hashlib.sha256(p.text.encode("utf-8")).hexdigest(),
                kb_version=kb_version,
                score=float(retrieval[rank - 1]) if rank <= len(retrieval) else 0.0,
            )
            for rank, p in enumerate(case.passages, 1)
        ],
    )


@dataclass
class Agreement:
    """Reviewers vs the automatic verdict on one run's reviewed answers."""

    run_id: str
    n_queued: int
    n_judged: int
    accuracy: float | None  # share where metric and reviewer agree
    kappa: float | None
    confusion: dict[str, int] = field(default_factory=dict)  # metric_right/wrong x reviewer_up/down
    reviewers: list[str] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)


def agreement_stats(auto: list[bool], human: list[bool]) -> tuple[float | None, float | None, dict[str, int]]:
    """(accuracy, Cohen's kappa, confusion counts) of paired automatic and human verdicts."""
    confusion = {
        f"metric_{'right' if a else 'wrong'}_reviewer_{'up' if h else 'down'}": 0
        for a in (True, False)
        for h in (True, False)
    }
    for a, h in zip(auto, human, strict=True):
        confusion[f"metric_{'right' if a else 'wrong'}_reviewer_{'up' if h else 'down'}"] += 1
    if not auto:
        return None, None, confusion
    accuracy = sum(1 for a, h in zip(auto, human, strict=True) if a == h) / len(auto)
    return accuracy, cohens_kappa(auto, human), confusion


def agreement(settings: Settings, run_id: str) -> Agreement:
    """Fold each reviewed answer's feedback (latest per reviewer; any reviewer's thumbs-down or low rating
    makes it "down") and compare it with the metric's verdict."""
    run = get_run(settings, run_id)
    linked = [e for e in run_examples(settings, run.id) if e.interaction_id]
    with session_scope(settings.db_url) as s:
        ids = [e.interaction_id for e in linked]
        feedback: dict[str, list[Feedback]] = {}
        for fb in s.scalars(select(Feedback).where(Feedback.interaction_id.in_(ids))) if ids else []:
            feedback.setdefault(fb.interaction_id, []).append(fb)
        s.expunge_all()
    auto, human, reviewers, disagreements = [], [], set(), []
    for e in linked:
        j = judgement(feedback.get(e.interaction_id or "", []))
        if j.accepted is None:
            continue
        reviewers.update(j.reviewers)
        verdict = bool((e.scores or {}).get("correct"))
        auto.append(verdict)
        human.append(j.accepted)
        if verdict != j.accepted:
            disagreements.append({"example_id": e.example_id, "interaction_id": e.interaction_id, "metric_right": verdict,
                                  "reviewer_up": j.accepted, "prediction": e.prediction, "answers": e.answers})  # fmt: skip
    accuracy, kappa, confusion = agreement_stats(auto, human)
    return Agreement(
        run.id, len(linked), len(auto), accuracy, kappa, confusion, sorted(reviewers), disagreements
    )
