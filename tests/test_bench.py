"""Benchmarks run end to end at tiny sizes and write their reports (their figures are measured, not tested)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_bench_eval_splits_the_first_and_second_evaluation_and_writes_its_report(tmp_path):
    out = tmp_path / "eval.md"
    res = CliRunner().invoke(main, ["bench", "eval", str(REPO / "studies" / "block_sharing.yaml"), "--profile",
                                    "smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    first, second = (line for line in res.output.splitlines() if line.startswith(("| first", "| second")))
    cells = [float(c) for c in first.strip("|").split("|")[1:]]
    eval_s, sample_s, sample_feat, ref_feat, other = cells
    assert eval_s == pytest.approx(sample_s + sample_feat + ref_feat + other, abs=0.03)
    assert float(second.strip("|").split("|")[4]) == 0  # the second run finds the reference features cached
    text = out.read_text()
    assert "# Evaluation benchmark" in text and "| cpu |" in text and "faster than the first" in text
    assert "fid" not in res.output.lower().replace("torch-fidelity", "")  # random weights: no distance is shown


def test_bench_eval_refuses_other_recipes_in_one_sentence(tmp_path):
    res = CliRunner().invoke(main, ["bench", "eval", str(REPO / "studies" / "toy_ddpm.yaml"), "--profile", "smoke",
                                    "--out", str(tmp_path / "x.md")])
    assert res.exit_code == 2 and "edm recipe" in res.output and res.output.count("\n") == 1
