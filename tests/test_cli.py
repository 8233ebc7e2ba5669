"""CLI commands that read a study's store: clear one-sentence errors when there is nothing to read."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from harness.cli import main

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
