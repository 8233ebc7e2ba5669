"""Reliability of the driver (issue 16, items 3, 4, 6 and 8): a private Ray per study, one driver per study and
store, a full disk and Ray's own failures closing runs as KILLED (resumable), damaged stores named as such.

The studies here train the zoo's ``null`` model (one parameter and a few stand-in matmuls per step), so each run
costs the stack's fixed time and little else. Each test runs the CLI in a subprocess with its own results directory.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.errors import infrastructure_reason

REPO = Path(__file__).resolve().parents[1]


def null_study(path: Path, steps: int = 40, seeds=(0, 1), work: int = 2, checkpoint_every: int = 10) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "nulltest", "recipe": "null", "datasets": ["synthetic"], "variants": ["null"], "seeds": list(seeds),
        "train": {"steps": steps, "work": work, "report_every": 10, "checkpoint_every": checkpoint_every},
        "eval": {"metrics": []}, "resources": {"workers": 1, "cpus_per_worker": 1.0},
        "table": {"kind": "settings", "metric": "loss"},
    }))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    return {**env, **extra}


def harness(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(**env), cwd=REPO)


def runs(results: Path, kind: str | None = None) -> list:
    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = c.get_experiment_by_name("nulltest")
    flt = f"tags.`harness.kind` = '{kind}'" if kind else ""
    return c.search_runs([exp.experiment_id], filter_string=flt, max_results=1000)


@pytest.fixture
def ray_tmp():
    """A short private Ray temp dir (Ray's socket paths must stay under 108 characters) holding its own
    ``ray_current_cluster`` record, so nothing here touches the machine's /tmp/ray."""
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _free_port() -> int:
    import socket

    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- item 3: whose Ray cluster
def test_a_stale_ray_start_record_neither_hangs_nor_delays_the_study(tmp_path, ray_tmp):
    """A `ray start` cluster that died without `ray stop` leaves its address in ray_current_cluster; ray.init()
    without an address retried that dead GCS for over 10 minutes, printing nothing."""
    record = Path(ray_tmp) / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True)
    record.write_text(f"127.0.0.1:{_free_port()}")  # nothing listens there
    study = null_study(tmp_path / "null.yaml")
    t0 = time.time()
    res = harness("study", str(study), "--results-dir", str(tmp_path / "results"), timeout=240, RAY_TMPDIR=ray_tmp)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "finished 2 trial(s), failed 0" in res.stdout
    assert time.time() - t0 < 180


@pytest.mark.slow
def test_a_ray_start_cluster_beside_the_study_is_not_joined(tmp_path, ray_tmp):
    """Without --address the study starts a private Ray: a cluster started by `ray start` on the machine (another
    checkout's, another user's) runs none of its trials."""
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    env = _env(RAY_TMPDIR=ray_tmp)
    subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        assert (Path(ray_tmp) / "ray" / "ray_current_cluster").read_text().strip().endswith(str(port))
        study = null_study(tmp_path / "null.yaml")
        res = harness("study", str(study), "--results-dir", str(tmp_path / "results"), timeout=300,
                      RAY_TMPDIR=ray_tmp)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        probe = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(address='auto', logging_level='ERROR'); "
             "print(' '.join(n['NodeID'] for n in ray.nodes()))"],
            env=env, capture_output=True, text=True, timeout=120, check=True)
        started = set(probe.stdout.split())
        assert started
        used = {r.data.tags["harness.node_id"] for r in runs(tmp_path / "results", "trial")}
        assert used and not used & started, (used, started)
    finally:
        _stop_cluster(ray_tmp)


def _stop_cluster(ray_tmp: str) -> None:
    """Kill the processes of the `ray start` cluster whose files are under ``ray_tmp``, and only those: `ray stop`
    kills every Ray process on the machine, other studies' included."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(ray_tmp) in arg for arg in proc.info["cmdline"] or []):
                mine += [proc, *proc.children(recursive=True)]
    for proc in mine:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(mine, timeout=30)


# ------------------------------------------------------------------ items 3 and 4: one driver, infrastructure kills
def _wait_for(cond, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver ended before {what}: {proc.stdout.read()[-3000:] if proc.stdout else ''}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_study_whose_lock_is_held_is_refused_in_one_sentence_before_anything_starts(tmp_path):
    """The fast form of the next test: the lock held by this process, the CLI refuses and opens no run."""
    from harness.run.driver import study_lock

    results = tmp_path / "results"
    results.mkdir()
    study = null_study(tmp_path / "null.yaml")
    with study_lock(results, "nulltest", "default", study):
        res = harness("study", str(study), "--results-dir", str(results), timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert err.startswith(f"error: study nulltest is already being run on the store in {results} by `harness study "
                          f"{study} --profile default` (pid {os.getpid()} on ") and err.count("\n") == 0, err
    assert not (results / "mlflow.db").exists()
    again = harness("study", str(study), "--results-dir", str(results), "--dry-run", timeout=120)
    assert again.returncode == 0  # released with the block; a dry run never takes it


def _long_study_at_its_first_checkpoint(tmp_path: Path, results: Path) -> tuple[subprocess.Popen, list[str]]:
    """A one-trial null study of 3000 steps started in its own process group, once its first checkpoint exists;
    returns the driver (stdout and stderr piped apart) and its arguments."""
    study = null_study(tmp_path / "null.yaml", steps=3000, seeds=(0,), work=4, checkpoint_every=100)
    args = ["study", str(study), "--results-dir", str(results)]
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=_env(),
                              start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = results / "runs" / "nulltest"
    try:
        _wait_for(lambda: list(ckpts.glob("*/checkpoints/step_*.pt")), 240, driver, "its first checkpoint")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        raise
    return driver, args


@pytest.mark.slow
def test_a_second_driver_is_refused_and_a_dead_driver_holds_nothing(tmp_path):
    """Two drivers on one study and results directory both trained all trials; now the second is refused with one
    sentence naming the first, and after the first is killed outright the same command resumes: its open runs are
    closed as KILLED, no trial runs twice, and the resumed trial's running time leaves out the gap."""
    results = tmp_path / "results"
    first, args = _long_study_at_its_first_checkpoint(tmp_path, results)
    try:
        second = harness(*args, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        err = second.stderr.strip()
        assert err.startswith("error: study nulltest is already being run") and err.count("\n") == 0, err
        assert f"pid {first.pid} " in err and "Traceback" not in second.stdout + second.stderr
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its Ray, mid-trial: nothing gets closed
        first.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    (trial,) = runs(results, "trial")
    assert trial.info.status == "RUNNING"
    time.sleep(8)  # a gap between the attempts, which the running time must not count
    rerun = harness(*args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "closed 2 run(s) left open by a driver" in rerun.stdout  # the dead driver's trial and parent
    (after,) = runs(results, "trial")
    assert after.info.run_id == trial.info.run_id and after.info.status == "FINISHED"
    assert {r.info.status for r in runs(results, "study")} == {"KILLED", "FINISHED"}
    span = (after.info.end_time - after.info.start_time) / 1000
    running = float(after.data.tags["harness.running_s"])
    assert 0 < running < span - 6, (running, span)


@pytest.mark.slow
def test_a_trial_process_killed_under_the_driver_is_interrupted_not_failed(tmp_path):
    """A trial whose process dies (Ray's memory monitor, the kernel's OOM killer, a lost node) was recorded FAILED
    ('trial raised an error') and skipped by the rerun unless --retry-failed; now it is closed KILLED, the others
    go on, the study says so in one sentence, and the same command resumes it."""
    results = tmp_path / "results"
    driver, args = _long_study_at_its_first_checkpoint(tmp_path, results)
    try:
        run_dir = results / "runs" / "nulltest"
        (pid_file,) = run_dir.glob("*/worker-0.pid")
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        out, err = driver.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 2, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 trial(s) interrupted because a trial's Ray worker process died") and \
        "rerun the same command to resume" in last, last
    (trial,) = runs(results, "trial")
    assert trial.info.status == "KILLED" and "harness.failure_reason" not in trial.data.tags
    assert {r.info.status for r in runs(results, "study")} == {"KILLED"}
    rerun = harness(*args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "1 to run, 0 failed" in rerun.stdout and "--retry-failed" not in rerun.stdout
    done = [r for r in runs(results, "trial") if r.data.tags["harness.config_hash"] == trial.data.tags[
        "harness.config_hash"]]
    assert len(done) == 1 and done[0].info.status == "FINISHED" and done[0].info.run_id == trial.info.run_id


# ---------------------------------------------------------------------------------------- item 4: store creation
def _open_store(uri: str, barrier) -> str:
    from harness.tracking import Tracker

    barrier.wait()
    try:
        Tracker(uri, "race", None)
        return "ok"
    except BaseException as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"


def test_processes_racing_to_create_a_store_all_open_it(tmp_path):
    """Two drivers started a second apart on a fresh store: one failed inside MLflow's schema migration."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as m:
        barrier = m.Barrier(4)
        with ctx.Pool(4) as pool:
            got = pool.starmap(_open_store, [(uri, barrier)] * 4)
    assert got == ["ok"] * 4, got
    c = MlflowClient(uri)
    assert [e.name for e in c.search_experiments()].count("race") == 1


# ---------------------------------------------------------------------------------------- item 8: damaged store
def _small_store(results: Path) -> Path:
    from harness.tracking import Tracker

    results.mkdir(parents=True)
    tr = Tracker(f"sqlite:///{results / 'mlflow.db'}", "nulltest", results / "mlartifacts")
    for _ in range(20):
        rid = tr.client.create_run(tr.experiment_id, tags={"harness.study": "nulltest"}).info.run_id
        from mlflow.entities import Metric

        tr.client.log_batch(rid, metrics=[Metric("loss", float(j), 0, j) for j in range(200)])
    return results / "mlflow.db"


@pytest.mark.parametrize("damage", ["garbage_page", "truncated"])
def test_a_damaged_store_is_named_as_damaged(tmp_path, damage):
    """One garbage page in `metrics` gave tables and status with rc 0 and no warning; a truncated store said
    'cannot reach the MLflow tracking store', which reads like a network problem."""
    results = tmp_path / "results"
    db = _small_store(results)
    if damage == "garbage_page":
        with contextlib.closing(sqlite3.connect(db)) as con:
            page_size = con.execute("PRAGMA page_size").fetchone()[0]
            root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
        with open(db, "r+b") as f:
            f.seek((root - 1) * page_size)
            f.write(os.urandom(page_size))
    else:
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 3)
    study = null_study(tmp_path / "null.yaml")
    for cmd in ("status", "table") if damage == "garbage_page" else ("study",):
        res = harness(cmd, str(study), "--results-dir", str(results), timeout=180)
        assert res.returncode == 2, (cmd, res.stdout[-2000:], res.stderr[-2000:])
        err = res.stderr.strip()
        assert err.startswith(f"error: the MLflow store {db} is damaged (SQLite: ") and err.count("\n") == 0, err
        assert ".recover" in err and "Traceback" not in res.stdout + res.stderr


# -------------------------------------------------------------------------------------------- item 6: disk full
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _fill(where: Path) -> Path:
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    return filler


def test_a_full_disk_interrupts_trials_in_one_sentence_and_the_rerun_resumes(tmp_path):
    """Disk full mid-study gave 1,167 lines of tracebacks and rc 1 with runs left RUNNING: now one sentence, every
    run closed KILLED, and after space is freed the same command finishes the study."""
    if os.geteuid() != 0 or not _mount_tmpfs(tmp_path / "small", "8m"):
        pytest.skip("mounting a small tmpfs needs root (CI and the developers' machines run as root)")
    small = tmp_path / "small"
    try:
        results = tmp_path / "results"
        results.mkdir()
        (small / "runs").mkdir()
        (results / "runs").symlink_to(small / "runs")  # checkpoints on the small disk, the store beside it
        study = null_study(tmp_path / "null.yaml", steps=200, seeds=(0, 1))
        args = ["study", str(study), "--results-dir", str(results)]
        filler = _fill(small)
        os.truncate(filler, filler.stat().st_size - 12288)  # 3 pages: trials start, then fail to write checkpoints
        res = harness(*args, timeout=300)
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
        assert "Traceback" not in res.stdout + res.stderr, res.stderr[-3000:]
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("error: 2 trial(s) interrupted because the disk is full") and \
            f"free space on the disk holding {results}, then rerun the same command" in last, last
        said = [ln for ln in res.stderr.strip().splitlines() if not re.match(r"\d{4}[-/]\d\d[-/]\d\d ", ln)]
        assert said == [last], res.stderr  # the sentence, beside MLflow's and Ray's timestamped log lines
        assert {r.info.status for r in runs(results)} == {"KILLED"}
        assert not list((small / "runs").glob("*/*/failure.txt"))  # not the recipe's failure
        assert not list((small / "runs").glob("*/*/checkpoints/step_*.tmp"))  # a failed checkpoint write leaves nothing
        filler.unlink()
        rerun = harness(*args, timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        assert "2 to run, 0 failed" in rerun.stdout and "finished 2 trial(s), failed 0" in rerun.stdout
        trials = runs(results, "trial")
        assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_under_the_store_is_one_sentence(tmp_path):
    """The driver's own writes (the MLflow store) failing for lack of space end in one sentence, not tracebacks."""
    if os.geteuid() != 0 or not _mount_tmpfs(tmp_path / "small", "16m"):
        pytest.skip("mounting a small tmpfs needs root (CI and the developers' machines run as root)")
    small = tmp_path / "small"
    try:
        results = small / "results"
        study = null_study(tmp_path / "null.yaml", steps=40, seeds=(0,))
        ok = harness("study", str(study), "--results-dir", str(results), timeout=300)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        filler = _fill(small)
        res = harness("study", str(study), "--results-dir", str(results), "--set", "seeds=[1,2]", timeout=300)
        assert res.returncode != 0 and "Traceback" not in res.stdout + res.stderr, res.stderr[-3000:]
        err = res.stderr.strip().splitlines()
        assert err[-1].startswith("error: ") and ("disk is full" in err[-1] or "disk or database is full" in err[-1]
                                                  or "database or disk is full" in err[-1]), err
        filler.unlink()
        rerun = harness("study", str(study), "--results-dir", str(results), "--set", "seeds=[1,2]", timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        assert {r.info.status for r in runs(results, "trial")} == {"FINISHED"}
        assert "RUNNING" not in {r.info.status for r in runs(results)}
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# ------------------------------------------------------------------------------------------------ classification
@pytest.mark.parametrize("error, reason", [
    (OSError(28, "No space left on device"), "the disk is full"),
    ("sqlite3.OperationalError: database or disk is full", "the disk is full"),
    ("ray.exceptions.RayActorError: The actor died unexpectedly before finishing this task.\nThe actor is dead "
     "because its worker process has died.", "a trial's Ray worker process died"),
    ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.", "Ray's memory"),
    # what a trial's error says when its raylet was killed (`ray stop` elsewhere on the machine): the class name
    # does not reach the driver, only the message
    ("The actor 33db5eb161fe1c442aab9c3601000000 is unavailable: The actor is temporarily unavailable: RpcError: "
     "RPC error: Socket closed rpc_code: 14. The task may or may not have been executed on the actor.",
     "a trial's Ray worker process died"),
    ("ray.exceptions.NodeDiedError: node died", "a Ray node was lost"),
    (ValueError("training loss became nan by step 2"), None),
    ("ray.exceptions.RayTaskError(ValueError): bad config", None),
])
def test_infrastructure_failures_are_told_from_recipe_failures(error, reason):
    got = infrastructure_reason(error)
    assert (got is None) if reason is None else got.startswith(reason), got
