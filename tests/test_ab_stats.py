"""The A/B statistics proved by simulation, calling ``ragloop.monitoring.stats`` directly.

Seeded and vectorised: each simulation runs 1,000 experiments with a look after every unit (thousands of
looks each) through ``running_intervals``, in chunks so memory stays small. The figures printed with
``pytest -s`` are the ones in docs/ab.md, "Statistics".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import chisquare

from ragloop.monitoring.stats import (
    DEFAULT_ALPHA,
    DEFAULT_TUNING_N,
    MIN_UNITS_PER_ARM,
    SRM_P,
    Interval,
    breaks_limit,
    confidence_sequence,
    halfwidth,
    per_unit,
    running_intervals,
    split_alpha,
    srm_pvalue,
    units_for_lift,
    verdict,
)

EXPERIMENTS = 1000
LOOKS = DEFAULT_TUNING_N  # a look after every unit, up to the units at which decisions are tuned
# The bar: the observed false-positive rate is within two binomial standard errors of alpha.
FPR_BAR = DEFAULT_ALPHA + 2 * math.sqrt(DEFAULT_ALPHA * (1 - DEFAULT_ALPHA) / EXPERIMENTS)
Z_975 = 1.959963984540054


@dataclass
class Crossings:
    """Per experiment, the first look (1-based unit count) at which the interval excluded 0 above
    (``better``) or below (``worse``), 0 when it never did; ``naive`` the same for any side of a
    fixed-horizon 95 % interval peeked at after every unit."""

    better: np.ndarray
    worse: np.ndarray
    naive: np.ndarray

    @property
    def any_rate(self) -> float:
        return float(((self.better > 0) | (self.worse > 0)).mean())


def _first(mask: np.ndarray) -> np.ndarray:
    return np.where(mask.any(axis=-1), mask.argmax(axis=-1) + 1, 0)


def simulate(
    *,
    p0: float,
    p1: float,
    share: float,
    looks: int = LOOKS,
    experiments: int = EXPERIMENTS,
    alpha: float = DEFAULT_ALPHA,
    seed: int,
    chunk: int = 200,
) -> Crossings:
    """Bernoulli outcomes (one per unit: e.g. a conversation's thumbs-up), rate p0 in the control and p1 in
    the candidate, each unit assigned to the candidate with probability ``share``."""
    rng = np.random.default_rng(seed)
    better, worse, naive = [], [], []
    for start in range(0, experiments, chunk):
        shape = (min(chunk, experiments - start), looks)
        cand = rng.random(shape) < share
        x = (rng.random(shape) < np.where(cand, p1, p0)).astype(np.float64)
        lo, hi, est = running_intervals(x, cand, alpha, DEFAULT_TUNING_N)
        better.append(_first(lo > 0))
        worse.append(_first(hi < 0))
        naive.append(_first(_naive_excludes_zero(x, cand)))
    return Crossings(np.concatenate(better), np.concatenate(worse), np.concatenate(naive))


def _naive_excludes_zero(x: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """The mistake the sequence exists to avoid: a fixed-horizon Welch 95 % interval, recomputed after every
    unit (same minimum units per arm as the sequence, so only the boundary differs)."""
    n_t = np.cumsum(cand, axis=-1, dtype=np.float64)
    n_c = np.arange(1, x.shape[-1] + 1) - n_t
    with np.errstate(divide="ignore", invalid="ignore"):
        s_t = np.cumsum(np.where(cand, x, 0.0), axis=-1)
        s_c = np.cumsum(x, axis=-1) - s_t
        m_t, m_c = s_t / n_t, s_c / n_c
        v_t, v_c = m_t * (1 - m_t) * n_t / (n_t - 1), m_c * (1 - m_c) * n_c / (n_c - 1)  # 0/1 outcomes
        z = np.abs(m_t - m_c) / np.sqrt(v_t / n_t + v_c / n_c)
    return (n_t >= MIN_UNITS_PER_ARM) & (n_c >= MIN_UNITS_PER_ARM) & (z > Z_975)


@pytest.fixture(scope="module")
def aa_even() -> Crossings:
    return simulate(p0=0.6, p1=0.6, share=0.5, seed=17)


def test_aa_false_positive_rate_with_a_look_after_every_unit(aa_even: Crossings) -> None:
    fpr = aa_even.any_rate
    print(f"\nA/A, p=0.6, 50/50, {LOOKS} looks: sequence FPR {fpr:.3f} (bar {FPR_BAR:.4f})")
    assert fpr <= FPR_BAR


def test_naive_interval_peeked_after_every_unit_fails_the_same_check(aa_even: Crossings) -> None:
    # The check has teeth: the usual interval, looked at as often, is wrong in most A/A experiments.
    naive = float((aa_even.naive > 0).mean())
    print(f"\nA/A, p=0.6, 50/50, {LOOKS} looks: naive fixed-horizon FPR {naive:.3f}")
    assert naive > 5 * FPR_BAR


@pytest.mark.parametrize(
    ("p", "share"),
    [
        (0.6, 0.2),  # a 20 % candidate share, the CLI's example
        # A near-certain outcome (citation verified) at a 5 % ramp stage: the small arm's own variance is
        # often 0; without the pooled-variance prior this case's FPR is 0.25.
        (0.95, 0.05),
    ],
)
def test_aa_false_positive_rate_uneven_split_and_skewed_rate(p: float, share: float) -> None:
    fpr = simulate(p0=p, p1=p, share=share, seed=int(p * 100 + share * 1000)).any_rate
    print(f"\nA/A, p={p}, share {share}, {LOOKS} looks: sequence FPR {fpr:.3f}")
    assert fpr <= FPR_BAR


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_five_point_lift_detected_with_the_reported_power(share: float) -> None:
    n = units_for_lift(0.6, 0.05, share=share)
    sim = simulate(p0=0.6, p1=0.65, share=share, looks=n, seed=5)
    power = float((sim.better > 0).mean())
    detected = np.sort(sim.better[sim.better > 0])
    at_80 = int(detected[math.ceil(0.8 * EXPERIMENTS) - 1]) if power >= 0.8 else None
    print(
        f"\n0.60 -> 0.65, share {share}: units_for_lift {n}; power looking after every unit up to it {power:.3f}; "
        f"80 % of experiments detected by {at_80} units; median detection {int(np.median(detected))}"
    )
    assert power >= 0.8
    assert (sim.worse > 0).mean() <= 0.001  # the sign is never wrong in practice


def test_guardrail_alpha_split_bounds_false_rollbacks() -> None:
    guardrails = 3
    _, alpha_g = split_alpha(DEFAULT_ALPHA, guardrails)
    # Three independent A/A guardrails per experiment, each at alpha / 3; a rollback fires when any one's
    # sequence excludes 0 on the harmful (here: lower) side.
    sims = [
        simulate(p0=0.9, p1=0.9, share=0.5, looks=2000, alpha=alpha_g, seed=100 + g, chunk=500)
        for g in range(guardrails)
    ]
    rollback = np.any([s.worse > 0 for s in sims], axis=0).mean()
    any_miss = np.any([(s.worse > 0) | (s.better > 0) for s in sims], axis=0).mean()
    se = math.sqrt(DEFAULT_ALPHA * (1 - DEFAULT_ALPHA) / EXPERIMENTS)
    print(f"\n3 guardrails at alpha/3: false rollback {rollback:.3f}, any guardrail miss {any_miss:.3f}")
    assert rollback <= DEFAULT_ALPHA / 2 + 2 * se
    assert any_miss <= DEFAULT_ALPHA + 2 * se


def test_split_alpha_is_bonferroni_over_sequential_guardrails() -> None:
    assert split_alpha(0.05, 0) == (0.05, 0.05)
    assert split_alpha(0.05, 1) == (0.05, 0.05)
    primary, each = split_alpha(0.05, 4)
    assert primary == 0.05 and each == pytest.approx(0.0125)
    with pytest.raises(ValueError):
        split_alpha(0.05, -1)
    with pytest.raises(ValueError):
        split_alpha(1.5, 2)


def test_srm_flags_a_biased_split_and_not_a_fair_one() -> None:
    assert srm_pvalue(5500, 4500, 0.5) < SRM_P
    assert srm_pvalue(4500, 5500, 0.5) < SRM_P
    assert srm_pvalue(5000, 5000, 0.5) == pytest.approx(1.0)
    assert srm_pvalue(8000, 2000, 0.2) == pytest.approx(1.0)
    assert srm_pvalue(0, 0, 0.2) == 1.0
    assert srm_pvalue(5100, 4900, 0.5) == pytest.approx(chisquare([5100, 4900]).pvalue, rel=1e-12)
    assert srm_pvalue(7950, 2050, 0.2) == pytest.approx(
        chisquare([7950, 2050], [8000, 2000]).pvalue, rel=1e-12
    )
    rng = np.random.default_rng(3)
    for share in (0.5, 0.2):
        cand = rng.binomial(10_000, share, size=2000)
        flagged = np.mean([srm_pvalue(10_000 - c, c, share) < SRM_P for c in cand])
        assert flagged <= 0.005, (share, flagged)  # SRM_P is 0.001 by construction
    # Assignment that really sends 55 % to the candidate of a 50/50 experiment: caught every time.
    cand = rng.binomial(10_000, 0.55, size=200)
    assert all(srm_pvalue(10_000 - c, c, 0.5) < SRM_P for c in cand)
    with pytest.raises(ValueError):
        srm_pvalue(10, 10, 1.0)


def test_halfwidth_matches_growthbook() -> None:
    # Values from growthbook/growthbook's gbstats sequential_interval_halfwidth(s2, n, tuning, alpha) at
    # commit 8f1db445, run on these inputs: an independent implementation of the same formula.
    assert float(halfwidth(0.3, 1234, 0.05, 5000)) == pytest.approx(0.05097668535699502, rel=1e-12)
    assert float(halfwidth(0.24, 5000, 0.05, 5000)) == pytest.approx(0.02102854473168602, rel=1e-12)
    assert float(halfwidth(2.5, 40, 0.01, 1000)) == pytest.approx(1.3778581467893247, rel=1e-12)


def test_running_intervals_end_where_confidence_sequence_is() -> None:
    rng = np.random.default_rng(11)
    x = rng.lognormal(5, 1, 3000)  # answer lengths: skewed, not 0/1
    cand = rng.random(3000) < 0.3
    lo, hi, est = running_intervals(x, cand)
    iv = confidence_sequence(x[~cand], x[cand])
    assert (lo[-1], hi[-1], est[-1]) == pytest.approx((iv.lo, iv.hi, iv.estimate), rel=1e-9)
    # Wider than the fixed-horizon interval at every look: that is the price of peeking.
    se = np.sqrt(x[cand].var(ddof=1) / cand.sum() + x[~cand].var(ddof=1) / (~cand).sum())
    assert (iv.hi - iv.lo) / 2 > Z_975 * se


def test_interval_is_unbounded_until_each_arm_has_its_minimum() -> None:
    few = confidence_sequence([1.0] * 100, [0.0] * (MIN_UNITS_PER_ARM - 1))
    assert (few.lo, few.hi) == (-math.inf, math.inf)
    assert verdict(few, higher_is_better=True) == "inconclusive"
    assert few.as_dict() == {"lo": None, "hi": None, "estimate": -1.0}
    empty = confidence_sequence([], [1.0, 0.0])
    assert math.isnan(empty.estimate) and empty.as_dict()["estimate"] is None
    with pytest.raises(ValueError):
        confidence_sequence([1.0, math.nan], [1.0])


def test_verdict_reads_the_side_and_the_direction() -> None:
    up, down, straddle = Interval(0.01, 0.05, 0.03), Interval(-0.05, -0.01, -0.03), Interval(-0.01, 0.02, 0.0)
    assert verdict(up, higher_is_better=True) == "better"
    assert verdict(up, higher_is_better=False) == "worse"  # e.g. more abstentions
    assert verdict(down, higher_is_better=True) == "worse"
    assert verdict(down, higher_is_better=False) == "better"
    assert verdict(straddle, higher_is_better=True) == "inconclusive"


def test_units_for_lift_costs_more_than_a_fixed_horizon_test_and_falls_with_the_lift() -> None:
    fixed = math.ceil((Z_975 + 0.8416212335729143) ** 2 * (0.24 + 0.2275) * 2 / 0.05**2)
    n = units_for_lift(0.6, 0.05)
    assert fixed < n < 3 * fixed
    assert units_for_lift(0.6, 0.10) < n < units_for_lift(0.6, 0.05, share=0.2)
    with pytest.raises(ValueError):
        units_for_lift(0.98, 0.05)


def test_breaks_limit_needs_enough_requests() -> None:
    fast = np.full(200, 800.0)
    slow = np.concatenate([fast, np.full(20, 9000.0)])  # 9 % of requests take 9 s
    assert not breaks_limit(fast, 2000.0, quantile=0.95)
    assert breaks_limit(slow, 2000.0, quantile=0.95)
    assert not breaks_limit(slow[-50:], 2000.0, quantile=0.95)  # too few requests to judge
    errors = np.r_[np.ones(6), np.zeros(94)]
    assert breaks_limit(errors, 0.05) and not breaks_limit(errors, 0.1)


def test_per_unit_gives_each_unit_one_observation() -> None:
    units = ["c1", "c1", "c1", "c2", "c3", "c3"]
    thumbs = [1.0, 1.0, 0.0, 0.0, math.nan, math.nan]  # c3 never rated
    assert per_unit(units, thumbs) == pytest.approx([2 / 3, 0.0])
    assert per_unit([], []).size == 0
