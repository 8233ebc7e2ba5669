"""Scale-out and fault tolerance through the real engines (Ray Tune, Ray Train with gloo, Accelerate, MLflow).

Each test runs the CLI in a subprocess with its own results directory and MLflow store, like tests/test_study.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


@pytest.mark.slow  # ~70 s; tests/test_worker_invariance.py checks every recipe on two gloo workers in-process
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
    assert "a trial needs 128.01 CPUs" in res.stderr.splitlines()[-1] and "Traceback" not in res.stderr
    c = MlflowClient(f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}")
    assert not c.search_runs([c.get_experiment_by_name("block_sharing").experiment_id])  # no parent, no trial


@pytest.fixture
def two_node_cluster():
    """A head and a worker node on this machine (loopback), one CPU each, so two trials must use both nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow  # ~35 s: a second Ray node
def test_a_study_on_a_two_node_cluster_places_trials_on_both_nodes(tmp_path, two_node_cluster):
    results = tmp_path / "results"
    res = harness("study", str(STUDY), "--profile", "smoke", "--results-dir", str(results),
                  "--address", two_node_cluster.address, "--set", "variants=[D8, D16, D1S8, D2S4I]",
                  "--set", "train.steps=40", "--set", "eval.every=40", "--set", "train.log_every=10")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = trial_runs(results, "block_sharing")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    nodes = {r.data.tags["harness.node_id"] for r in runs}
    alive = {n.node_id for n in [two_node_cluster.head_node, *two_node_cluster.worker_nodes]}
    assert nodes == alive and len(nodes) == 2  # one CPU per node and two trials at a time: both nodes trained


def test_unshared_results_directory_is_refused_with_the_nodes_named(tmp_path):
    import ray

    from harness.errors import UserError
    from harness.run.preflight import check_shared_storage

    class Remote:  # a node whose filesystem does not have the driver's files
        def remote(self, path, data_root):
            return ray.put((None, True))

    class Probe:
        def options(self, **_):
            return Remote()

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        check_shared_storage(tmp_path / "r", tmp_path)  # the real probe: one machine shares its own disk
        with pytest.raises(UserError, match=r"results directory .* is not shared with the Ray node\(s\) at"):
            check_shared_storage(tmp_path / "r", tmp_path, probe=Probe())
        class NoData(Probe):
            def options(self, **_):
                return type("R", (), {"remote": lambda self, p, d: ray.put((Path(p).read_text(), False))})()

        with pytest.raises(UserError, match="data root .* does not exist on the Ray node"):
            check_shared_storage(tmp_path / "r", tmp_path, probe=NoData())
        check_shared_storage(tmp_path / "r", tmp_path / "nowhere")  # not on the driver either: not needed
        assert not list((tmp_path / "r").glob(".shared-storage-check-*"))  # the token is removed either way
    finally:
        ray.shutdown()


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=clean_env(),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        assert proc.poll() is None, f"the study ended before {what}: {proc.stdout.read()[-3000:]}"
        time.sleep(0.3)
    assert cond(), f"no {what} within {timeout} s"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["ray_train=always", "ray_train=auto"], ids=["train-worker", "tune-trial"])
def test_a_killed_worker_restarts_from_its_checkpoint_and_logs_each_step_once(tmp_path, path):
    # ray_train=always: the recipe runs in a Ray Train worker (Train's FailureConfig restarts the worker group);
    # auto with one worker: in the Tune trial process (Tune's FailureConfig restarts the trial). Either way the
    # recipe resumes from its own last checkpoint and the driver drops replayed steps.
    results = tmp_path / "results"
    args = ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(results), "--set", "variants=[D8]",
            "--set", "train.steps=1500", "--set", "eval.every=250", "--set", "train.log_every=50",
            "--set", "resources.max_failures=1", "--set", f"resources.{path}"]
    proc = start(args)
    runs_dir = results / "runs" / "block_sharing"
    wait_for(lambda: list(runs_dir.glob("*/checkpoints/step_*.pt")), proc, what="a checkpoint")
    (pid_file,) = runs_dir.glob("*/worker-0.pid")
    victim = int(pid_file.read_text().split()[0])
    os.kill(victim, signal.SIGKILL)  # the training process only; the driver lives on
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    (run,) = trial_runs(results, "block_sharing")
    assert run.info.status == "FINISHED"
    assert int(pid_file.read_text().split()[0]) != victim  # a new process finished the trial
    assert int(run.data.tags["harness.resumed_from_step"]) >= 250  # ... from a checkpoint, not from scratch
    steps = [m.step for m in history(results, run, "loss")]
    assert sorted(steps) == list(range(50, 1501, 50))  # every step exactly once


@pytest.mark.slow  # the default suite has the one-trial SIGKILL resume (tests/test_study.py)
def test_a_driver_killed_mid_study_resumes_only_what_was_missing(tmp_path):
    results = tmp_path / "results"
    variants = ["D8", "D16", "D1S8", "D2S4I", "D2S8UI"]
    args = ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(results),
            "--set", f"variants=[{', '.join(variants)}]", "--set", "train.steps=600", "--set", "eval.every=200",
            "--set", "train.log_every=50"]
    proc = start(args)
    db = results / "mlflow.db"

    def some_finished_some_not() -> bool:
        if not db.exists():
            return False
        try:
            st = [r.info.status for r in trial_runs(results, "block_sharing")]
        except Exception:  # noqa: BLE001 - the store is still being created
            return False
        return "FINISHED" in st and "RUNNING" in st

    wait_for(some_finished_some_not, proc, timeout=600, what="one finished trial while others ran")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    time.sleep(2)
    before = {r.data.tags["harness.config_hash"]: r.info.status for r in trial_runs(results, "block_sharing")}
    finished = sum(s == "FINISHED" for s in before.values())
    assert 1 <= finished < len(variants)
    rerun = harness(*args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{finished} done, {len(variants) - finished} to run" in rerun.stdout
    after = trial_runs(results, "block_sharing")
    hashes = [r.data.tags["harness.config_hash"] for r in after]
    assert len(after) == len(set(hashes)) == len(variants)  # one run per trial: none duplicated
    assert all(r.info.status == "FINISHED" for r in after)
    for r in after:  # resumed runs continued without logging a step twice
        steps = [m.step for m in history(results, r, "loss")]
        assert sorted(steps) == list(range(50, 601, 50))


@pytest.mark.slow
def test_eight_concurrent_trials_lose_no_metric_points(tmp_path):
    results = tmp_path / "results"
    variants = ["D16", "D1S16", "D1S8", "D2S4UI", "D2S4I", "D2S8UI", "D2S8I", "D8"]
    res = harness("study", str(STUDY), "--profile", "smoke", "--results-dir", str(results),
                  "--set", "train.steps=300", "--set", "train.log_every=1", "--set", "eval.every=300",
                  "--set", "resources.cpus_per_worker=0.25", "--set", "resources.max_concurrent_trials=8")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = trial_runs(results, "block_sharing")
    assert sorted(r.data.tags["harness.variant"] for r in runs) == sorted(variants)
    for r in runs:
        for key in ("loss", "images_per_s", "epoch"):
            assert [m.step for m in sorted(history(results, r, key), key=lambda m: m.step)] == list(range(1, 301))
    # they did run side by side: at some moment all eight runs were open
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) == 8


def test_a_checkpoint_carries_the_reports_of_two_intervals_and_resuming_replays_them(tmp_path):
    """Reports wait in Ray's queues until the driver polls the trial and die with a killed process; the checkpoints
    saved after them carry them, so a resumed trial sends each again (the driver drops steps it already has)."""
    import torch

    from harness.training.context import TrialContext

    paths = {"run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "data_root": str(tmp_path)}
    sent: list[int] = []
    ctx = TrialContext({}, paths, lambda p: sent.append(p["step"]))
    state = {"w": torch.zeros(2)}
    for step in (50, 100):
        ctx.report(step, {"loss": 1.0})
    ctx.report(150, {"loss": 1.0}, checkpoint=state)
    ctx.report(200, {"loss": 1.0})
    ctx.report(250, {"loss": 1.0}, checkpoint=state)
    ctx.report(300, {"loss": 1.0})  # after the last checkpoint: trained and reported again after a resume
    assert sent == [50, 100, 150, 200, 250, 300]

    replayed: list[int] = []
    resumed = TrialContext({}, paths, lambda p: replayed.append(p["step"]))
    assert torch.equal(resumed.load_checkpoint()["w"], state["w"])
    assert replayed == [50, 100, 150, 200, 250]  # the last two checkpoint intervals, this checkpoint included
    ctx.report(350, {"loss": 1.0}, checkpoint=state)
    replayed.clear()
    resumed.load_checkpoint()
    assert replayed == [200, 250, 300, 350]
    rank1 = TrialContext({}, paths, lambda p: None, rank=1, world_size=2)
    rank1.report(350, {"loss": 1.0}, checkpoint=None)
    assert rank1._since_checkpoint == []  # only rank 0's reports reach the driver, so only it keeps them


def test_ray_giving_up_mid_study_is_one_sentence_and_leaves_the_runs_resumable(tmp_path, monkeypatch):
    """Ray's memory monitor killing trial processes makes Tune raise out of fit(): the driver closes the runs as
    KILLED (a rerun resumes them) and says so in one sentence instead of a traceback."""
    import ray
    from click.testing import CliRunner
    from ray import tune

    from harness.cli.main import main

    def fit(self):
        raise RuntimeError("Caught unexpected exception: 2 worker(s) were killed due to the node running low on\n"
                           "memory.")

    monkeypatch.setattr(tune.Tuner, "fit", fit)
    results = tmp_path / "results"
    try:
        res = CliRunner().invoke(main, ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(results),
                                        "--set", "variants=[D8]"])
    finally:
        ray.shutdown()
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith(
        "error: Ray's memory monitor killed a trial process (the node ran low on memory) (RuntimeError: Caught "
        "unexpected exception: 2 worker(s) were killed due to the node running low on memory.); the study's open "
        "runs are closed as KILLED: rerun the same command to resume"), res.output
    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("block_sharing").experiment_id])
    assert runs and {r.info.status for r in runs} == {"KILLED"}
