"""Scores of one eval answer, their aggregation over a run, and the statistics that compare runs.

Pure functions, no I/O: ``run`` feeds them generated outputs, ``compare`` and ``review`` feed them stored
scores. The answer is read with ``datasets.answers.extract_answer``, the rule RAFT targets are written for,
so a fine-tuned model is scored on exactly what it was taught to say; EM / token F1 follow the SQuAD script,
API calls Gorilla's AST match, and cited statements are checked with curation's ``verify_answer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragloop.curation.refusal import is_refusal
from ragloop.curation.verify import verify_answer
from ragloop.datasets.answers import (
    ABSTAIN_ANSWER,
    LABELS,
    api_call_match,
    exact_match,
    extract_answer,
    normalise_answer,
    token_f1,
)
from ragloop.generation.citations import CITE

# A free-text answer is right when it matches a gold answer exactly, or contains it (as a run of
# normalised tokens) with token F1 >= CORRECT_F1. Strict EM punishes a generative model for "25 days of
# leave" against "25 days"; F1 >= 0.5 alone would pass "30 days" (F1 0.5) and "the capital of England" for
# "the capital of France" (F1 0.67): containment keeps a wrong answer from ever scoring as right, the F1
# floor keeps a ramble that mentions the answer somewhere from counting.
CORRECT_F1 = 0.5
_ABSTAINED = extract_answer(ABSTAIN_ANSWER)

# Stored with every run: 2 judges a statement citing several passages on the passages together (issue 21);
# 1 required each cited passage to support it alone. `ragloop eval rescore RUN` re-scores an older run.
SCORER_VERSION = 2

# Per-example scores that are averaged into a run's metrics (and bootstrapped by ``compare``), with the
# run-level name each one is reported under.
MEAN_SCORES = {
    "correct": "correct",
    "em": "em",
    "f1": "f1",
    "label_correct": "accuracy",
    "api_match": "api_match",
    "citation_precision": "citation_precision",
    "citation_recall": "citation_recall",
    "cites": "cite_rate",
    "grounded": "grounded",
    "cites_unnecessary": "unnecessary_citation_rate",
    "abstained": "abstain_rate",
    "abstain_ok": "abstention_accuracy",
    "false_abstention": "false_abstention_rate",
}


@dataclass
class Scored:
    """One answer scored: the extracted ``prediction`` and the ``scores`` stored in ``EvalExample.scores``
    (None where a score does not apply, e.g. citation recall when no gold passage was shown)."""

    prediction: str
    scores: dict[str, Any]


def abstained(output: str, prediction: str, answer_type: str = "span") -> bool:
    """Whether an output declines to answer: the extracted answer is the abstention sentence, or the
    output is a refusal by curation's rule ("the passages do not mention...", "I don't know"). A label
    question answered with yes / no / maybe has answered, whatever hedging comes before the label."""
    if prediction == _ABSTAINED:
        return True
    if answer_type == "label" and prediction:
        return False
    return is_refusal(output)


def answer_scores(prediction: str, answers: Sequence[str], answer_type: str, refused: bool) -> dict[str, Any]:
    """em, f1, correct (plus label_correct / api_match for those types) of one extracted answer.

    An item without answers is unanswerable (SQuAD v2): only an abstention is right. Otherwise an
    abstention or an empty prediction is always wrong, whatever the normalisation would say ("the" and ""
    both normalise to the empty string)."""
    if not answers:
        return {"em": float(refused), "f1": float(refused), "correct": refused}
    if refused or not prediction.strip():
        out: dict[str, Any] = {"em": 0.0, "f1": 0.0, "correct": False}
        if answer_type == "label":
            out["label_correct"] = False
        if answer_type == "api_call":
            out["api_match"] = False
        return out
    if answer_type == "label":
        right = prediction.lower() in {a.lower() for a in answers}
        return {"em": float(right), "f1": float(right), "correct": right, "label_correct": right}
    em, f1 = exact_match(prediction, answers), token_f1(prediction, answers)
    if not normalise_answer(prediction):  # only articles/punctuation: says nothing
        em, f1 = 0.0, 0.0
    if answer_type == "api_call":
        match = any(api_call_match(prediction, gold) for gold in answers)
        return {"em": em, "f1": f1, "correct": match, "api_match": match}
    return {"em": em, "f1": f1, "correct": em == 1.0 or any(_covers(prediction, g) for g in answers)}


def _covers(prediction: str, gold: str) -> bool:
    """The normalised gold tokens appear, in order and contiguous, in the prediction, and the prediction
    says little else (token F1 >= CORRECT_F1)."""
    pred, want = normalise_answer(prediction).split(), normalise_answer(gold).split()
    if not want or token_f1(prediction, gold) < CORRECT_F1:
        return False
    return any(pred[i : i + len(want)] == want for i in range(len(pred) - len(want) + 1))


def cited_numbers(output: str) -> list[int]:
    """Every [n] the output cites, in order of first appearance ([1, 3] for "... [1][3] ... [1, 3]")."""
    numbers: list[int] = []
    for m in CITE.finditer(output):
        for raw in m.group(1).replace(";", ",").split(","):
            n = int(raw.strip())
            if n not in numbers:
                numbers.append(n)
    return numbers


def citation_scores(output: str, shown_ids: Sequence[str], gold_ids: Sequence[str]) -> dict[str, Any]:
    """Citation precision (share of cited [n] that point at a gold passage; a number outside the shown
    list is a wrong citation) and recall (share of the gold passages shown that are cited). Precision is
    None when nothing is cited, recall when no gold passage was shown."""
    gold = set(gold_ids)
    cited = cited_numbers(output)
    cited_ids = {shown_ids[n - 1] for n in cited if 1 <= n <= len(shown_ids)}
    hits = sum(1 for n in cited if 1 <= n <= len(shown_ids) and shown_ids[n - 1] in gold)
    gold_shown = {i for i in shown_ids if i in gold}
    return {
        "n_cited": len(cited),
        "cites": bool(cited),
        "citation_precision": hits / len(cited) if cited else None,
        "citation_recall": len(cited_ids & gold_shown) / len(gold_shown) if gold_shown else None,
    }


def groundedness(output: str, shown_texts: Sequence[str]) -> bool | None:
    """True when the answer cites (or quotes) something and every cited statement is supported by the
    passages it cites, together (curation's ``verify_answer``: a multi-hop answer citing the passage that
    holds the answer and the bridge passage is grounded); False when one is not, or when an answer shown
    passages cites nothing at all. None when there is nothing to ground (no passages shown)."""
    return grounding(output, shown_texts)[0]


def grounding(output: str, shown_texts: Sequence[str]) -> tuple[bool | None, int | None]:
    """``groundedness`` and the number of unnecessary citations (cited passages that support nothing of
    their statement); both None when no passage was shown."""
    if not shown_texts:
        return None, None
    checks = verify_answer(output, list(shown_texts))
    unnecessary = sum(len(c.unnecessary) for c in checks)
    return bool(checks) and all(c.supported for c in checks), unnecessary


def score_answer(
    output: str,
    answers: Sequence[str],
    answer_type: str,
    shown_ids: Sequence[str],
    shown_texts: Sequence[str],
    gold_ids: Sequence[str],
) -> Scored:
    """Every score of one model output. ``shown_*`` are the passages in the order the prompt numbered
    them; ``gold_ids`` the item's gold passage ids (shown or not)."""
    prediction = extract_answer(output, answer_type)
    refused = abstained(output, prediction, answer_type)
    gold_shown = any(i in set(gold_ids) for i in shown_ids)
    scores: dict[str, Any] = {
        "answer_type": answer_type,
        "answerable": bool(answers),
        "gold_shown": gold_shown,
    }
    scores.update(answer_scores(prediction, answers, answer_type, refused))
    scores.update(citation_scores(output, shown_ids, gold_ids))
    scores["abstained"] = refused
    # Abstaining is right when the answer is not in front of the model, wrong when it is.
    scores["abstain_ok"] = refused if not gold_shown else None
    scores["false_abstention"] = refused if gold_shown and answers else None
    grounded, unnecessary = (None, None) if refused else grounding(output, shown_texts)
    scores["grounded"] = grounded
    # an answer that cites something: does it cite a passage that supports nothing of what it says?
    scores["cites_unnecessary"] = bool(unnecessary) if unnecessary is not None and scores["cites"] else None
    return Scored(prediction, scores)


# --- aggregation ------------------------------------------------------------------------------------


def _mean(values: Sequence[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def macro_f1(gold: Sequence[str], predicted: Sequence[str]) -> float | None:
    """Macro-averaged F1 over the labels (yes / no / maybe) that occur in the gold or the predictions, as
    PubMedQA reports it; a prediction that is no label ("") counts as wrong for its gold class."""
    if not gold:
        return None
    classes = [c for c in LABELS if c in gold or c in predicted]
    f1s = []
    for c in classes:
        tp = sum(1 for g, p in zip(gold, predicted, strict=True) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, predicted, strict=True) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, predicted, strict=True) if g == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s) if f1s else None


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A run's metrics from its examples (dicts with ``scores``, ``prediction``, ``answers`` and
    ``latency_ms``). Averages are over the examples where a score applies; None where none does."""
    scores = [r["scores"] for r in rows]
    out: dict[str, Any] = {
        "n": len(rows),
        "n_unanswerable": sum(1 for s in scores if not s.get("answerable", True)),
        # How many answers of each kind: a set is scored by the metric of the kind most of it is.
        "n_label": sum(1 for s in scores if s.get("answer_type") == "label"),
        "n_api_call": sum(1 for s in scores if s.get("answer_type") == "api_call"),
    }
    for key, name in MEAN_SCORES.items():
        value = _mean([s.get(key) for s in scores])
        if value is not None or key in ("correct", "em", "f1", "abstained"):
            out[name] = value
    labels = [
        (r["answers"][0].lower(), r["prediction"])
        for r in rows
        if r["scores"].get("answer_type") == "label" and r["answers"]
    ]
    if labels:
        out["macro_f1"] = macro_f1([g for g, _ in labels], [p for _, p in labels])
    latencies = [float(r.get("latency_ms") or 0.0) for r in rows]
    if latencies:
        out["latency_ms_mean"] = float(np.mean(latencies))
        out["latency_ms_p50"] = float(np.percentile(latencies, 50))
        out["latency_ms_p95"] = float(np.percentile(latencies, 95))
    for key in ("prompt_tokens", "completion_tokens"):
        value = _mean([s.get(key) for s in scores])
        if value is not None:
            out[f"{key}_mean"] = value
    return out


def primary_metric(metrics: dict[str, Any]) -> str:
    """The headline number of a run: label accuracy for yes/no/maybe sets, API match for API sets, else
    token F1 (what the robustness report plots). A set is a label (API) set when most of its answers are
    labels (API calls): HotpotQA's few yes/no comparison questions leave it a span set, scored by F1. (Runs
    stored before the counts existed: any label answer made it a label set.)"""
    n = metrics.get("n") or 0
    for name, count in (("accuracy", "n_label"), ("api_match", "n_api_call")):
        if metrics.get(name) is None:
            continue
        if metrics.get(count) is None or 2 * metrics[count] > n:
            return name
    return "f1"


# --- statistics -------------------------------------------------------------------------------------


@dataclass
class Interval:
    """A paired difference B - A with its bootstrap confidence interval, over ``n`` paired examples."""

    diff: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    statistic: Callable[[np.ndarray], float] | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval | None:
    """Percentile bootstrap of statistic(B) - statistic(A) over paired examples (the same examples are
    resampled on both sides, which is what makes small differences between two models detectable).
    Pairs where either side is None are left out; None when no pair remains. ``statistic`` (default: the
    mean) maps an (n,) array, or a (resamples, n) array row-wise, to numbers."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return None
    xa = np.array([p[0] for p in pairs])
    xb = np.array([p[1] for p in pairs])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
    if statistic is None:
        diffs = xb[idx].mean(axis=1) - xa[idx].mean(axis=1)
        point = float(xb.mean() - xa.mean())
    else:
        diffs = np.array([statistic(xb[i]) - statistic(xa[i]) for i in idx])
        point = float(statistic(xb) - statistic(xa))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Interval(point, float(low), float(high), len(pairs))


def cohens_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters: agreement beyond what their label rates give by chance.
    None without pairs; 1.0 when both always give the same single label (no chance to disagree)."""
    if not a:
        return None
    n = len(a)
    observed = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected == 1.0:
        return 1.0
    return (observed - expected) / (1 - expected)
