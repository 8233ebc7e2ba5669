"""harness plan: seeds needed per question from a pilot in the store (fake MLflow store, no Ray)."""

from __future__ import annotations

import math

import pytest
from test_reporting import image_study, points_study

from harness.reporting.verdicts import seeds_needed
from harness.run import planner


def test_table1_questions_use_the_pilot_spread_and_the_papers_smallest_difference(store):
    loaded, trials, tracker = image_study(store, "inception")
    qs = planner.plan_questions(loaded, trials, tracker, effect=None)
    assert len(qs) == 1
    q = qs[0]
    assert (q.key, q.arm, q.baseline, q.pairs) == ("variant", "D16", "D8", 2)
    assert q.diff == pytest.approx(21.0) and q.sd == pytest.approx(math.sqrt(2))  # pairs 20 and 22
    assert q.effect_source == "smallest paper difference"
    assert q.effect == pytest.approx(abs(36.51 - 44.0), abs=10)  # the paper's D16 vs D8 on its datasets
    assert q.needed[1] == seeds_needed(q.effect, q.sd)
    q5 = planner.plan_questions(loaded, trials, tracker, effect=0.5)[0]
    assert q5.effect_source == "--effect" and q5.needed[1] == seeds_needed(0.5, math.sqrt(2)) > q.needed[1]


def test_more_samples_help_only_as_far_as_sampling_noise_goes(store):
    """With a calibrated real-vs-real spread, n x4 removes three quarters of the sampling variance only."""
    from harness.reporting.calibration import calibration_groups

    loaded, trials, tracker = image_study(store, "inception")
    tracker.log_calibration("bs", next(iter(calibration_groups(trials, loaded.study.calibration_draws))), "c", {}, [
        {"reference": "real vs real", "metric": "fid", "mean": 5.0, "sd": 0.9, "draws": 5, "n": 16}])
    q = planner.plan_questions(loaded, trials, tracker, effect=0.5)[0]
    var4 = max(2.0 - 2 * 0.81, 0) + 2 * 0.81 / 4
    assert q.needed[4] == seeds_needed(0.5, math.sqrt(var4)) < q.needed[1]


def test_substudy_questions_compare_settings_with_the_first(store):
    loaded, trials, tracker = points_study(store)
    qs = planner.plan_questions(loaded, trials, tracker, effect=10.0)
    by = {(q.substudy, q.arm): q for q in qs}
    # the first setting as the study writes it is the baseline, as in the settings tables
    assert by["epochs", 100].baseline == 1000 and by["epochs", 100].key == "train.epochs"
    assert by["epochs", 100].pairs == 2 and by["epochs", 100].needed[1] == seeds_needed(10.0, by["epochs", 100].sd)
    assert by["complexity", "mlp-a"].pairs == 1 and by["complexity", "mlp-a"].needed[1] is None  # no spread yet


def test_plan_command_without_a_pilot_proposes_one(tmp_path):
    from click.testing import CliRunner

    from harness.cli.main import main

    res = CliRunner().invoke(main, ["plan", "studies/toy_ddpm.yaml", "--profile", "smoke", "--results-dir",
                                    str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "no pilot with two or more seeds per arm" in res.output and "--set 'seeds=[0,1,2]'" in res.output


def test_a_study_with_nothing_to_compare_says_so(tmp_path):
    from click.testing import CliRunner

    from harness.cli.main import main

    res = CliRunner().invoke(main, ["plan", "studies/block_sharing.yaml", "--profile", "smoke", "--set",
                                    "variants=[D8]", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "nothing to compare" in res.output and "pilot" not in res.output
