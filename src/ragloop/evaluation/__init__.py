"""Stage 8 of the loop: evaluate model versions on QA sets under controlled retrieval conditions.

``conditions`` decides what the model is shown, ``metrics`` scores answers (pure functions), ``run`` generates
and stores runs, ``compare`` compares two runs with paired bootstrap intervals, ``robustness`` reports score
against distractors for several versions, and ``review`` sends eval answers to expert review and measures
how far reviewers agree with the metrics.
"""

from ragloop.evaluation.compare import Comparison, compare_examples, compare_runs
from ragloop.evaluation.conditions import CONDITIONS, DEFAULT_DISTRACTORS
from ragloop.evaluation.metrics import aggregate, cohens_kappa, paired_bootstrap, score_answer
from ragloop.evaluation.review import Agreement, agreement, sample_for_review
from ragloop.evaluation.robustness import RobustnessReport, run_robustness
from ragloop.evaluation.run import EvalConfig, get_run, list_runs, load_eval_data, run_eval, run_examples

__all__ = [
    "CONDITIONS",
    "DEFAULT_DISTRACTORS",
    "Agreement",
    "Comparison",
    "EvalConfig",
    "RobustnessReport",
    "aggregate",
    "agreement",
    "cohens_kappa",
    "compare_examples",
    "compare_runs",
    "get_run",
    "list_runs",
    "load_eval_data",
    "paired_bootstrap",
    "run_eval",
    "run_examples",
    "run_robustness",
    "sample_for_review",
    "score_answer",
]
