"""The statistics of an A/B experiment: is the candidate better, worse, or is it too early to say?

An experiment is watched continuously (the server checks it every few seconds and rolls a harmful candidate
back), so a fixed-horizon confidence interval would be wrong here: looked at after every unit, a 95 % interval
excludes 0 at some look in half of all A/A experiments (0.50 over 5,000 looks, tests/test_ab_stats.py). We use
*asymptotic confidence sequences* instead, intervals that hold at every look at once:

    Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and asymptotic
    confidence sequences", Annals of Statistics, 2024 (arXiv:2103.06476; in v7, eq. (9) is the two-sided
    boundary and eq. (161) the choice of rho for a target time).

the normal-mixture boundary that GrowthBook's sequential testing implements
(growthbook/growthbook, packages/stats/gbstats/frequentist/tests.py: ``sequential_rho``,
``sequential_interval_halfwidth``). Written here from the paper, checked against GrowthBook's numbers in the
tests. The sequences need numpy only, and the server's periodic check and the simulations share one vectorised
code path.

Observations are one per assignment unit (conversation, user or thread): a metric that is a ratio per unit,
such as the thumbs-up rate among a conversation's rated answers, is first averaged within the unit
(``per_unit``), because turns of one conversation are not independent and the unit is what was randomised.
Everything here is pure: ``ragloop.monitoring.ab`` reads the records and calls these functions. Method,
defaults and simulation figures: docs/ab.md, "Statistics".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

# Two-sided level of every confidence sequence of the primary metric: the chance that its sequence ever,
# at any look, misses the true difference.
DEFAULT_ALPHA = 0.05
# Units (both arms together) at which the sequence is tightest relative to a fixed-horizon interval: set it
# to where decisions are usually made. GrowthBook's default is 5,000 (DEFAULT_SEQUENTIAL_TESTING_TUNING_
# PARAMETER) and it fits ragloop's headline case: a 5-point lift on a ~0.6 thumbs-up rate is detected in 80 %
# of simulated experiments by 4,700 rated units at a 50/50 split and 7,300 at a 20 % share (docs/ab.md), and
# ``units_for_lift`` is smallest near 5,000 (50/50) and within 1 % of its minimum there (20 %). The width is
# flat around the target: at half or twice the tuning n the interval is 1-2 % wider than if tuned there.
DEFAULT_TUNING_N = 5000
# The sequence is asymptotic: its guarantee is a central-limit one. Below this many units in either arm an
# arm's variance estimate can be 0 (three thumbs-up out of three), which would make the interval collapse
# onto a chance difference, so the interval is (-inf, inf) until both arms have this many.
MIN_UNITS_PER_ARM = 30
# Each arm's variance is shrunk towards the pooled variance of both arms with the weight of this many
# pseudo-units (an empirical-Bayes prior on the variance). At a 5 % share the small arm's own variance is
# often 0 for a rare or near-certain outcome: alone it took the A/A false-positive rate to 0.25 for a 0.95
# rate; shrunk, 0.03. The prior fades as units arrive, so the estimator stays consistent and the asymptotic
# guarantee is untouched, and power at a 5-point lift is unchanged (simulated, docs/ab.md).
VARIANCE_PRIOR_UNITS = 100
# A sample-ratio mismatch is declared below this chi-square p-value: the common practice (GrowthBook's
# DEFAULT_SRM_THRESHOLD; the test and the causes it finds: Fabijan et al., "Diagnosing Sample Ratio Mismatch
# in Online Controlled Experiments", KDD 2019). Small because the check runs at every look of every
# experiment: a mismatch means broken assignment or logging, not a statistical nuance.
SRM_P = 0.001
# A hard limit (p95 latency, error rate) is judged on at least this many requests of the arm, so one slow or
# failed request among the first few cannot roll a candidate back: with 100 requests the p95 needs five slow
# ones to move.
HARD_LIMIT_MIN_N = 100

Verdict = Literal["better", "worse", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A confidence sequence for candidate − control at the current look (absolute difference of means).

    ``lo``/``hi`` are -inf/+inf while an arm has fewer than ``MIN_UNITS_PER_ARM`` units; ``estimate`` is NaN
    while an arm has none. ``as_dict`` gives a JSON-safe form (None for those) for snapshots.
    """

    lo: float
    hi: float
    estimate: float

    def as_dict(self) -> dict[str, float | None]:
        return {name: (v if math.isfinite(v) else None) for name, v in vars(self).items()}


def mixture_rho2(alpha: float, tuning_n: float) -> float:
    """The normal mixture's variance rho², chosen so the sequence is tightest at ``tuning_n`` units.

    Waudby-Smith et al. (2024), the closed-form approximation of the optimal rho for a target time t*:
    rho² = (−2 log α + log(1 − 2 log α)) / t*.
    """
    _check_alpha(alpha)
    if tuning_n <= 0:
        raise ValueError(f"tuning_n must be positive, got {tuning_n}")
    log_term = -2.0 * math.log(alpha)
    return (log_term + math.log(1.0 + log_term)) / tuning_n


def halfwidth(variance: ArrayLike, n: ArrayLike, alpha: float, tuning_n: float) -> NDArray[np.float64]:
    """Half-width of the two-sided (1 − α) asymptotic confidence sequence after ``n`` observations whose
    variance is ``variance`` (Waudby-Smith et al. 2024, eq. (9) of arXiv v7):

        sqrt(variance) · sqrt( 2(nρ² + 1) / (n²ρ²) · log( sqrt(nρ² + 1) / α ) )

    Vectorised over ``variance`` and ``n``: the simulations evaluate it at every look of every experiment.
    """
    rho2 = mixture_rho2(alpha, tuning_n)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        boundary = 2.0 * (n * rho2 + 1.0) / (n * n * rho2) * np.log(np.sqrt(n * rho2 + 1.0) / alpha)
        return np.sqrt(np.asarray(variance, dtype=np.float64) * boundary)


def _intervals(
    n_c: NDArray[np.float64],
    mean_c: NDArray[np.float64],
    ss_c: NDArray[np.float64],
    n_t: NDArray[np.float64],
    mean_t: NDArray[np.float64],
    ss_t: NDArray[np.float64],
    alpha: float,
    tuning_n: float,
    min_units_per_arm: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The interval from each arm's count, mean and sum of squared deviations (arrays of looks).

    The difference of two independent arm means is an average treatment effect under randomisation; with
    the arm means as outcome model, the paper's per-unit (augmented inverse-propensity) pseudo-outcome has
    variance var_t/share + var_c/(1 − share), estimated here as n·(var_t/n_t + var_c/n_c) with n = n_t + n_c
    and the sequence is indexed by n, the number of units: the same scaling GrowthBook uses.
    """
    n = n_c + n_t
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (ss_c + ss_t) / (n - 2.0)
        var_c = (ss_c + VARIANCE_PRIOR_UNITS * pooled) / (n_c - 1.0 + VARIANCE_PRIOR_UNITS)
        var_t = (ss_t + VARIANCE_PRIOR_UNITS * pooled) / (n_t - 1.0 + VARIANCE_PRIOR_UNITS)
        estimate = mean_t - mean_c
        half = halfwidth(n * (var_c / n_c + var_t / n_t), n, alpha, tuning_n)
    ready = (n_c >= min_units_per_arm) & (n_t >= min_units_per_arm)
    half = np.where(ready, half, np.inf)
    return estimate - half, estimate + half, estimate


def confidence_sequence(
    x_control: ArrayLike,
    x_candidate: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    tuning_n: float = DEFAULT_TUNING_N,
    *,
    min_units_per_arm: int = MIN_UNITS_PER_ARM,
) -> Interval:
    """The always-valid interval for mean(candidate) − mean(control) at this look.

    ``x_control``/``x_candidate`` hold one value per assignment unit (``per_unit``), e.g. each rated
    conversation's thumbs-up rate. The interval may be recomputed after every new unit for as long as the
    experiment runs: the chance that it ever excludes the true difference is at most ``alpha``
    (asymptotically). Absolute difference only: a relative lift would need the delta method on a ratio and
    reads worse for rates near 0, and every decision here is about the sign.
    """
    _check_alpha(alpha)
    arms = []
    for x in (x_control, x_candidate):
        x = np.asarray(x, dtype=np.float64).ravel()
        if not np.all(np.isfinite(x)):
            raise ValueError("observations must be finite numbers (aggregate per unit; drop missing ones)")
        mean = float(x.mean()) if x.size else math.nan
        arms.append((float(x.size), mean, float(((x - mean) ** 2).sum()) if x.size else 0.0))
    (n_c, mean_c, ss_c), (n_t, mean_t, ss_t) = arms
    lo, hi, estimate = _intervals(
        *(np.float64(v) for v in (n_c, mean_c, ss_c, n_t, mean_t, ss_t)), alpha, tuning_n, min_units_per_arm
    )
    return Interval(float(lo), float(hi), float(estimate))


def running_intervals(
    x: ArrayLike,
    candidate: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    tuning_n: float = DEFAULT_TUNING_N,
    *,
    min_units_per_arm: int = MIN_UNITS_PER_ARM,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The interval at every look: after the 1st, 2nd, … unit, along the last axis.

    ``x`` holds the units' values in arrival order and ``candidate`` (same shape, bool) their arm; leading
    axes are independent experiments. Returns ``(lo, hi, estimate)`` arrays of ``x``'s shape; the last look
    equals ``confidence_sequence`` on the same units. Cumulative sums make 1,000 experiments × 5,000 looks a
    second of numpy, which is what lets the tests prove the error rate by simulation.
    """
    _check_alpha(alpha)
    x = np.asarray(x, dtype=np.float64)
    cand = np.asarray(candidate, dtype=bool)
    if x.shape != cand.shape:
        raise ValueError(f"x and candidate differ in shape: {x.shape} != {cand.shape}")
    n_t = np.cumsum(cand, axis=-1, dtype=np.float64)
    n_c = np.arange(1, x.shape[-1] + 1, dtype=np.float64) - n_t
    xt = np.where(cand, x, 0.0)
    xc = x - xt
    with np.errstate(divide="ignore", invalid="ignore"):
        sum_t, sum_c = np.cumsum(xt, axis=-1), np.cumsum(xc, axis=-1)
        mean_t, mean_c = sum_t / n_t, sum_c / n_c
        # Sum of squares minus n·mean² loses digits when the mean is large against the spread; per-unit
        # means of rates, ratings, lengths and latencies in ms stay far from that in float64. Clip the
        # rounding below 0.
        ss_t = np.maximum(np.cumsum(xt * xt, axis=-1) - sum_t * mean_t, 0.0)
        ss_c = np.maximum(np.cumsum(xc * xc, axis=-1) - sum_c * mean_c, 0.0)
    ss_t = np.where(n_t > 0, ss_t, 0.0)
    ss_c = np.where(n_c > 0, ss_c, 0.0)
    return _intervals(n_c, mean_c, ss_c, n_t, mean_t, ss_t, alpha, tuning_n, min_units_per_arm)


def verdict(interval: Interval, higher_is_better: bool) -> Verdict:
    """``better`` / ``worse`` when the sequence excludes 0 on that side, else ``inconclusive``.

    With a confidence sequence this may be read at any look; a guardrail rolls back on ``worse``.
    """
    if interval.lo > 0:
        return "better" if higher_is_better else "worse"
    if interval.hi < 0:
        return "worse" if higher_is_better else "better"
    return "inconclusive"


def split_alpha(alpha: float, n_guardrails: int) -> tuple[float, float]:
    """``(alpha_primary, alpha_per_guardrail)``: the primary metric keeps ``alpha``; the guardrails share
    another ``alpha`` equally (Bonferroni), ``alpha / n_guardrails`` each.

    Why two budgets: the primary answers "ship it?" and the guardrails "roll it back?", two different
    mistakes, each held at ``alpha``. Splitting among guardrails keeps the chance that *any* of them ever
    misses its true difference at ``alpha`` however many are configured; a rollback fires on one side only,
    so the chance of rolling back a harmless candidate is at most ``alpha / 2``. Bonferroni needs no
    assumption about how guardrails correlate (latency and error rate often move together). Only guardrails
    tested with a sequence count: hard limits (p95 latency, error rate: ``breaks_limit``) spend no alpha.
    With no guardrail the second value is ``alpha`` (unused).
    """
    _check_alpha(alpha)
    if n_guardrails < 0:
        raise ValueError(f"n_guardrails must be >= 0, got {n_guardrails}")
    return alpha, alpha / max(n_guardrails, 1)


def srm_pvalue(n_control: int, n_candidate: int, share: float) -> float:
    """Chi-square goodness-of-fit p-value of the observed split against the candidate's ``share``.

    Below ``SRM_P`` the experiment is flagged: assignment or logging is broken (a sticky unit lost, one arm
    erroring before it records), and no difference between arms can be trusted. Run it per ramp stage, on
    the units assigned during that stage, since the expected split changes with the stage.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if n_control < 0 or n_candidate < 0:
        raise ValueError("unit counts must be >= 0")
    total = n_control + n_candidate
    if total == 0:
        return 1.0
    # Pearson's statistic with its chi-square(1) tail, as scipy.stats.chisquare computes it (the tests check
    # they agree), through scipy.special: scipy.stats takes a second or two to import and its input checks
    # cost half a millisecond a call; this is imported lazily so a CLI start that never checks pays nothing.
    from scipy.special import chdtrc

    expected = (total * (1.0 - share), total * share)
    stat = sum((o - e) ** 2 / e for o, e in zip((n_control, n_candidate), expected, strict=True))
    return float(chdtrc(1, stat))


def breaks_limit(
    values: ArrayLike, limit: float, *, quantile: float | None = None, min_n: int = HARD_LIMIT_MIN_N
) -> bool:
    """Does an arm break a hard limit: its mean (``quantile=None``, e.g. an error rate over 0/1 values) or
    its ``quantile`` (0.95 for p95 latency) above ``limit``, over at least ``min_n`` values?

    Hard limits are operational promises, not effects to estimate: a candidate whose p95 latency is over
    budget is rolled back however it compares with the control, so there is no test and no alpha, only a
    minimum count against noise. Values are per request, not per unit: a limit is about every request served.
    A limit relative to the control (e.g. 1.5 × its p95) is computed by the caller from the control's values.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < min_n:
        return False
    stat = float(v.mean()) if quantile is None else float(np.quantile(v, quantile))
    return stat > limit


def per_unit(units: Sequence[str], values: ArrayLike) -> NDArray[np.float64]:
    """One observation per assignment unit: the mean of its values, units in order of first appearance.

    The unit is what was randomised, so it is the independent observation: a conversation of twenty rated
    turns is one unit, not twenty (its turns share a user, a topic and a model). NaN values (an unrated
    answer) are dropped first; a unit with none left contributes nothing.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    keys = np.asarray(units, dtype=object).ravel()
    if keys.shape != v.shape:
        raise ValueError(f"units and values differ in length: {keys.shape[0]} != {v.shape[0]}")
    keep = np.isfinite(v)
    keys, v = keys[keep], v[keep]
    if not v.size:
        return np.empty(0)
    uniq, first, inverse = np.unique(keys.astype(str), return_index=True, return_inverse=True)
    means = np.bincount(inverse, weights=v) / np.bincount(inverse)
    return means[np.argsort(first)]


def units_for_lift(
    p0: float,
    lift: float,
    alpha: float = DEFAULT_ALPHA,
    tuning_n: float = DEFAULT_TUNING_N,
    power: float = 0.8,
    share: float = 0.5,
) -> int:
    """Units (both arms) at which a rate ``p0`` raised by ``lift`` is declared better with probability
    ``power`` at a single look at that count.

    From the boundary, not by simulation: the estimate is normal around ``lift`` with standard error
    sqrt(V/n), V = p0(1−p0)/(1−share) + p1(1−p1)/share, and is called better once it clears the half-width.
    Looking after every unit can only cross earlier, so this is an upper bound on what continuous monitoring
    needs for that power (the tests check the simulated power at this count). For thumbs-up the units are
    units with at least one rated answer.
    """
    _check_alpha(alpha)
    p1 = p0 + lift
    if not (0.0 < p0 < 1.0 and 0.0 < p1 < 1.0 and lift > 0):
        raise ValueError(f"need 0 < p0 < p0 + lift < 1, got p0={p0}, lift={lift}")
    if not 0.0 < share < 1.0 or not 0.0 < power < 1.0:
        raise ValueError("share and power must be in (0, 1)")
    variance = p0 * (1 - p0) / (1 - share) + p1 * (1 - p1) / share
    z_power = NormalDist().inv_cdf(power)

    def enough(n: int) -> bool:
        return lift - float(halfwidth(variance, n, alpha, tuning_n)) >= z_power * math.sqrt(variance / n)

    floor = math.ceil(MIN_UNITS_PER_ARM / min(share, 1 - share))
    hi = max(floor, 2)
    while not enough(hi):
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:  # bisection: half-width and standard error both shrink as n grows
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return max(hi, floor)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
