"""Convergence states and time-to-quality on curves with known answers."""

from __future__ import annotations

import math

from harness.reporting.convergence import PLATEAU, STILL_IMPROVING, UNKNOWN, WORSENING, convergence, time_to_quality


def test_a_curve_falling_by_more_than_the_noise_is_still_improving():
    # FID falling 45 points between the last two evaluations with one evaluation's noise at 2 points
    c = convergence([180.0, 135.0], noise_sd=2.0, higher_is_better=False)
    assert c.state == STILL_IMPROVING and c.change == 45.0
    assert convergence([60.0, 72.0], noise_sd=2.0, higher_is_better=True).state == STILL_IMPROVING


def test_changes_within_the_noise_are_a_plateau_and_rises_are_worsening():
    assert convergence([100.0, 96.0, 95.0], noise_sd=2.0, higher_is_better=False).state == PLATEAU
    assert convergence([100.0, 95.0, 110.0], noise_sd=2.0, higher_is_better=False).state == WORSENING
    # the threshold is the 95% spread of a difference of two evaluations: 1.96 * sqrt(2) * sd
    c = convergence([10.0, 10.0], noise_sd=1.0, higher_is_better=False)
    assert math.isclose(c.threshold, 2.7718, rel_tol=1e-3)
    assert convergence([10.0, 7.3], noise_sd=1.0, higher_is_better=False).state == PLATEAU
    assert convergence([10.0, 7.2], noise_sd=1.0, higher_is_better=False).state == STILL_IMPROVING


def test_without_two_evaluations_or_a_noise_estimate_the_state_is_unknown():
    assert convergence([5.0], 1.0, False).state == UNKNOWN
    assert convergence([5.0, float("nan")], 1.0, False).state == UNKNOWN
    c = convergence([5.0, 1.0], float("nan"), False)
    assert c.state == UNKNOWN and c.why == "no noise estimate"


def test_time_to_quality_is_the_first_evaluation_at_the_target():
    t = time_to_quality([100, 200, 300], [150.0, 99.0, 80.0], target=100.0, higher_is_better=False,
                        images_per_step=64, seconds=[10.0, 20.0, 30.0])
    assert (t.step, t.images, t.seconds) == (200, 12800, 20.0)
    never = time_to_quality([100, 200], [0.5, 0.6], target=0.9, higher_is_better=True, images_per_step=32)
    assert never.step is None and never.images is None
