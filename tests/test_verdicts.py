"""Verdicts on synthetic data with known answers (harness/reporting/verdicts.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.reporting.verdicts import (
    BETTER,
    EQUIVALENT,
    UNDECIDED,
    WITHIN_NOISE,
    WORSE,
    compare,
    power,
    rank_agreement,
    seeds_needed,
)

# eight values spread exactly like a standard normal sample (deterministic, so the test cannot pass by luck)
Z8 = stats.norm.ppf((np.arange(8) + 0.5) / 8)


def test_planted_two_sigma_difference_over_eight_seeds_is_better():
    base = 10 + Z8
    arm = 10 - 2 + np.roll(Z8, 3)  # 2 sigma lower, lower is better (FID)
    v = compare(arm, base, higher_is_better=False)
    assert v.verdict == BETTER and v.hi < 0 and v.lo < -1
    assert compare(arm, base, higher_is_better=True).verdict == WORSE
    assert compare(base, arm, higher_is_better=False).verdict == WORSE


def test_paired_design_cancels_seed_noise():
    seed_effect = 5 * Z8  # large seed-to-seed variation shared by both arms
    base = 50 + seed_effect
    arm = 50 + seed_effect + 0.5 + 0.05 * np.roll(Z8, 2)
    assert compare(arm, base, higher_is_better=True).verdict == WITHIN_NOISE  # unpaired: lost in seed noise
    assert compare(arm, base, higher_is_better=True, paired=True).verdict == BETTER


def test_equal_arms_are_within_noise_or_equivalent_within_a_wider_margin():
    a, b = 3 + Z8, 3 + np.roll(Z8, 1)
    assert compare(a, b, higher_is_better=False).verdict == WITHIN_NOISE
    v = compare(a, b, higher_is_better=False, margin=2.0)
    assert v.verdict == EQUIVALENT and v.p_equivalence < 0.05
    # a margin inside the noise cannot be shown
    assert compare(a, b, higher_is_better=False, margin=0.05).verdict == WITHIN_NOISE


@pytest.mark.parametrize("a,b", [([1.0], [2.0, 3.0]), ([1.0, 2.0], [5.0]), ([], [1.0, 2.0])])
def test_one_seed_is_undecided_never_a_verdict(a, b):
    v = compare(a, b, higher_is_better=False)
    assert v.verdict == UNDECIDED and math.isnan(v.lo)
    assert compare([1.0], [9.0], higher_is_better=False, paired=True).verdict == UNDECIDED


def test_deterministic_metric_differences_are_exact():
    assert compare([2.0, 2.0], [1.0, 1.0], higher_is_better=True).verdict == BETTER
    assert compare([1.0, 1.0], [1.0, 1.0], higher_is_better=True, margin=0.1).verdict == EQUIVALENT


def test_label_says_interval_and_verdict():
    v = compare(10 - 2 + Z8, 10 + Z8, higher_is_better=False)
    assert v.label().endswith("better") and "[" in v.label()
    assert compare([1.0], [2.0], higher_is_better=False).label() == "-1.00 undecided (1 seed)"


@pytest.mark.parametrize("n,effect,paired", [(10, 1.0, True), (20, 0.8, False), (40, 0.5, True), (6, 1.5, False)])
def test_power_matches_a_simulated_t_test_within_five_percent(n, effect, paired):
    rng = np.random.default_rng(0)
    reps = 4000
    if paired:
        d = rng.normal(effect, 1.0, size=(reps, n))
        p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    else:
        x, y = rng.normal(effect, 1.0, size=(reps, n)), rng.normal(0.0, 1.0, size=(reps, n))
        p = stats.ttest_ind(x, y, axis=1).pvalue
    simulated = float(np.mean(p < 0.05))
    assert abs(power(effect, 1.0, n, paired=paired) - simulated) < 0.05


def test_power_matches_the_closed_form_normal_approximation_at_large_n():
    # for large n the t-test's power tends to Phi(delta sqrt(n) / sigma - z_{0.975})
    n, effect, sd = 200, 0.25, 1.0
    closed = stats.norm.cdf(effect * math.sqrt(n) / sd - stats.norm.ppf(0.975))
    assert power(effect, sd, n, paired=True) == pytest.approx(closed, abs=0.05 * closed)


def test_seeds_needed_is_the_smallest_n_with_the_target_power():
    n = seeds_needed(1.0, 1.0, target=0.8, paired=True)
    assert power(1.0, 1.0, n) >= 0.8 > power(1.0, 1.0, n - 1)
    assert n == 10  # textbook: a paired t-test with d = 1 needs 10 pairs for 80% power at 5%
    assert seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1e-4, 10.0, cap=500) is None


def test_rank_agreement_interval_reflects_seed_noise():
    paper = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    tight = {k: v + 0.01 * Z8 for k, v in paper.items()}
    r = rank_agreement(tight, paper)
    assert r.rho == pytest.approx(1.0) and r.lo == pytest.approx(1.0)
    noisy = {k: v + 3 * np.roll(Z8, i) for i, (k, v) in enumerate(paper.items())}
    r = rank_agreement(noisy, paper)
    assert r.lo < 0.5 < r.hi
    one_seed = {k: [v] for k, v in paper.items()}
    r = rank_agreement(one_seed, paper)
    assert r.rho == pytest.approx(1.0) and math.isnan(r.lo)
