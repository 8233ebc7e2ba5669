"""CLI commands that read a study's store: clear one-sentence errors when there is nothing to read."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from harness.cli.main import main

STUDY = Path(__file__).resolve().parents[1] / "studies" / "block_sharing.yaml"


def test_ui_without_store_says_what_to_do(tmp_path):
    res = CliRunner().invoke(main, ["ui", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.startswith("error: no MLflow store at ") and "run a study first" in res.output


def test_ui_binds_to_localhost_by_default():
    opt = next(p for p in main.commands["ui"].params if p.name == "host")
    assert opt.default == "127.0.0.1"


def test_table_without_store_says_what_to_do(tmp_path):
    res = CliRunner().invoke(main, ["table", str(STUDY), "--profile", "smoke", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "no MLflow store" in res.output and "harness study" in res.output


def test_unwritable_results_dir_is_one_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = CliRunner().invoke(main, ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(blocker / "x")])
    assert res.exit_code == 2 and "not writable" in res.output and res.output.count("\n") == 1


def test_unreachable_tracking_server_is_one_sentence_within_seconds(tmp_path):
    import time

    t0 = time.time()
    res = CliRunner().invoke(main, ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(tmp_path),
                                    "--tracking-uri", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and res.output.startswith("error: cannot reach the MLflow tracking server at "
                                                        "http://127.0.0.1:9"), res.output
    assert "mlflow server" in res.output and time.time() - t0 < 60  # not MLflow's minutes of retries


def test_unreachable_ray_cluster_is_one_sentence_and_opens_no_run(tmp_path):
    from mlflow.tracking import MlflowClient

    res = CliRunner().invoke(main, ["study", str(STUDY), "--profile", "smoke", "--results-dir", str(tmp_path),
                                    "--address", "127.0.0.1:9"])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1].startswith("error: cannot reach the Ray cluster at 127.0.0.1:9")
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not c.search_runs([c.get_experiment_by_name("block_sharing").experiment_id])
