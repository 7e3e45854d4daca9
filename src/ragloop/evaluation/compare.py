"""Compare two eval runs on the questions both answered: paired bootstrap confidence intervals of every
metric's difference B - A, and the questions whose verdict changed.

Pairing is what makes a comparison of two models on a few hundred questions worth anything: both runs are
resampled on the same questions, so the question-to-question variance, much larger than the difference
between two checkpoints, cancels out. A difference whose interval excludes 0 is one to believe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from ragloop.config import Settings
from ragloop.datasets.answers import LABELS
from ragloop.evaluation.metrics import MEAN_SCORES, Interval, macro_f1, paired_bootstrap
from ragloop.evaluation.run import get_run, run_examples

RESAMPLES = 2000


@dataclass
class MetricDiff:
    """One metric on the common questions: A's and B's values and the interval of B - A (None when the
    metric applies to no common question)."""

    name: str
    a: float | None
    b: float | None
    interval: Interval | None


@dataclass
class VerdictChange:
    example_id: str
    question: str
    answers: list[str]
    prediction_a: str
    prediction_b: str
    change: str  # "right→wrong" | "wrong→right"


@dataclass
class Comparison:
    run_a: dict[str, Any]
    run_b: dict[str, Any]
    n_common: int
    metrics: list[MetricDiff] = field(default_factory=list)
    changed: list[VerdictChange] = field(default_factory=list)

    @property
    def regressions(self) -> list[VerdictChange]:
        return [c for c in self.changed if c.change == "right→wrong"]

    @property
    def improvements(self) -> list[VerdictChange]:
        return [c for c in self.changed if c.change == "wrong→right"]


def _value(v: Any) -> float | None:
    return None if v is None else float(v)


_CODES = {label: i for i, label in enumerate(LABELS)}


def _label_code(gold: str, predicted: str) -> float:
    """A (gold, predicted) label pair packed into one number, so the generic paired bootstrap can
    resample it; ``_macro_f1_codes`` unpacks it. Gold is the same on both sides: the pairing keeps it."""
    return float(_CODES.get(gold, 3) * 4 + _CODES.get(predicted, 3))


def _macro_f1_codes(codes: np.ndarray) -> float:
    names = [*LABELS, ""]
    gold = [names[int(c) // 4] for c in codes]
    predicted = [names[int(c) % 4] for c in codes]
    return macro_f1(gold, predicted) or 0.0


def compare_examples(
    rows_a: Sequence[dict[str, Any]],
    rows_b: Sequence[dict[str, Any]],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[int, list[MetricDiff], list[VerdictChange]]:
    """The comparison of two runs' examples (dicts with example_id, question, answers, prediction, scores,
    latency_ms): (number of common questions, metric differences, verdict changes)."""
    by_b = {r["example_id"]: r for r in rows_b}
    pairs = [(r, by_b[r["example_id"]]) for r in rows_a if r["example_id"] in by_b]
    metrics: list[MetricDiff] = []
    for key, name in MEAN_SCORES.items():
        a = [_value(x["scores"].get(key)) for x, _ in pairs]
        b = [_value(y["scores"].get(key)) for _, y in pairs]
        both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
        if not both:
            continue
        interval = paired_bootstrap(a, b, resamples=resamples, seed=seed)
        metrics.append(
            MetricDiff(
                name, float(np.mean([x for x, _ in both])), float(np.mean([y for _, y in both])), interval
            )
        )
    labels = [(x, y) for x, y in pairs if x["scores"].get("answer_type") == "label" and x["answers"]]
    if labels:
        a = [_label_code(x["answers"][0].lower(), x["prediction"]) for x, _ in labels]
        b = [_label_code(x["answers"][0].lower(), y["prediction"]) for x, y in labels]
        interval = paired_bootstrap(a, b, statistic=_macro_f1_codes, resamples=resamples, seed=seed)
        metrics.append(
            MetricDiff("macro_f1", _macro_f1_codes(np.array(a)), _macro_f1_codes(np.array(b)), interval)
        )
    lat_a = [_value(x.get("latency_ms")) for x, _ in pairs]
    lat_b = [_value(y.get("latency_ms")) for _, y in pairs]
    if pairs:
        interval = paired_bootstrap(lat_a, lat_b, resamples=resamples, seed=seed)
        metrics.append(MetricDiff("latency_ms", float(np.mean(lat_a)), float(np.mean(lat_b)), interval))
    changed = []
    for x, y in pairs:
        ra, rb = bool(x["scores"].get("correct")), bool(y["scores"].get("correct"))
        if ra != rb:
            changed.append(VerdictChange(x["example_id"], x["question"], list(x["answers"]), x["prediction"],
                                         y["prediction"], "right→wrong" if ra else "wrong→right"))  # fmt: skip
    return len(pairs), metrics, changed


def _row(e: Any) -> dict[str, Any]:
    return {"example_id": e.example_id, "question": e.question, "answers": e.answers, "prediction": e.prediction,
            "scores": e.scores or {}, "latency_ms": e.latency_ms}  # fmt: skip


def _summary(run: Any) -> dict[str, Any]:
    return {"id": run.id, "model_version": run.model_version, "dataset": run.dataset, "condition": run.condition,
            "k": run.n_distractors, "n": run.n_examples, "created_at": run.created_at.isoformat(timespec="seconds")}  # fmt: skip


def compare_runs(
    settings: Settings, run_a: str, run_b: str, *, resamples: int = RESAMPLES, seed: int = 0
) -> Comparison:
    """Compare two stored runs (ids or unique prefixes) on their common questions."""
    a, b = get_run(settings, run_a), get_run(settings, run_b)
    rows_a = [_row(e) for e in run_examples(settings, a.id)]
    rows_b = [_row(e) for e in run_examples(settings, b.id)]
    n, metrics, changed = compare_examples(rows_a, rows_b, resamples=resamples, seed=seed)
    return Comparison(_summary(a), _summary(b), n, metrics, changed)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


# Metrics where a drop is the improvement: an unnecessary citation points a reader at a passage that says
# nothing of the answer.
LOWER_IS_BETTER = frozenset({"unnecessary_citation_rate"})


def comparison_tables(c: Comparison, max_changes: int = 20) -> list[Table]:
    """Rich tables for the CLI: the metrics with their intervals, then the changed verdicts."""
    a, b = c.run_a, c.run_b
    title = (f"A {a['id'][:8]} ({a['model_version']}, {a['condition']}) vs B {b['id'][:8]} "
             f"({b['model_version']}, {b['condition']}) on {c.n_common} common questions")  # fmt: skip
    metrics = Table("metric", "A", "B", "B − A", "95% CI", "n", "", title=title)
    for m in c.metrics:
        iv = m.interval
        up = iv is not None and (iv.diff < 0 if m.name in LOWER_IS_BETTER else iv.diff > 0)
        mark = "" if iv is None or not iv.excludes_zero else ("[green]better[/]" if up else "[red]worse[/]")
        if m.name in ("latency_ms", "abstain_rate", "false_abstention_rate") and mark:
            mark = "[yellow]differs[/]"  # no universal "better" direction for these
        metrics.add_row(m.name, _fmt(m.a), _fmt(m.b), "–" if iv is None else f"{iv.diff:+.3f}",
                        "–" if iv is None else f"[{iv.low:+.3f}, {iv.high:+.3f}]", str(iv.n if iv else 0), mark)  # fmt: skip
    changes = Table("change", "example", "question", "gold", "A said", "B said",
                    title=f"{len(c.regressions)} right→wrong, {len(c.improvements)} wrong→right")  # fmt: skip
    for ch in (c.regressions + c.improvements)[:max_changes]:
        colour = "red" if ch.change == "right→wrong" else "green"
        # Text, not markup: questions and answers are data ("[1]" must print as written).
        changes.add_row(f"[{colour}]{ch.change}[/]", Text(ch.example_id[:16]), Text(ch.question[:60]),
                        Text(" | ".join(ch.answers)[:30]), Text(ch.prediction_a[:40]), Text(ch.prediction_b[:40]))  # fmt: skip
    return [metrics, changes]
