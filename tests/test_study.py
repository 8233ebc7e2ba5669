"""End to end through the real engines: `harness study` -> Ray Tune (+ Ray Train) -> Accelerate -> MLflow -> tables.

Each test runs the CLI in a subprocess with its own results directory (and so its own SQLite MLflow store).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "block_sharing.yaml"
SMOKE_VARIANTS = ["D16", "D1S16", "D1S8", "D2S4UI", "D2S4I", "D2S8UI", "D2S8I", "D8"]


def harness(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def client(results: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def runs(results: Path, kind: str) -> list:
    c = client(results)
    exp = c.get_experiment_by_name("block_sharing")
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`harness.kind` = '{kind}'", max_results=1000)


def test_smoke_study_end_to_end_through_ray_train_then_rerun_trains_nothing(tmp_path):
    results = tmp_path / "results"
    first = harness("study", str(STUDY), "--profile", "smoke", "--results-dir", str(results),
                    "--set", "resources.ray_train=always")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "8 to run" in first.stdout and "finished 8 trial(s), failed 0" in first.stdout

    parents, trials = runs(results, "study"), runs(results, "trial")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {a.path for a in client(results).list_artifacts(parents[0].info.run_id, "tables")} >= {
        "tables/table1.md", "tables/table1.csv", "tables/fid_over_steps.png", "tables/pareto_fd_classifier.png"}
    assert sorted(r.data.tags["harness.variant"] for r in trials) == sorted(SMOKE_VARIANTS)
    c = client(results)
    for r in trials:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for tag in ("harness.config_hash", "harness.git_sha", "harness.versions", "harness.device", "harness.seed"):
            assert r.data.tags.get(tag)
        assert [m.step for m in c.get_metric_history(r.info.run_id, "loss")] == [2, 4]
        assert [m.step for m in c.get_metric_history(r.info.run_id, "fd_classifier")] == [2, 4]
        assert c.get_metric_history(r.info.run_id, "n_samples")[0].value == 16
        # system metrics (MLflow's monitors, sampled in the trial process, logged by the driver)
        assert 0 <= r.data.metrics["system/cpu_utilization_percentage"] <= 100
        assert r.data.metrics["system/trial_memory_megabytes"] > 50
        assert r.data.tags["harness.node_id"] and int(r.data.tags["harness.pid"]) > 0
        assert "fid" not in r.data.metrics  # a classifier-feature distance is never recorded as FID
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"config", "samples"} <= arts
        assert {a.path for a in c.list_artifacts(r.info.run_id, "samples")} == {
            "samples/step_000000002.png", "samples/step_000000004.png"}
        assert r.data.params["model.width"] == "32" and r.data.params["variant"] == r.data.tags["harness.variant"]
    # Trials ran as Ray Train TorchTrainers (not local mode): each has a Train run directory.
    assert len(list((results / "ray").glob("train-*"))) == 8

    table_dir = results / "block_sharing" / "smoke"
    table = pd.read_csv(table_dir / "table1.csv")
    assert sorted(table.variant) == sorted(SMOKE_VARIANTS)
    assert table.fd_classifier.notna().all() and (table.steps_million * 1e6).isin([2, 4]).all()
    md = (table_dir / "table1.md").read_text()
    assert "profile `smoke`" in md and "n = 16" in md and "not FID" in md
    assert (table_dir / "fid_over_steps.png").stat().st_size > 10_000
    pareto = pd.read_csv(table_dir / "pareto_fd_classifier.csv")  # quality against params, FLOPs and wall time
    assert len(pareto) == 8 and pareto.front_params.any() and (pareto.train_pflops > 0).all()
    assert (table_dir / "pareto_fd_classifier.png").stat().st_size > 10_000
    assert (table_dir / "table1.tex").read_text().startswith("\\begin{table}")
    report = (table_dir / "README.md").read_text()  # the report: tables, the paper in relative terms, plots
    assert "profile `smoke`" in report and "n = 16" in report and "python=" in report and "torch=" in report
    assert "## Beside the paper" in report and "Spearman rho" in report and "vs D8 (CIFAR10, paper)" in report
    assert "](fid_over_steps.png)" in report and "](pareto_fd_classifier.png)" in report
    assert "## Comparisons" not in report
    grids = sorted((table_dir / "samples").glob("*_step_000000004.png"))  # the last grid of each variant
    assert len(grids) == 8 and report.count("](samples/") == 8
    assert {f"tables/samples/{g.name}" for g in grids} <= {
        a.path for a in client(results).list_artifacts(parents[0].info.run_id, "tables/samples")}
    cmp = harness("compare", str(STUDY), "--profile", "smoke", "--results-dir", str(results), "--by", "variant")
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert "baseline `D8`" in cmp.stdout  # the study's table.baseline, not the first arm
    report = (table_dir / "README.md").read_text()
    assert report.count("### By variant") == 1 and "](compare_variant.csv)" in report

    again = harness("study", str(STUDY), "--profile", "smoke", "--results-dir", str(results),
                    "--set", "resources.ray_train=always")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 done, 0 to run" in again.stdout
    assert len(runs(results, "trial")) == 8 and len(runs(results, "study")) == 1

    dry = harness("study", str(STUDY), "--profile", "smoke", "--results-dir", str(results), "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count(" yes") == 8


def test_killed_study_resumes_its_trial_from_the_checkpoint(tmp_path):
    results = tmp_path / "results"
    args = ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(results), "--set", "variants=[D8]",
            "--set", "train.steps=3000", "--set", "eval.every=250", "--set", "train.log_every=50"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = results / "runs" / "block_sharing"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpts.glob("*/checkpoints/step_*.pt")):
        assert proc.poll() is None, "the study ended before it could be interrupted"
        time.sleep(0.5)
    saved = sorted(ckpts.glob("*/checkpoints/step_*.pt"))
    assert saved, "no checkpoint within 300 s"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-trial
    proc.wait()
    time.sleep(2)
    (before,) = runs(results, "trial")
    assert before.info.status == "RUNNING"  # the killed driver could not close it
    killed_at = int(sorted(ckpts.glob("*/checkpoints/step_*.pt"))[-1].stem.split("_")[1])
    assert killed_at < 3000

    rerun = harness(*args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "1 to run" in rerun.stdout
    (after,) = runs(results, "trial")  # the same MLflow run, continued
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    resumed = int(after.data.tags["harness.resumed_from_step"])
    assert resumed >= killed_at and resumed % 250 == 0
    steps = [m.step for m in client(results).get_metric_history(after.info.run_id, "loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 3000  # no step logged twice
    assert steps == list(range(50, 3001, 50))
    assert len(runs(results, "study")) == 2  # one parent per invocation


@pytest.mark.slow  # ~75 s; the default suite resumes a SIGKILLed study (test_killed_study_resumes_its_trial_...)
def test_sigterm_closes_the_running_trial_as_killed_and_the_rerun_resumes_it(tmp_path):
    results = tmp_path / "results"
    args = ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(results), "--set", "variants=[D8]",
            "--set", "train.steps=1000", "--set", "eval.every=100", "--set", "train.log_every=50"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = results / "runs" / "block_sharing"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpts.glob("*/checkpoints/step_*.pt")):
        assert proc.poll() is None, "the study ended before it could be interrupted"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # the driver only, as a scheduler or `kill` would
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: rerun the same command to resume" in out
    (trial,) = runs(results, "trial")
    (parent,) = runs(results, "study")
    assert trial.info.status == "KILLED" and parent.info.status == "KILLED"
    status = harness("status", str(STUDY), *args[2:])
    assert "interrupted" in status.stdout and "1 trials: 0 done, 1 interrupted" in status.stdout
    rerun = harness(*args)
    assert rerun.returncode == 0 and "1 to run" in rerun.stdout, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    (after,) = runs(results, "trial")
    assert after.info.run_id == trial.info.run_id and after.info.status == "FINISHED"


def test_a_diverging_trial_fails_with_its_reason_while_the_others_finish_and_status_shows_it(tmp_path):
    results = tmp_path / "results"
    args = ["--profile", "smoke", "--results-dir", str(results), "--set", "variants=[D8]",
            "--set", "axes={train.lr: [5.0e-4, 1.0e+30]}"]
    res = harness("study", str(STUDY), *args)
    assert res.returncode == 1 and "1 trial(s) failed" in res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    by_lr = {r.data.tags["harness.axis.train.lr"]: r for r in runs(results, "trial")}
    assert by_lr["0.0005"].info.status == "FINISHED" and by_lr["1e+30"].info.status == "FAILED"
    assert by_lr["1e+30"].data.tags["harness.failure_reason"] == "training loss became nan by step 2"
    status = harness("status", str(STUDY), *args)
    assert status.returncode == 0 and "2 trials: 1 done, 1 failed" in status.stdout
    assert "training loss became nan by step 2" in status.stdout
    again = harness("study", str(STUDY), *args)  # failed trials stay failed unless asked
    assert again.returncode == 1 and "0 to run, 1 failed" in again.stdout
    retry = harness("study", str(STUDY), *args, "--retry-failed")  # only the failed trial runs again
    assert retry.returncode == 1 and "1 done, 1 to run, 0 failed" in retry.stdout, retry.stdout[-2000:]
    after = runs(results, "trial")
    assert len(after) == 2  # the failed trial's run is reopened, not duplicated
    by_lr = {r.data.tags["harness.axis.train.lr"]: r for r in after}
    assert by_lr["1e+30"].info.status == "FAILED" and by_lr["0.0005"].info.status == "FINISHED"
    assert by_lr["1e+30"].data.tags["harness.failure_reason"] == "training loss became nan by step 2"


BAD_STUDIES = {
    "syntax": "name: x\nvariants: [D8\n",
    "unknown_key": {"trian": {"steps": 2}},
    "unknown_variant": {"variants": ["D8", "Q7"]},
    "wrong_type": {"train": {"steps": "two"}},
    "over_budget": {"budget": {"max_params": 1000}},
    "missing_dataset": {"datasets": ["cifar10"], "data": {"root": "nowhere", "download": False}},
    "no_seeds": {"seeds": []},  # found by the hypothesis test: zero trials crashed the table writer
    "absurd_width": {"model": {"width": 8098668032}},  # overflowed torch's size arithmetic even on the meta device
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_bad_study_file_is_one_sentence_and_leaves_no_run(tmp_path, case):
    base = yaml.safe_load(STUDY.read_text())
    base = {**base, **base["profiles"]["smoke"]}
    del base["profiles"], base["default_profile"]
    spec = BAD_STUDIES[case]
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / f"{case}.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump({**base, **spec}))
    results = tmp_path / "results"
    res = harness("study", str(path), "--results-dir", str(results))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not (results / "mlflow.db").exists()
    if case == "missing_dataset":
        assert "cifar10" in res.stderr and str(tmp_path / "nowhere") in res.stderr


TOY = REPO / "studies" / "toy_ddpm.yaml"


def test_toy_ddpm_smoke_runs_every_substudy_and_writes_tables_and_plots(tmp_path):
    results = tmp_path / "results"
    res = harness("study", str(TOY), "--profile", "smoke", "--results-dir", str(results))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "finished 11 trial(s), failed 0" in res.stdout
    c = client(results)
    exp = c.get_experiment_by_name("toy_ddpm")
    trials = c.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'")
    assert len(trials) == 11 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        for key in ("emd_test", "emd_train", "nll_test", "nll_train", "emd_test_std", "n_generated"):
            assert key in r.data.metrics, key
    out = results / "toy_ddpm" / "smoke"
    readme = (out / "README.md").read_text()
    for part in ("epochs", "complexity", "diffusion_steps", "noise_schedule", "beta_range"):
        assert f"## {part}" in readme and (out / f"{part}.csv").exists()
    plots = ("epochs_emd.png", "complexity_nll.png", "diffusion_steps_emd.png", "points.png", "pareto_emd_test.png")
    for plot in plots:
        assert (out / plot).stat().st_size > 5000
    # the homework's numbers stand beside ours
    assert "Paper EMD (sin_5_5)" in readme and "Model 1 (1x64)" in readme and "lbeta=1.28e-2 ubeta=1e-3" in readme
    complexity = pd.read_csv(out / "complexity.csv")
    assert list(complexity.setting) == ["Model 1 (1x64)", "Model 3 (64-128-128)"]
    assert complexity.paper_emd_helix.tolist() == [120.17, 89.78]
    # arms side by side against a baseline, paired per dataset (two pairs: a wide t interval)
    cmp = harness("compare", str(TOY), "--profile", "smoke", "--results-dir", str(results), "--by", "T",
                  "--baseline", "50")
    assert cmp.returncode == 0, cmp.stdout[-2000:] + cmp.stderr[-2000:]
    table = pd.read_csv(out / "compare_train_T.csv")
    # only the substudy that varies T: its baseline is T = 50 of that question, not every trial with T = 50
    assert set(table.arm) == {10, 50} and table.set_index("arm").loc[50, "vs_baseline"] == "baseline"
    row = table.set_index("arm").loc[10]
    assert row.pairs == 2 and row.ci_low < row["diff"] < row.ci_high
    assert (row.vs_baseline == "within noise") == (row.p_paired_t >= 0.05)


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [("train.T=0", "T"), ("train.lbeta=1.5", "lbeta"), ("train.ubeta=0", "ubeta"), ("train.schedule=cosin", "cosine"),
     ("train.T=20000000000", "1,000,000")],  # found by the hypothesis test: a schedule of 160 GB was a traceback
)
def test_toy_ddpm_bad_settings_refused_before_training(tmp_path, setting, fragment):
    results = tmp_path / "results"
    res = harness("study", str(TOY), "--profile", "smoke", "--results-dir", str(results), "--set", setting)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr
    assert not (results / "mlflow.db").exists()


def test_mnist_compression_smoke_measures_every_arm_and_skips_bitsandbytes_on_cpu(tmp_path):
    results = tmp_path / "results"
    study = REPO / "studies" / "mnist_compression.yaml"
    res = harness("study", str(study), "--profile", "smoke", "--results-dir", str(results))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    c = client(results)
    exp = c.get_experiment_by_name("mnist_compression")
    runs_ = {r.data.tags.get("harness.axis.train.quantize", r.data.tags["harness.config_hash"]): r
             for r in c.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'")}
    assert len(runs_) == 8 and all(r.info.status == "FINISHED" for r in runs_.values())  # 6 NCSN + 2 DDPM
    skipped = runs_["bnb8"]
    assert "CUDA" in skipped.data.tags["harness.skipped"] and "fd_classifier" not in skipped.data.metrics
    measured = [r for r in runs_.values() if "harness.skipped" not in r.data.tags]
    for r in measured:
        for key in ("compressed_bytes", "params", "nonzero_params", "inference_ms_per_image", "nfe",
                    "train_ms_per_epoch", "fd_classifier", "n_samples"):
            assert key in r.data.metrics, key
        assert "fid" not in r.data.metrics
    # (an untrained norm bias can be exactly zero, so only clearly sparse models count as pruned)
    pruned = [r for r in measured if r.data.metrics["nonzero_params"] < 0.97 * r.data.metrics["params"]]
    assert len(pruned) == 3  # L1 30 global and random 50 middle (NCSN), groups 2 + L1 10 (DDPM)
    ddpm = [r for r in measured if r.data.tags["harness.variant"] == "ddpm-unet-mnist"]
    assert len(ddpm) == 2 and all(r.data.metrics["nfe"] == 10 for r in ddpm)  # T = 5 steps, 2 with guidance
    # The two pruning arms and the int8 arm of the NCSN baseline evaluate its trained model: trained once.
    ncsn = [r for r in measured if r.data.tags["harness.variant"] == "ncsn-mnist"]
    assert len({r.data.tags["harness.train_hash"] for r in ncsn}) == 1
    assert sorted(r.data.tags["harness.training"] for r in ncsn) == ["reused a shared trained model"] * 3 + [
        "trained here"]
    assert len({r.data.metrics["train_ms_per_epoch"] for r in ncsn}) == 1  # the one training's own time, logged 4x
    trained = results / "runs" / "mnist_compression" / "trained"
    assert len(list(trained.iterdir())) == 4  # NCSN, NCSN groups 2, and the two DDPM models
    readme = (results / "mnist_compression" / "smoke" / "README.md").read_text()
    assert "Skipped: bitsandbytes" in readme and "L1 30 Global" in readme and "2 Groups" in readme
    assert "Best NCSN" in readme and "Best DDPM" in readme  # Table 9: the same trials, not trained again


@pytest.mark.slow  # ~70 s: two smoke studies on two data roots
def test_the_same_config_on_other_data_is_another_trial_and_does_not_resume_its_checkpoint(tmp_path):
    # data.root is not part of the config hash (paths are not results), so the data's content fingerprint is what
    # tells a run on generated stand-ins from a run on the real files.
    import numpy as np

    base = yaml.safe_load(TOY.read_text())
    study = {k: v for k, v in base.items() if k not in ("substudies", "profiles", "default_profile")}
    study.update(datasets=["helix"], variants=["toy-mlp-1x64"], seeds=[0],
                 train={**base["train"], "epochs": 2, "log_every": 1, "checkpoint_every": 1},
                 eval={**base["eval"], "runs": 1, "emd_n": 16},
                 # without the substudies, the table's entries keyed by substudy would name none (refused at load)
                 table={k: v for k, v in base["table"].items() if k not in ("plots", "curves", "combine")})
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "pts.yaml"
    path.write_text(yaml.safe_dump(study))
    files = tmp_path / "files"
    files.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.save(files / f"helix_3D_{split}.npy", rng.normal(size=(300, 3)))  # the homework's file names
    results = tmp_path / "results"
    first = harness("study", str(path), "--results-dir", str(results))  # no data/ folder: generated stand-ins
    assert first.returncode == 0 and "1 to run" in first.stdout, first.stdout[-2000:] + first.stderr[-2000:]
    again = harness("study", str(path), "--results-dir", str(results))
    assert "1 done, 0 to run" in again.stdout
    other = harness("study", str(path), "--results-dir", str(results), "--set", f"data.root={files}")
    assert other.returncode == 0 and "0 done, 1 to run" in other.stdout, other.stdout[-2000:] + other.stderr[-2000:]
    c = client(results)
    exp = c.get_experiment_by_name("toy_ddpm")
    trials = c.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'")
    assert len(trials) == 2 and len({r.data.tags["harness.config_hash"] for r in trials}) == 1
    assert len({r.data.tags["harness.data_hash"] for r in trials}) == 2
    newest = max(trials, key=lambda r: r.info.start_time)
    assert "harness.resumed_from_step" not in newest.data.tags  # trained afresh, not resumed from the other data
    (run_dir,) = (results / "runs" / "toy_ddpm").iterdir()
    assert list(run_dir.glob("checkpoints-data-*"))  # the stand-in's checkpoints were moved aside, not deleted
    status = harness("status", str(path), "--results-dir", str(results), "--set", f"data.root={files}")
    assert "1 trials: 1 done" in status.stdout
