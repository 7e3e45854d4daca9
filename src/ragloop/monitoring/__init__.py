"""Stage 9 of the loop, the last: release and watch. A candidate model version earns production on live
traffic instead of being promoted blind: A/B experiments now, drift monitoring later.

``stats`` holds the statistics of an experiment, pure functions with no I/O: always-valid confidence
sequences for the difference between arms (so the experiment may be looked at after every request without
inflating false positives), their verdict, the split of alpha across guardrails, hard limits, and the
sample-ratio-mismatch check. See docs/ab.md, "Statistics". ``metrics`` reads what each arm did from the
records; ``ab`` starts, reports, stops and promotes experiments, and is the check a running server makes
(snapshots, automatic rollback, ramp stages). See docs/ab.md, "Running an experiment".
``drift_stats`` holds the statistics of drift monitoring, pure too (docs/drift.md, "False alarms and power, measured").
``alerts`` records what the unattended checks (drift, guardrail rollbacks) want a person to see, once per
open condition, and posts it to the configured webhook (docs/drift.md, "Alerts").
"""

from ragloop.monitoring.stats import (
    DEFAULT_ALPHA,
    DEFAULT_TUNING_N,
    HARD_LIMIT_MIN_N,
    MIN_UNITS_PER_ARM,
    SRM_P,
    VARIANCE_PRIOR_UNITS,
    Interval,
    breaks_limit,
    confidence_sequence,
    per_unit,
    running_intervals,
    split_alpha,
    srm_pvalue,
    units_for_lift,
    verdict,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TUNING_N",
    "HARD_LIMIT_MIN_N",
    "MIN_UNITS_PER_ARM",
    "SRM_P",
    "VARIANCE_PRIOR_UNITS",
    "Interval",
    "breaks_limit",
    "confidence_sequence",
    "per_unit",
    "running_intervals",
    "split_alpha",
    "srm_pvalue",
    "units_for_lift",
    "verdict",
]
