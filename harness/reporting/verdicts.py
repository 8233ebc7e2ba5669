"""Statistical verdicts for "is A better than B, and by how much?", shared by `harness compare`, the study reports
and `harness plan`.

Every function takes per-seed values (one number per trial: when a trial was evaluated with several sampling seeds,
its value is their mean, so the spread between seeds already carries the sampling noise) and returns an interval
and a verdict that never claims more than the interval carries:

- ``better`` / ``worse``: the 95% interval of the difference excludes zero (in the metric's better direction);
- ``equivalent``: asked with a margin, both one-sided tests reject a difference beyond it (TOST: the 90% interval
  lies inside the margin), which is the test for a claim "A matches B" (absence of a significant difference is not
  evidence of a match);
- ``within noise``: the interval contains zero and equivalence was not asked for or not shown;
- ``undecided``: fewer than two values per arm (or pairs), so no interval can be formed.

The statistics are scipy's (t-tests with their confidence intervals, the noncentral t for power, ``bootstrap`` for
rank agreement); only the small amount of glue that turns their output into a verdict is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

BETTER, WORSE, EQUIVALENT, WITHIN_NOISE, UNDECIDED = "better", "worse", "equivalent", "within noise", "undecided"


@dataclass(frozen=True)
class Verdict:
    """A difference ``a - b`` with its interval and what it supports."""

    diff: float  # mean of a - b (paired: mean of the per-pair differences)
    lo: float  # 95% interval of the difference (nan when undecided)
    hi: float
    n_a: int  # values (seeds) in each arm; pairs when paired
    n_b: int
    verdict: str
    method: str  # "paired t", "Welch t", or why no interval was formed
    p: float = math.nan  # two-sided p of the difference
    margin: float | None = None  # the equivalence margin asked for, if any
    p_equivalence: float = math.nan  # TOST p (the larger of the two one-sided p's)

    def label(self, digits: int = 2) -> str:
        """``-1.23 [-2.01, -0.45] better`` or ``+0.40 undecided (1 seed)``."""
        if math.isnan(self.lo):
            return f"{self.diff:+.{digits}f} {self.verdict} ({self.method})"
        margin = f" (margin ±{self.margin:g})" if self.verdict == EQUIVALENT and self.margin is not None else ""
        return f"{self.diff:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}] {self.verdict}{margin}"


def _clean(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(x), dtype=float)
    return a[np.isfinite(a)]


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool, paired: bool = False,
            margin: float | None = None, confidence: float = 0.95) -> Verdict:
    """Arm ``a`` against baseline ``b``. ``paired``: the i-th values of a and b share a seed (and everything else
    that identifies a trial), so the test is on their differences and seed-to-seed variation cancels; otherwise
    Welch's t (unequal variances). ``margin`` (> 0, in the metric's units) asks for an equivalence test."""
    if paired:
        x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
        if len(x) != len(y):
            raise ValueError(f"paired arms need as many values each, got {len(x)} and {len(y)}")
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
    else:
        x, y = _clean(a), _clean(b)
    if margin is not None and not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    n_a, n_b = len(x), len(y)
    if n_a == 0 or n_b == 0:
        return Verdict(math.nan, math.nan, math.nan, n_a, n_b, UNDECIDED, "no values", margin=margin)
    diff = float(np.mean(x - y) if paired else np.mean(x) - np.mean(y))
    if n_a < 2 or n_b < 2:
        what = "1 pair" if paired else f"{min(n_a, n_b)} seed"
        return Verdict(diff, math.nan, math.nan, n_a, n_b, UNDECIDED, what, margin=margin)
    if paired:
        d = x - y
        if np.ptp(d) == 0:  # identical differences: t is undefined; the interval is the point itself
            return _degenerate(diff, n_a, n_b, higher_is_better, margin, "paired t")
        res = stats.ttest_rel(x, y)
        method = "paired t"
    else:
        if np.ptp(x) == 0 and np.ptp(y) == 0:
            return _degenerate(diff, n_a, n_b, higher_is_better, margin, "Welch t")
        res = stats.ttest_ind(x, y, equal_var=False)
        method = "Welch t"
    ci = res.confidence_interval(confidence_level=confidence)
    lo, hi = float(ci.low), float(ci.high)
    p_eq = math.nan
    if lo > 0 or hi < 0:
        verdict = BETTER if (lo > 0) == higher_is_better else WORSE
    else:
        verdict = WITHIN_NOISE
        if margin is not None:
            p_eq = equivalence_p(x, y, margin, paired)
            if p_eq < 1 - confidence:
                verdict = EQUIVALENT
    return Verdict(diff, lo, hi, n_a, n_b, verdict, method, float(res.pvalue), margin, p_eq)


def _degenerate(diff: float, n_a: int, n_b: int, higher_is_better: bool, margin: float | None,
                method: str) -> Verdict:
    """No spread at all (e.g. a deterministic metric): the difference is exact."""
    if diff == 0:
        verdict = EQUIVALENT if margin is not None else WITHIN_NOISE
    else:
        verdict = BETTER if (diff > 0) == higher_is_better else WORSE
    return Verdict(diff, diff, diff, n_a, n_b, verdict, method + " (no spread)", 0.0 if diff else 1.0, margin)


def equivalence_p(a: Sequence[float], b: Sequence[float], margin: float, paired: bool) -> float:
    """Two one-sided tests of |mean(a) - mean(b)| < margin; the larger one-sided p (reject both to call it
    equivalent). Shifting one arm by the margin turns each one-sided hypothesis into scipy's t-test."""
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if paired:
        d = x - y
        p_low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        p_high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    else:
        p_low = stats.ttest_ind(x + margin, y, equal_var=False, alternative="greater").pvalue
        p_high = stats.ttest_ind(x - margin, y, equal_var=False, alternative="less").pvalue
    return float(max(p_low, p_high))


def power(effect: float, sd: float, n: int, paired: bool = True, alpha: float = 0.05) -> float:
    """Power of the two-sided t-test at level ``alpha`` to detect a true difference ``effect`` with ``n`` seeds
    per arm (``paired``: n pairs whose differences have standard deviation ``sd``; otherwise two arms of n values
    with standard deviation ``sd`` each), from the noncentral t distribution."""
    if n < 2 or sd <= 0:
        return math.nan if sd <= 0 else 0.0
    if paired:
        df, nc = n - 1, abs(effect) / (sd / math.sqrt(n))
    else:
        df, nc = 2 * n - 2, abs(effect) / (sd * math.sqrt(2 / n))
    t = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(t, df, nc) + stats.nct.cdf(-t, df, nc))


def seeds_needed(effect: float, sd: float, target: float = 0.8, paired: bool = True, alpha: float = 0.05,
                 cap: int = 10_000) -> int | None:
    """The smallest number of seeds per arm (pairs when ``paired``) with ``power >= target``; None past ``cap``
    (the effect is too small for the noise) or when the effect is zero."""
    if effect == 0:
        return None
    if sd <= 0:
        return 2
    n = 2
    while n <= cap:
        if power(effect, sd, n, paired, alpha) >= target:
            return n
        n = n + 1 if n < 64 else int(n * 1.1)
    return None


@dataclass(frozen=True)
class RankAgreement:
    rho: float  # Spearman correlation of our per-variant means with the paper's values
    lo: float  # 95% bootstrap interval (nan when some variant has fewer than 2 seeds)
    hi: float
    variants: int
    method: str


def rank_agreement(ours: dict[str, Sequence[float]], paper: dict[str, float], confidence: float = 0.95,
                   n_resamples: int = 2000, seed: int = 0) -> RankAgreement:
    """Spearman's rho between our per-variant means and the paper's values, with a stratified bootstrap interval:
    each variant's seeds are resampled on their own (scipy's multi-sample ``bootstrap`` resamples every sample
    independently), so the interval carries our seed noise; the paper's numbers are taken as given."""
    names = [v for v in paper if v in ours and len(_clean(ours[v]))]
    if len(names) < 3:
        return RankAgreement(math.nan, math.nan, math.nan, len(names), "fewer than 3 variants")
    samples = [_clean(ours[v]) for v in names]
    ref = np.asarray([paper[v] for v in names], dtype=float)
    rho = float(stats.spearmanr([s.mean() for s in samples], ref).statistic)
    if min(len(s) for s in samples) < 2:
        return RankAgreement(rho, math.nan, math.nan, len(names), "1 seed for some variant: no interval")

    def statistic(*xs: np.ndarray) -> float:
        r = stats.spearmanr([x.mean() for x in xs], ref).statistic
        return 0.0 if np.isnan(r) else r  # every resampled mean tied: no rank information

    res = stats.bootstrap(samples, statistic, vectorized=False, n_resamples=n_resamples,
                          confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return RankAgreement(rho, float(ci.low), float(ci.high), len(names), "stratified bootstrap over seeds")
