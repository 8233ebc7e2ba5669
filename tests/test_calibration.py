"""Metric floors: real vs real for image distances, a perfect and a trivial generator for point clouds, chance for
accuracy (harness/eval/calibration.py and the recipes' calibrate functions)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.eval.calibration import chance, real_vs_real
from harness.recipes import get_recipe


def test_real_vs_real_draws_from_the_pool_only_and_reports_the_spread():
    ref = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    pool = torch.arange(1, 41, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    seen = []

    def distance(x):
        seen.append(x)
        return {"fid": float(x.float().mean() - ref.float().mean()), "n_samples": len(x), "extractor": "fake"}

    floors = real_vs_real(distance, pool, n=8, draws=4)
    assert [f.metric for f in floors] == ["fid"] and floors[0].draws == 4 and floors[0].n == 8
    assert all(len(x) == 8 and bool((x > 0).all()) for x in seen)  # never a reference image (0)
    vals = torch.tensor([float(x.float().mean()) for x in seen], dtype=torch.float64)
    assert floors[0].mean == pytest.approx(float(vals.mean())) and floors[0].sd == pytest.approx(float(vals.std()))
    with pytest.raises(ValueError, match="needs 8 real images"):
        real_vs_real(distance, pool[:5], n=8, draws=2)


def test_chance_accuracy():
    f = chance("val_accuracy", 10, 1000)
    assert f.mean == 0.1 and math.isnan(f.sd) and f.reference == "chance"


def test_point_floors_put_a_perfect_generator_below_a_trivial_one(tmp_path):
    """On the generated helix: training points score a lower EMD and NLL against the test split than N(0, I)."""
    fn = get_recipe("ddpm").load_calibrate_fn()
    trial = {"dataset": "helix", "data": {"root": str(tmp_path)}, "seed": 0, "eval": {"emd_n": 64}}
    ctx = SimpleNamespace(data_root=tmp_path)
    floors = {(f.reference, f.metric): f for f in fn(trial, ctx, 3)}
    for metric in ("emd_test", "nll_test"):
        perfect, trivial = floors[("training subset", metric)], floors[("N(0, I)", metric)]
        assert perfect.draws == 3 and perfect.sd >= 0
        assert perfect.mean + 2 * perfect.sd < trivial.mean


def test_every_image_recipe_registers_a_calibration():
    for name in ("edm", "vdiff", "gan", "score", "ddpm_image", "ddpm", "classify"):
        assert get_recipe(name).load_calibrate_fn() is not None, name
    assert get_recipe("null").load_calibrate_fn() is None


def test_calibration_runs_once_per_group_and_the_reports_read_it(tmp_path):
    """The toy-DDPM smoke study (generated point clouds): one calibration run per dataset and evaluation setting,
    logged to MLflow; a second call measures nothing; the floors come back for the report."""
    from pathlib import Path

    from harness.reporting.calibration import calibration_groups, floors_table
    from harness.run.calibrate import run_calibrations
    from harness.study.spec import expand_trials, load_study
    from harness.tracking import Tracker

    study = Path(__file__).resolve().parents[1] / "studies" / "toy_ddpm.yaml"
    loaded = load_study(study, "smoke", {"data.root": str(tmp_path / "data"), "calibration_draws": 2})
    trials = expand_trials(loaded)
    groups = calibration_groups(trials, 2)
    assert 1 <= len(groups) < len(trials)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", loaded.study.name, tmp_path / "mlartifacts")
    lines = []
    new = run_calibrations(loaded, trials, tracker, tmp_path, echo=lines.append)
    assert len(new) == len(groups) and any("training subset: emd_test" in ln for ln in lines)
    assert run_calibrations(loaded, trials, tracker, tmp_path, echo=lines.append) == []  # nothing measured twice
    rows = floors_table(loaded, trials, tracker)
    refs = {(r["dataset"], r["reference"], r["metric"]) for r in rows}
    for ds in {t.dataset for t in trials}:
        assert (ds, "training subset", "nll_test") in refs and (ds, "N(0, I)", "emd_test") in refs
    run = tracker.client.get_run(new[0])
    assert any(k.startswith("floor/training_subset/emd_test/") for k in run.data.metrics)
    off = load_study(study, "smoke", {"calibration_draws": 0})
    assert run_calibrations(off, expand_trials(off), tracker, tmp_path) == []
