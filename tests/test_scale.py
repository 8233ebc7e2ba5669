"""Scale-out and fault tolerance through the real engines (Ray Tune, Ray Train with gloo, Accelerate, MLflow).

Each test runs the CLI in a subprocess with its own results directory and MLflow store, like tests/test_study.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "block_sharing.yaml"
TOY = REPO / "studies" / "toy_ddpm.yaml"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}


def harness(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(), cwd=REPO)


def trial_runs(results: Path, experiment: str) -> list:
    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string="tags.`harness.kind` = 'trial'", max_results=1000)


def history(results: Path, run, key: str) -> list:
    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}").get_metric_history(run.info.run_id, key)


def loss_curve(results: Path, **tags: str) -> list[tuple[int, float]]:
    (run,) = trial_runs(results, "block_sharing")
    assert run.info.status == "FINISHED"
    for k, v in tags.items():
        assert run.data.tags[k] == v
    return [(m.step, m.value) for m in sorted(history(results, run, "loss"), key=lambda m: m.step)]


def test_two_gloo_workers_train_the_same_loss_curve_as_one_worker_with_the_same_global_batch(tmp_path):
    # Every rank draws the global batch (samples, noise levels, augmentation, class dropout) from one seed and
    # trains on its half; DDP averages the halves' gradients, which is the global batch's gradient. So the curves
    # agree up to floating-point reduction order, not just statistically.
    common = ["--profile", "smoke", "--set", "variants=[D8]", "--set", "train.steps=16", "--set", "train.batch_size=16",
              "--set", "train.log_every=2", "--set", "eval.every=16", "--set", "train.augment_prob=0.5",
              "--set", "resources.cpus_per_worker=0.5"]  # two workers and the Train driver fit on 2 cores
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = harness("study", str(STUDY), *common, "--results-dir", str(one), "--set", "resources.workers=1")
    assert r1.returncode == 0, r1.stdout[-2000:] + r1.stderr[-2000:]
    r2 = harness("study", str(STUDY), *common, "--results-dir", str(two), "--set", "resources.workers=2")
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-2000:]
    c1, c2 = loss_curve(one), loss_curve(two)
    assert [s for s, _ in c1] == [s for s, _ in c2] == list(range(2, 17, 2))
    assert len(list((two / "ray").glob("train-*"))) == 1  # the two-worker trial ran as a TorchTrainer
    assert all(abs(a - b) <= 1e-3 * abs(a) for (_, a), (_, b) in zip(c1, c2)), (c1, c2)
    # and the loss moved: the comparison is not between two constant curves
    assert abs(c1[0][1] - c1[-1][1]) > 10 * 1e-3 * abs(c1[0][1])


def test_a_trial_larger_than_the_cluster_is_refused_instead_of_waiting_forever(tmp_path):
    res = harness("study", str(STUDY), "--profile", "smoke", "--results-dir", str(tmp_path / "r"),
                  "--set", "variants=[D8]", "--set", "resources.workers=2", "--set", "resources.cpus_per_worker=64")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stderr.splitlines()[-1].startswith("error: a trial needs 128.01 CPUs") and "Traceback" not in res.stderr
    c = MlflowClient(f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}")
    assert not c.search_runs([c.get_experiment_by_name("block_sharing").experiment_id])  # no parent, no trial
