"""The compute estimate (issue 18): training and evaluation FLOPs per trial from the zoo's forward FLOPs and the
recipes' configs, GPU-hours at a stated accelerator, minutes on this machine from a measured or recorded rate, and
`harness study --dry-run` printing them after the trial table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from test_preflight import study_copy

import harness.run.estimate as estimate
from harness.cli.main import main
from harness.run.estimate import (
    HELD_OUT_DENOISE,
    PEAK_FLOPS,
    TRAIN_FACTOR,
    UTILISATION,
    estimate_total,
    estimate_trials,
    measure_rate,
)
from harness.study.spec import expand_trials, load_study

REPO = Path(__file__).resolve().parents[1]


def smoke(name: str, **sets):
    loaded = load_study(REPO / "studies" / f"{name}.yaml", "smoke", sets or None)
    return loaded, expand_trials(loaded)


def test_training_flops_scale_with_steps_and_batch():
    base = {"variants": ["D8"], "train.log_every": 1, "eval.every": 4}
    (l1, (t1,)), (l2, (t2,)), (l3, (t3,)) = (smoke("block_sharing", **base, **{"train.steps": s, "train.batch_size": b})
                                              for s, b in ((4, 8), (8, 8), (8, 16)))
    e1, e2, e3 = (estimate_trials(loaded, trials, measure=False)[0]
                  for loaded, trials in ((l1, [t1]), (l2, [t2]), (l3, [t3])))
    assert e1.train_flops == TRAIN_FACTOR * t1.gflops * 1e9 * 4 * 8
    assert e2.train_flops == 2 * e1.train_flops and e3.train_flops == 4 * e1.train_flops
    assert (e1.train_samples, e2.train_samples, e3.train_samples) == (32, 64, 128)
    # evaluations every 4 steps and at the last: 1, then 2, each n samples x the sampler's steps + the held-out loss
    n, steps = t1.eval["n_samples"], t1.eval["sampler_steps"]
    assert e1.eval_passes == n * steps + HELD_OUT_DENOISE and e2.eval_passes == e3.eval_passes == 2 * e1.eval_passes
    (l5, (t5,)) = smoke("block_sharing", **base, **{"train.steps": 4, "train.batch_size": 8, "eval.sampling_seeds": 3})
    e5 = estimate_trials(l5, [t5], measure=False)[0]
    assert e5.eval_passes == 3 * n * steps + HELD_OUT_DENOISE  # three draws of n samples per evaluation
    assert e1.rate is None and e1.minutes is None  # nothing measured
    assert e1.gpu_hours == pytest.approx(e1.flops / (PEAK_FLOPS["fp32"] * UTILISATION) / 3600)
    (l4, (t4,)) = smoke("block_sharing", **base, **{"train.steps": 4, "train.batch_size": 8,
                                                    "train.mixed_precision": "bf16"})
    e4 = estimate_trials(l4, [t4], measure=False)[0]
    assert e4.precision == "bf16" and e4.gpu_hours == pytest.approx(e4.flops / (312e12 * UTILISATION) / 3600)


def test_epochs_count_the_training_split_and_shared_models_train_once():
    from harness.training.point_clouds import load_study_points

    loaded, trials = smoke("toy_ddpm")
    t = trials[0]
    est = estimate_trials(loaded, [t], measure=False)[0]
    train = load_study_points(t.dataset, t.data, "train")
    test = load_study_points(t.dataset, t.data, "test")
    assert est.train_samples == t.train["epochs"] * len(train)
    assert est.eval_passes == t.eval["runs"] * len(test) * t.train["T"]  # sampling runs of the test split's size

    loaded, trials = smoke("mnist_compression")
    ests = dict(zip([t.config_hash for t in trials], estimate_trials(loaded, trials, measure=False)))
    by_model: dict[str, list] = {}
    for t in trials:
        by_model.setdefault(t.train_hash, []).append(ests[t.config_hash])
    shared = [group for group in by_model.values() if len(group) > 1]
    assert shared  # pruning / int8 arms share their baseline's model
    for first, *others in shared:  # the first trial of a shared model trains it, the others only evaluate
        assert first.train_samples > 0 and first.note == ""
        assert all(e.train_samples == 0 and e.note == f"trained by {first.config_hash}" and e.eval_flops > 0
                   for e in others)
    skipped = [ests[t.config_hash] for t in trials if str(t.train.get("quantize")).startswith("bnb")]
    assert skipped and all(e.flops == 0 and e.note.startswith("skipped") for e in skipped)  # no CUDA: not trained


def test_every_zoo_family_has_a_measured_rate():
    import zoo

    seen = {}
    for name in ("block_sharing", "classical_constraints", "classical_generator", "mnist_compression", "toy_ddpm"):
        for t in smoke(name)[1]:
            seen.setdefault(t.family, t)
    any_trial = next(iter(seen.values()))
    seen["null"] = dataclasses.replace(any_trial, family="null", model={"features": 4096}, gflops=4096e-9)
    assert set(seen) == set(zoo.families())
    for family, t in seen.items():
        rate = measure_rate(t)
        assert rate and rate > 0, family


def test_recorded_throughput_is_used_where_a_finished_run_has_one():
    loaded, trials = smoke("block_sharing", variants=["D8"])
    (t,) = trials
    run = SimpleNamespace(data=SimpleNamespace(metrics={"images_per_s": 100.0}))
    (e,) = estimate_trials(loaded, trials, runs={t.config_hash: run})
    assert e.rate == pytest.approx(TRAIN_FACTOR * t.gflops * 1e9 * 100.0)
    assert e.rate_source == "recorded by its finished run: 100 images/s"
    assert e.minutes == pytest.approx(e.flops / e.rate / 60)


def test_without_time_to_measure_minutes_are_unknown_and_said_so():
    loaded, trials = smoke("block_sharing")
    ests = estimate_trials(loaded, trials, budget_s=0.0, cpus=2)
    assert all(e.rate is None and e.rate_source == "not measured (time budget spent)" for e in ests)
    total = estimate_total(loaded, ests, cpus=2)
    assert total.trial_minutes is None and "minutes on this machine: not measured" in total.describe()


def test_wall_minutes_run_longest_first_on_free_slots():
    assert estimate._wall([3.0, 2.0, 2.0, 1.0], 2) == 4.0
    assert estimate._wall([3.0, 2.0], 1) == 5.0


def test_describe_profile_states_the_range_of_lengths():
    loaded = load_study(REPO / "studies" / "toy_ddpm.yaml", "paper")
    trials = expand_trials(loaded)
    total = estimate_total(loaded, estimate_trials(loaded, trials, measure=False), cpus=2)
    text = estimate.describe_profile(loaded, trials, total)
    assert text.startswith(f"profile 'paper' trains {len(trials)} trials x 100-2,000 epochs on 1 CPU each "
                           "(an estimated "), text


def test_dry_run_prints_the_estimate_after_the_trial_table(tmp_path):
    path = study_copy(tmp_path, "block_sharing")  # smoke by default
    res = CliRunner().invoke(main, ["study", str(path), "--dry-run", "--results-dir", str(tmp_path / "results")])
    assert res.exit_code == 0, (res.output, res.exception)
    out = res.output
    assert out.index("study block_sharing [profile smoke]: 8 trials") < out.index("estimate per trial:")
    table = out.split("estimate per trial:")[1]
    assert all(col in table for col in ("train samples", "TFLOP", "GPU-h", "min here", "rate here"))
    assert table.count("measured here: ") >= 8  # every trial says where its rate came from
    assert "estimate, all 8 trials: " in out and " GPU-hours at the profile's scale (A100 fp32 19.5 TFLOP/s at 40% " \
        "utilisation)" in out
    assert "trial-minutes, wall " in out and "trial(s) at once" in out
    assert not (tmp_path / "results" / "mlflow.db").exists()
