"""Benchmarks run end to end at tiny sizes and write their reports (their figures are measured, not tested)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.main import main

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


def test_bench_overhead_runs_null_trials_through_the_stack_and_writes_its_report(tmp_path):
    out = tmp_path / "overhead.md"
    res = CliRunner().invoke(main, ["bench", "overhead", "--workers", "1", "--trials", "1", "--seconds", "2",
                                    "--step-ms", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    import ray

    assert not ray.is_initialized()  # the local Ray it started is shut down: later in-process studies start their own
    rows = [line for line in res.output.splitlines() if line.startswith("|       1 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    start, end = float(cells[3]), float(cells[5])
    assert 0 < start < 120 and 0 <= end < 60
    assert sum(float(x) for x in cells[4].split("+")) == pytest.approx(start, abs=0.3)  # the start's parts
    assert float(cells[7]) > 0 and float(cells[8]) > 0  # step time in quiet and in reporting phases
    assert float(cells[11]) >= 0  # ms inside ctx.report
    text = out.read_text()
    assert "# Harness overhead benchmark" in text and "| cpu |" in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data", "keys"])
def test_bench_data_and_keys_run_every_case(tmp_path, name):
    out = tmp_path / f"{name}.md"
    res = CliRunner().invoke(main, ["bench", name, "--studies", str(REPO / "studies"), "--windows", "1",
                                    "--per-window", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().count("\n|") >= 4


def test_bench_zoo_marks_targets_and_profiles_the_cells_that_miss_them(tmp_path):
    out = tmp_path / "zoo.md"
    res = CliRunner().invoke(main, ["bench", "zoo", "--variants", "D1S8", "--widths", "128,64", "--batches", "32",
                                    "--steps", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    row128 = next(line for line in text.splitlines() if line.startswith("| D1S8") and "|   128 |" in line)
    row64 = next(line for line in text.splitlines() if line.startswith("| D1S8") and "|    64 |" in line)
    assert ">= 0.50" in row128 and ("yes" in row128 or "no" in row128)
    assert ">=" not in row64  # no target at width 64
    if "| no " in row128:
        assert "Where the time goes" in text and "Self CPU" in text
