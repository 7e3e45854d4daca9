"""Robustness report: how each model version's score holds up as distractors are added and when the gold
passage is removed altogether, as a Markdown table and a plot.

This is the question RAFT training is meant to answer ("does the fine-tuned model ignore irrelevant
passages better than the base model, and does it abstain when the answer is not there?"), so the report
puts several versions side by side on the same questions. Runs already stored with the same key (same
model, data, condition, k, sample, seeds, generation settings) are reused rather than generated again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.evaluation.metrics import primary_metric
from ragloop.evaluation.run import EvalConfig, reusable_run, run_eval


@dataclass
class RobustnessRow:
    model: str  # as asked (alias or id)
    model_version: str
    condition: str  # distractors (with gold) | no-gold
    k: int
    run_id: str
    reused: bool
    metrics: dict[str, Any]


@dataclass
class RobustnessReport:
    rows: list[RobustnessRow]
    metric: str
    markdown: Path
    png: Path
    svg: Path


def plan(distractors: Sequence[int], no_gold: bool) -> list[tuple[str, int]]:
    """(condition, k) pairs: the gold with each number of distractors, then (with ``no_gold``) the same
    numbers of distractors without the gold (k=0 without gold would be closed-book: left out)."""
    ks = sorted(set(distractors))
    if not ks or ks[0] < 0:
        raise RagloopError("--distractors takes numbers >= 0, e.g. 0,2,4,8.")
    steps = [("distractors", k) for k in ks]
    if no_gold:
        steps += [("no-gold", k) for k in ks if k > 0]
    return steps


def run_robustness(
    settings: Settings,
    models: Sequence[str],
    base: EvalConfig,
    distractors: Sequence[int],
    out_dir: Path,
    *,
    no_gold: bool = False,
    reuse: bool = True,
    on_step: Callable[[str, str, int, bool], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RobustnessReport:
    """Run (or reuse) every (model, condition, k) of the plan on ``base``'s data and sample, then write
    ``robustness.md``, ``robustness.png`` and ``robustness.svg`` to ``out_dir``. ``on_step(model,
    condition, k, reused)`` is called before each step."""
    from ragloop.generation.assistant import Assistant

    if not models:
        raise RagloopError("Name at least one model version with --model (repeat it to compare several).")
    # Registers the base version (needed to resolve "base" before any run); weights load on first use only.
    assistant = Assistant(settings)
    rows = []
    for model in models:
        for condition, k in plan(distractors, no_gold):
            config = replace(base, model=model, condition=condition, n_distractors=k)
            run = reusable_run(settings, config) if reuse else None
            if on_step:
                on_step(model, condition, k, run is not None)
            reused = run is not None
            if run is None:
                run = run_eval(settings, config, assistant=assistant, progress=progress)
            rows.append(RobustnessRow(model, run.model_version, condition, k, run.id, reused, run.metrics))
    metric = primary_metric(rows[0].metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "robustness.md"
    markdown.write_text(markdown_report(rows, metric, base), encoding="utf-8")
    png, svg = plot(rows, metric, out_dir / "robustness")
    return RobustnessReport(rows, metric, markdown, png, svg)


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def pivot_table(rows: Sequence[RobustnessRow], metric: str, fmt: Callable[[Any], str] = _fmt) -> str:
    """The headline metric as one line per model and one column per k (k = 0 is the gold alone), the
    gold-removed runs in a last column: the curve of the plot, as numbers to read across."""
    ks = sorted({r.k for r in rows if r.condition == "distractors"})
    removed = sorted({r.k for r in rows if r.condition == "no-gold"})
    cols = [("distractors", k) for k in ks] + [("no-gold", k) for k in removed]
    names = [f"k = {k}" + (" (gold alone)" if k == 0 else "") for k in ks] + [
        f"gold removed, k = {k}" for k in removed
    ]
    lines = [f"| model ({metric}) | " + " | ".join(names) + " |", "|" + "---|" * (len(cols) + 1)]
    for model in dict.fromkeys(r.model for r in rows):
        cell = {(r.condition, r.k): r.metrics.get(metric) for r in rows if r.model == model}
        lines.append(f"| {model} | " + " | ".join(fmt(cell[c]) if c in cell else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(rows: Sequence[RobustnessRow], metric: str, base: EvalConfig) -> str:
    """The table of the report: one row per run, the headline metric first."""
    columns = [
        metric,
        "em",
        "f1",
        "correct",
        "citation_precision",
        "citation_recall",
        "grounded",
        "abstain_rate",
    ]
    columns = list(dict.fromkeys(columns))
    lines = [
        "# Robustness to distractors",
        "",
        f"Data: `{base.data}`"
        + (f" (sample of {base.limit}, seed {base.sample_seed})" if base.limit else "")
        + f"; passage seed {base.seed}. `distractors` shows the gold passage(s) with k distractors, `no-gold` "
        "k distractors only (the right answer is then an abstention).",
        "",
        pivot_table(rows, metric),
        "| model | version | condition | k | n | " + " | ".join(columns) + " | run |",
        "|" + "---|" * (len(columns) + 6),
    ]
    for r in rows:
        values = " | ".join(_fmt(r.metrics.get(c)) for c in columns)
        run = r.run_id[:12] + (" (reused)" if r.reused else "")
        lines.append(
            f"| {r.model} | {r.model_version} | {r.condition} | {r.k} | {r.metrics.get('n')} | {values} | {run} |"
        )
    return "\n".join(lines) + "\n"


def _value(metrics: dict, name: str) -> float:
    """A metric to plot; NaN (a gap, not a zero) where the run has none."""
    return float("nan") if metrics.get(name) is None else metrics[name]


def plot(rows: Sequence[RobustnessRow], metric: str, stem: Path) -> tuple[Path, Path]:
    """Two panels, the headline metric and the abstention rate, against the number of distractors; one
    colour per model. With the gold shown the points are joined by a line (k = 0 is gold alone); with the gold
    removed, a cross in a column of its own at the right ("gold removed"), so the two conditions never sit on
    top of each other at the same k. Written as PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is written from a CLI or a job
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = list(dict.fromkeys(r.model for r in rows))
    shown_ks = sorted({r.k for r in rows if r.condition == "distractors"}) or [0]
    removed_ks = sorted({r.k for r in rows if r.condition == "no-gold"})
    x_removed = shown_ks[-1] + max(2, (shown_ks[-1] - shown_ks[0]) / 4)
    tops = {metric: 0.0, "abstain_rate": 0.0}
    for i, model in enumerate(models):
        colour = colours[i % len(colours)]
        shown = sorted((r.k, r.metrics) for r in rows if r.model == model and r.condition == "distractors")
        removed = [r.metrics for r in rows if r.model == model and r.condition == "no-gold"]
        for ax, name in ((axes[0], metric), (axes[1], "abstain_rate")):
            ys = [_value(m, name) for _, m in shown]
            if shown:
                ax.plot([k for k, _ in shown], ys, "-o", color=colour)
            ry = [_value(m, name) for m in removed]
            if removed:
                ax.plot([x_removed] * len(ry), ry, "x", color=colour, markersize=9, markeredgewidth=2)
            tops[name] = max([tops[name], *(y for y in ys + ry if y == y)])
    for ax, name, label in ((axes[0], metric, metric), (axes[1], "abstain_rate", "abstention rate")):
        ax.set_ylabel(label)
        ax.set_xlabel("distractors shown with the gold (k; 0 = gold alone)")
        ax.set_xticks([*shown_ks, x_removed])
        removed_label = f"gold removed\n(k={removed_ks[0]})" if len(removed_ks) == 1 else "gold removed"
        ax.set_xticklabels([*map(str, shown_ks), removed_label])
        ax.axvline((shown_ks[-1] + x_removed) / 2, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylim(-0.02, min(1.02, max(0.1, tops[name] * 1.15 + 0.02)))
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=colours[i % len(colours)], marker="o", label=m) for i, m in enumerate(models)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(models)), fontsize=8, frameon=False)
    fig.suptitle(f"{metric} against the number of distractors, and with the gold passage removed (×)")
    fig.tight_layout(rect=(0, 0.06 * ((len(models) + 2) // 3), 1, 1))
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=120)
    fig.savefig(svg)
    plt.close(fig)
    return png, svg
