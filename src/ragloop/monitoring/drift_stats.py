"""The statistics of drift monitoring: has what the served model sees moved away from what it was trained on?

Pure functions, no I/O: ``ragloop.monitoring.drift`` reads the reference (the training questions of the
served version, their dense retrieval scores) and the current window (live interactions), calls these, and
stores the ``Signal`` each returns. Every signal carries its statistic, its threshold and where that default
comes from, and one verdict of ``VERDICTS``.

One rule for the verdicts, so that they read the same on every signal: **drift** needs the change to be both
statistically significant (a test or a null distribution at level 0.05, so an unchanged window is called
drift in at most about 5 % of checks) *and* at least as large as the threshold (an effect size, mostly
Evidently's defaults, so that a tiny but real change over thousands of records is not a retrain alarm).
**warn** is significant but smaller than the threshold: real, worth watching, not yet worth retraining for.
Rates (feedback, answer signals) have no effect-size default anywhere we could cite, so their warn is the
one-sided test at twice the level instead. Below ``min_n`` records on either side a signal says
"not enough data" and shows both counts, never a verdict.

Defaults checked against Evidently's source (evidentlyai/evidently, ``src/evidently/legacy``): the embedding
drift default is ``model(bootstrap=reference rows < 1000)``, a classifier told reference from current, ROC AUC
threshold 0.55, with a 95th-percentile null when bootstrapping (``metrics/data_drift/embeddings_drift.py``,
``embedding_drift_methods.py``); numerical columns use the two-sample KS test at p 0.05 when the reference has
at most 1000 rows and the Wasserstein distance normed by the reference's standard deviation, threshold 0.1,
above that (``calculations/stattests/registry.py``, ``wasserstein_distance_norm.py``). Measured false-alarm
rates on real MiniLM embeddings: docs/drift.md, "False alarms and power, measured"; tests/test_drift_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

VERDICTS = ("ok", "warn", "drift", "not enough data")
# Worst first is what ``overall`` reports; "not enough data" ranks below "ok" so that one starved signal
# (no feedback yet) does not hide the verdicts of the others.
_RANK = {"not enough data": 0, "ok": 1, "warn": 2, "drift": 3}

# Below this many records on either side a signal gives no verdict (DriftSettings.min_records is the same
# default): the normal approximations and the 5 % tail of a null need a few dozen values to mean anything.
MIN_N = 30
# Every significance test and null quantile of this module is at this level.
ALPHA = 0.05
# Evidently's default for the domain classifier (ModelDriftMethod.threshold).
DOMAIN_AUC = 0.55
# Ours: measured, not cited. A window made only of questions on one chapter of the GDPR sits 0.05-0.14 (cosine)
# from the rest of the regulation, another domain (PubMedQA, HotpotQA questions) 0.85-1.0, and a same-
# distribution window of 30 no more than 0.06 (tests/test_drift_stats.py data). 0.1 is past the noise of the
# smallest window and calls a move to a corner of the same domain a warn at most.
CENTROID_DISTANCE = 0.1
# Evidently's numerical defaults: KS p-value, and the Wasserstein distance normed by the reference's std.
SCORE_PVALUE = 0.05
SCORE_WASSERSTEIN = 0.1
# Coverage: a live question is uncovered when its best dense score is below the reference's 5th percentile,
# so about 5 % of an unchanged window is uncovered by construction; drift when twice that (ours).
COVERAGE_PERCENTILE = 5.0
COVERAGE_SHARE = 0.10
# Rows fed to the domain classifier per side: a fit on 2 x 2000 rows of 384-d takes ~0.3 s here, and a larger
# sample would not change an AUC that already has a standard error under 0.01. Subsampled with a fixed seed.
MAX_ROWS = 2000
# Bootstrap draws of the centroid distance's null (Evidently draws 100; 200 steadies the 95th percentile).
N_BOOTSTRAP = 200
# Uncovered questions clustered into topics at most (agglomerative clustering is quadratic in memory).
MAX_TOPIC_ROWS = 1000
# Where the topic tree is cut (average cosine distance within a topic). Measured on windows of 60 GDPR
# sentences, 40 PubMedQA and 40 HotpotQA questions (10 draws): at 0.8 each of the four largest topics held
# questions of one source in every draw, at 0.85 not in 2 draws, at 0.9 not in 3 (average linkage chains
# unrelated questions together); at 0.7 a source splits into dozens of topics of 1-5 questions.
TOPIC_DISTANCE = 0.8


@dataclass(frozen=True)
class Signal:
    """One drift signal of a report: what was measured, against which threshold, and the verdict.

    ``value`` and ``threshold`` are None when there was not enough data. ``details`` holds JSON-safe extras
    (the null's quantile, p-values, both rates, topic groups with example questions). Question texts in
    ``details`` (coverage examples) are for the admin's report only, never for alerts or logs.
    """

    name: str
    statistic: str
    value: float | None
    threshold: float | None
    threshold_source: str
    verdict: str
    n_reference: int
    n_current: int
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-safe dict (numpy scalars become Python numbers, NaN and infinities become None)."""
        return _json_safe(asdict(self))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def _not_enough(
    name: str, statistic: str, source: str, n_ref: int, n_cur: int, min_n: int, **details: Any
) -> Signal:
    return Signal(
        name=name,
        statistic=statistic,
        value=None,
        threshold=None,
        threshold_source=source,
        verdict="not enough data",
        n_reference=n_ref,
        n_current=n_cur,
        details={"min_n": min_n, "reason": f"needs {min_n} on each side: reference {n_ref}, current {n_cur}"}
        | details,
    )


def _verdict(significant: bool, large: bool) -> str:
    if significant and large:
        return "drift"
    return "warn" if significant else "ok"


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[np.sort(rng.choice(len(x), n, replace=False))]


def domain_classifier(
    ref: ArrayLike,
    cur: ArrayLike,
    *,
    threshold: float = DOMAIN_AUC,
    min_n: int = MIN_N,
    seed: int = 0,
    name: str = "query_domain",
) -> Signal:
    """Can a classifier tell the current queries from the reference ones? ROC AUC 0.5: no; 1.0: always.

    Evidently's method (``ModelDriftMethod``): label reference 0 and current 1, fit a linear classifier on a
    stratified half, score the other half. We fit a logistic regression (balanced class weights, so a window
    of 50 against 2000 reference questions is not swamped; liblinear: 5-10x faster than lbfgs here) on at most ``MAX_ROWS`` rows a side, subsampled
    with ``seed``. The null is the AUC of the held-out scores against permuted labels, which is exactly the
    Mann-Whitney null, so ``mannwhitneyu`` gives the p-value and the null's 95th percentile is reported.
    Evidently uses that null only below 1000 reference rows and the 0.55 threshold above; we require both
    always (at large n the null's 95th percentile is ~0.52, so the threshold decides; at small n the null does).

    Why a held-out half and not cross-validated predictions, which use every row: the CV AUC's null is wider
    than Mann-Whitney's (the folds' models differ), and judged by it an unchanged window was called drift in
    8-13 % of 200 draws of GDPR text against GDPR text; on the held-out half, 5.5-6.5 % p < 0.05, and
    2-4.5 % drift once AUC > 0.55 is required too (docs/drift.md, "False alarms and power, measured").

    warn: AUC above the null's 95th percentile but at most ``threshold`` — a real, small change of the query mix.
    """
    source = "Evidently's domain-classifier default (ROC AUC > 0.55) and its 95th-percentile null; warn: ours"
    statistic = "ROC AUC of a domain classifier (held-out half)"
    ref = np.asarray(ref, dtype=np.float32)
    cur = np.asarray(cur, dtype=np.float32)
    n_ref, n_cur = len(ref), len(cur)
    if n_ref < min_n or n_cur < min_n:
        return _not_enough(name, statistic, source, n_ref, n_cur, min_n)
    rng = np.random.default_rng(seed)
    ref_s, cur_s = _subsample(ref, MAX_ROWS, rng), _subsample(cur, MAX_ROWS, rng)
    x = np.vstack([ref_s, cur_s])
    y = np.r_[np.zeros(len(ref_s), dtype=int), np.ones(len(cur_s), dtype=int)]
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    clf = LogisticRegression(class_weight="balanced", solver="liblinear").fit(x_fit, y_fit)
    scores = clf.decision_function(x_test)
    pos, neg = scores[y_test == 1], scores[y_test == 0]
    test = stats.mannwhitneyu(pos, neg, alternative="greater")
    auc = float(test.statistic) / (len(pos) * len(neg))
    # The Mann-Whitney null of the AUC: mean 0.5, variance (n0 + n1 + 1) / (12 n0 n1) without ties.
    null_sd = math.sqrt((len(pos) + len(neg) + 1) / (12 * len(pos) * len(neg)))
    null_q95 = 0.5 + stats.norm.ppf(1 - ALPHA) * null_sd
    significant = float(test.pvalue) < ALPHA
    return Signal(
        name=name,
        statistic=statistic,
        value=auc,
        threshold=threshold,
        threshold_source=source,
        verdict=_verdict(significant, auc > threshold),
        n_reference=n_ref,
        n_current=n_cur,
        details={
            "p_value": float(test.pvalue),
            "null_q95": null_q95,
            "rows_used": {"reference": len(ref_s), "current": len(cur_s)},
            "held_out": {"reference": len(neg), "current": len(pos)},
            "seed": seed,
        },
    )


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return 1.0 - num / np.maximum(den, 1e-12)


def centroid_distance(
    ref: ArrayLike,
    cur: ArrayLike,
    *,
    threshold: float = CENTROID_DISTANCE,
    min_n: int = MIN_N,
    seed: int = 0,
    n_bootstrap: int = N_BOOTSTRAP,
    name: str = "query_centroid",
) -> Signal:
    """Cosine distance between the mean reference and the mean current query embedding, the number to chart
    over time. Its null is Evidently's (``DistanceDriftMethod`` with bootstrap): the distance between two
    samples drawn with replacement from the reference alone, here of the reference's and the window's own
    sizes (so the null's spread is that of a real window of this size), 95th percentile of ``n_bootstrap``.

    drift: above the null's 95th percentile and above ``threshold`` (see ``CENTROID_DISTANCE`` for how it was
    chosen); warn: above the null's 95th percentile only.
    """
    source = (
        "ours: 0.1 cosine, past a 30-question window's noise (<= 0.06) and below another domain (0.85-1.0), "
        "measured on MiniLM; null as Evidently's bootstrap distance method"
    )
    statistic = "cosine distance of mean embeddings"
    ref = np.asarray(ref, dtype=np.float64)
    cur = np.asarray(cur, dtype=np.float64)
    n_ref, n_cur = len(ref), len(cur)
    if n_ref < min_n or n_cur < min_n:
        return _not_enough(name, statistic, source, n_ref, n_cur, min_n)
    distance = float(_cosine_distance(ref.mean(axis=0), cur.mean(axis=0)))
    rng = np.random.default_rng(seed)
    ref_b = _subsample(ref, MAX_ROWS, rng)
    # Multinomial counts x rows = the sums of bootstrap samples, without materialising n_bootstrap samples.
    uniform = np.full(len(ref_b), 1.0 / len(ref_b))
    a = rng.multinomial(n_ref, uniform, size=n_bootstrap) @ ref_b
    b = rng.multinomial(n_cur, uniform, size=n_bootstrap) @ ref_b
    null_q95 = float(np.quantile(_cosine_distance(a, b), 1 - ALPHA))
    return Signal(
        name=name,
        statistic=statistic,
        value=distance,
        threshold=threshold,
        threshold_source=source,
        verdict=_verdict(distance > null_q95, distance > threshold),
        n_reference=n_ref,
        n_current=n_cur,
        details={"null_q95": null_q95, "n_bootstrap": n_bootstrap, "seed": seed},
    )


def score_shift(
    ref_scores: ArrayLike,
    cur_scores: ArrayLike,
    *,
    name: str,
    pvalue: float = SCORE_PVALUE,
    wasserstein: float = SCORE_WASSERSTEIN,
    min_n: int = MIN_N,
) -> Signal:
    """Have the dense (cosine) retrieval scores moved? Dense, not fused: RRF scores depend only on ranks.

    Evidently picks one statistic by the reference's size: the two-sample KS test (p < 0.05) up to 1000 rows,
    the Wasserstein distance normed by the reference's std (>= 0.1) above. We compute both and need both for
    drift: with a large reference and a small window Evidently's rule alarms on unchanged data (measured on
    GDPR top-1 scores, reference 2000: the normed Wasserstein of a same-distribution window is >= 0.1 in 98 %
    of windows of 40, 66 % of 100, 1 % of 1000; its noise falls only as 1/sqrt(n)), while the KS test keeps
    its level (5.6 % of 1000 such windows); with both large, a KS p under 0.05 comes with any Wasserstein of
    0.1, so the rule is Evidently's in the regime each of its tests was made for. warn: KS significant, Wasserstein under 0.1.
    ``details["direction"]`` says whether the current scores are lower (worse retrieval) or higher.
    """
    source = "Evidently's numerical defaults: KS p < 0.05 and normed Wasserstein >= 0.1 (both required: ours)"
    statistic = "normed Wasserstein distance (with KS p-value)"
    ref = np.asarray(ref_scores, dtype=np.float64)
    cur = np.asarray(cur_scores, dtype=np.float64)
    n_ref, n_cur = len(ref), len(cur)
    if n_ref < min_n or n_cur < min_n:
        return _not_enough(name, statistic, source, n_ref, n_cur, min_n)
    ks = stats.ks_2samp(ref, cur)
    w_norm = float(stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))
    significant = float(ks.pvalue) < pvalue
    return Signal(
        name=name,
        statistic=statistic,
        value=w_norm,
        threshold=wasserstein,
        threshold_source=source,
        verdict=_verdict(significant, w_norm >= wasserstein),
        n_reference=n_ref,
        n_current=n_cur,
        details={
            "ks_statistic": float(ks.statistic),
            "ks_p_value": float(ks.pvalue),
            "ks_threshold": pvalue,
            "reference_median": float(np.median(ref)),
            "current_median": float(np.median(cur)),
            "direction": "lower" if np.median(cur) < np.median(ref) else "higher",
        },
    )


def coverage_gap(
    ref_best: ArrayLike,
    cur_best: ArrayLike,
    cur_texts: Sequence[str],
    cur_emb: ArrayLike,
    *,
    percentile: float = COVERAGE_PERCENTILE,
    share: float = COVERAGE_SHARE,
    min_n: int = MIN_N,
    pvalue: float = ALPHA,
    max_topics: int = 8,
    examples: int = 3,
    seed: int = 0,
    name: str = "coverage_gap",
) -> Signal:
    """The share of live questions the knowledge base answers worse than almost any training question.

    A question is uncovered when its best dense score is below the reference's ``percentile``-th percentile
    (by construction ~5 % of an unchanged window). drift: the share is above ``share`` and a one-sided test
    that it exceeds ``percentile`` % is significant; warn: significant but at most ``share``. The test
    allows for the reference's own sampling noise in the percentile (``_below_quantile_pvalue``).
    ``details["topics"]``: the uncovered questions grouped by topic (agglomerative clustering of their
    embeddings, cosine, average linkage, cut at ``TOPIC_DISTANCE``), the ``max_topics`` largest first
    (``details["n_topics"]``: how many there were), each with a label (its top tf-idf terms),
    its size, and the questions nearest its centre as examples: the documents the knowledge base lacks.
    """
    source = (
        f"ours: uncovered = best dense score below the reference's {percentile:g}th percentile "
        f"(~{percentile:g} % by construction); drift above {share:.0%} with a beta-binomial test at {pvalue:g}"
    )
    statistic = "share of questions below the reference's best-score percentile"
    ref = np.asarray(ref_best, dtype=np.float64)
    cur = np.asarray(cur_best, dtype=np.float64)
    n_ref, n_cur = len(ref), len(cur)
    if n_ref < min_n or n_cur < min_n:
        return _not_enough(name, statistic, source, n_ref, n_cur, min_n, topics=[])
    threshold_score = float(np.percentile(ref, percentile))
    uncovered = np.flatnonzero(cur < threshold_score)
    k = len(uncovered)
    observed = k / n_cur
    p_value = _below_quantile_pvalue(k, n_cur, n_ref, percentile)
    topics, n_topics = _topics(
        [cur_texts[i] for i in uncovered],
        np.asarray(cur_emb, dtype=np.float32)[uncovered],
        max_topics=max_topics,
        examples=examples,
        seed=seed,
    )
    return Signal(
        name=name,
        statistic=statistic,
        value=observed,
        threshold=share,
        threshold_source=source,
        verdict=_verdict(p_value < pvalue, observed > share),
        n_reference=n_ref,
        n_current=n_cur,
        details={
            "threshold_score": threshold_score,
            "n_uncovered": k,
            "p_value": p_value,
            "expected_share": percentile / 100.0,
            "topics": topics,
            "n_topics": n_topics,
        },
    )


def _below_quantile_pvalue(k: int, n_cur: int, n_ref: int, percentile: float) -> float:
    """P(at least ``k`` of ``n_cur`` fall below the reference's ``percentile``-th percentile) when both
    samples come from one continuous distribution.

    The threshold is estimated from the reference, so a binomial test against ``percentile`` % treats a
    noisy quantile as exact: with 30 reference questions an unchanged window of 100 was called drift in 28 %
    of simulated draws (reference 100, window 500: 28 % warn). ``np.percentile`` interpolates between two
    order statistics; values below it are at most those below the upper one, X_(m), m = ceil(h) + 1 with
    h = (n_ref - 1) p. F(X_(m)) ~ Beta(m, n_ref + 1 - m), so the count below X_(m) is beta-binomial: an exact,
    slightly conservative p-value (simulated false alarms <= 4.4 % for references of 30-1000 and windows
    of 30-500), which tends to the binomial test as the reference grows.
    """
    m = math.ceil((n_ref - 1) * percentile / 100.0) + 1
    return float(stats.betabinom.sf(k - 1, n_cur, m, n_ref + 1 - m))


def _topics(
    texts: list[str], emb: np.ndarray, *, max_topics: int, examples: int, seed: int
) -> tuple[list[dict], int]:
    if not texts:
        return [], 0
    if len(texts) > MAX_TOPIC_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), MAX_TOPIC_ROWS, replace=False))
        texts, emb = [texts[i] for i in keep], emb[keep]
    if len(texts) == 1:
        labels = np.zeros(1, dtype=int)
    else:
        labels = AgglomerativeClustering(
            n_clusters=None, distance_threshold=TOPIC_DISTANCE, metric="cosine", linkage="average"
        ).fit_predict(emb)
    try:
        tfidf = TfidfVectorizer(stop_words="english", max_features=5000)
        weights = tfidf.fit_transform(texts)
        terms = np.asarray(tfidf.get_feature_names_out())
    except ValueError:  # only stop words: no vocabulary to label with
        weights, terms = None, None
    groups = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centre = emb[members].mean(axis=0)
        nearest = members[np.argsort(-(emb[members] @ centre))[:examples]]
        top = ""
        if weights is not None:
            mean = np.asarray(weights[members].mean(axis=0)).ravel()
            top = ", ".join(terms[np.argsort(-mean)[:3]][mean[np.argsort(-mean)[:3]] > 0])
        groups.append(
            {"label": top or "(no terms)", "n": len(members), "examples": [texts[i] for i in nearest]}
        )
    groups.sort(key=lambda g: -g["n"])
    return groups[:max_topics], len(groups)


def rate_shift(
    name: str,
    ref_k: int,
    ref_n: int,
    cur_k: int,
    cur_n: int,
    *,
    pvalue: float = ALPHA,
    min_n: int = MIN_N,
    higher_is_worse: bool = True,
) -> Signal:
    """Has a rate (thumbs-down, corrections, abstentions, refusals, verified citations) got worse?

    Fisher's exact test, one-sided in the harmful direction (``higher_is_worse``: up for thumbs-down, down
    for citation-verified), so a better rate is never an alarm. drift: p < ``pvalue``; warn: p < 2·``pvalue``,
    a worsening that is suggestive but not yet significant (no effect-size default for rates could be cited;
    under no change a warn or worse comes in about 2·``pvalue`` of windows). ``value`` is the p-value.
    """
    source = f"ours: Fisher exact, one-sided (worse only), drift p < {pvalue:g}, warn p < {2 * pvalue:g}"
    statistic = "Fisher exact p-value (one-sided, worse)"
    if ref_n < min_n or cur_n < min_n:
        return _not_enough(name, statistic, source, ref_n, cur_n, min_n)
    table = [[cur_k, cur_n - cur_k], [ref_k, ref_n - ref_k]]
    _, p = stats.fisher_exact(table, alternative="greater" if higher_is_worse else "less")
    p = float(p)
    verdict = "drift" if p < pvalue else "warn" if p < 2 * pvalue else "ok"
    return Signal(
        name=name,
        statistic=statistic,
        value=p,
        threshold=pvalue,
        threshold_source=source,
        verdict=verdict,
        n_reference=ref_n,
        n_current=cur_n,
        details={
            "reference_rate": ref_k / ref_n,
            "current_rate": cur_k / cur_n,
            "reference_k": ref_k,
            "current_k": cur_k,
            "higher_is_worse": higher_is_worse,
        },
    )


def overall(signals: Sequence[Signal]) -> str:
    """The worst verdict among the signals; "not enough data" only when every signal (or none) says so."""
    verdicts = [s.verdict for s in signals]
    return max(verdicts, key=_RANK.__getitem__, default="not enough data")
