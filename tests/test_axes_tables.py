"""Tables and plots of studies with axes key by every identifying axis (issue 18): a row or line is one configuration
(dataset, variant, axis values), so its mean, std and seed count are over seeds only, never over axis values.

A fake MLflow store as in tests/test_reporting.py: trials built by hand, runs logged the way the driver logs them,
no model, no training, no Ray; then one end-to-end check through `harness study` and `harness table` (~90 s).
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from test_reporting import cells, loaded_study, log_trial, trial

from harness.reporting import compare, pareto, settings, tables
from harness.reporting.sources import trial_histories
from harness.run import commands
from harness.study.spec import EvalSpec, Study, TableSpec

# (variant, model.width, seed) -> [(step, FID, KID)]: the widths differ far more than the seeds do, so any pooling
# of the two widths shows in the means, the stds and the seed counts.
RUNS = {
    ("D8", 32, 0): [(2, 25.0, 0.003), (4, 20.0, 0.002)],
    ("D8", 32, 1): [(2, 26.0, 0.004), (4, 22.0, 0.003)],
    ("D8", 64, 0): [(2, 30.0, 0.006), (4, 35.0, 0.007)],
    ("D8", 64, 1): [(2, 34.0, 0.008), (4, 36.0, 0.009)],
    ("D16", 32, 0): [(2, 40.0, 0.004), (4, 41.0, 0.005)],
    ("D16", 32, 1): [(2, 44.0, 0.005), (4, 43.0, 0.006)],
    ("D16", 64, 0): [(2, 52.0, 0.007), (4, 50.0, 0.006)],
    ("D16", 64, 1): [(2, 53.0, 0.008), (4, 52.0, 0.007)],
}


def axis_study(store, paper_csv: str | None = "block_sharing_table1.csv", extractor: str = "inception"):
    """Two variants x model.width in (32, 64) x seeds (0, 1) on CIFAR-10, every trial finished."""
    s = Study(name="ax", recipe="edm", datasets=("cifar10",), variants=("D8", "D16"), paper="The paper" if paper_csv
              else "", description="Widths.", seeds=(0, 1), train={"steps": 4}, axes={"model.width": [32, 64]},
              eval=EvalSpec(every=2, n_samples=16, extractor=extractor, metrics=("fid", "kid")),
              table=TableSpec(kind="best_checkpoint", paper_csv=paper_csv, metric="fid", baseline="D8"))
    tracker = store("ax")
    trials = []
    for i, ((variant, width, seed), points) in enumerate(RUNS.items()):
        t = trial("ax", variant, "cifar10", seed, axes={"model.width": width})
        t = dataclasses.replace(t, model={"width": width})  # the axis value is in the resolved model (and hash)
        dist, kern = ("fid", "kid") if extractor == "inception" else ("fd_classifier", "kd_classifier")
        log_trial(tracker, t, {dist: [(s_, d) for s_, d, _ in points], kern: [(s_, k) for s_, _, k in points],
                               "n_samples": [(s_, 16.0) for s_, _, _ in points]}, index=i)
        trials.append(t)
    assert len({t.config_hash for t in trials}) == 8
    return loaded_study(s), trials, tracker


def test_table1_has_a_row_per_variant_and_axis_value_over_seeds_only(store):
    loaded, trials, tracker = axis_study(store)
    df, caption = tables.best_checkpoint_table(loaded, trials, tracker)
    assert list(df.columns[:4]) == ["dataset", "variant", "model.width", "seeds"]
    assert df[["variant", "model.width"]].values.tolist() == [["D8", 32], ["D8", 64], ["D16", 32], ["D16", 64]]
    assert (df.seeds == 2).all()  # 2 seeds, not 2 seeds x 2 widths
    by = df.set_index(["variant", "model.width"])
    assert by.loc[("D8", 32), "fid"] == pytest.approx(21.0) and by.loc[("D8", 32), "fid_std"] == pytest.approx(
        math.sqrt(2))
    assert by.loc[("D8", 64), "fid"] == pytest.approx(32.0)  # best of 30/35 and of 34/36
    assert by.loc[("D16", 64), "fid"] == pytest.approx(51.0) and by.loc[("D16", 32), "fid"] == pytest.approx(41.5)
    assert by.loc[("D8", 64), "steps_million"] == pytest.approx(2e-6)
    # the paper's table has no width: its one number per variant beside each width, and the caption says so
    assert (by.xs("D8", level="variant").paper_fid == 36.51).all()
    assert by.loc[("D8", 64), "fid_diff"] == pytest.approx(32.0 - 36.51)
    assert "Each row is one configuration (variant and model.width)" in caption
    assert "The paper's table does not vary model.width" in caption
    shown = tables._display(df, *tables.image_distances("inception"), ["model.width"])
    assert list(shown.columns[:4]) == ["Dataset", "Variant", "model.width", "Steps"]
    assert shown.iloc[1].tolist()[:5] == ["CIFAR10", "D8", "64", "2", "32.00 ± 2.83"]


def test_the_papers_numbers_sit_only_beside_rows_at_the_papers_setting(store, monkeypatch):
    paper = pd.DataFrame({"dataset": ["CIFAR10", "CIFAR10"], "variant": ["D8", "D16"], "model.width": [64, 64],
                          "steps_million": [0.96, 0.52], "fid": [36.51, 34.52], "kid_x1e4": [67.98, 54.39]})
    monkeypatch.setattr(tables, "paper_table", lambda name: paper)
    loaded, trials, tracker = axis_study(store)
    df, caption = tables.best_checkpoint_table(loaded, trials, tracker)
    by = df.set_index(["variant", "model.width"])
    assert by.loc[("D8", 64), "paper_fid"] == 36.51 and by.loc[("D16", 64), "fid_diff"] == pytest.approx(51 - 34.52)
    assert by.xs(32, level="model.width").paper_fid.isna().all()
    assert "only beside rows at the paper's own model.width" in caption and "does not vary" not in caption


def test_table1_files_plot_and_report_key_by_the_axis(store, tmp_path, monkeypatch):
    monkeypatch.setattr(pareto, "pareto_plot", lambda agg, label, higher, caption, path: path)
    import seaborn as sns

    drawn = []
    real = sns.relplot

    def relplot(data, **kw):
        drawn.append((data.copy(), kw["hue"]))
        return real(data=data, **kw)

    monkeypatch.setattr(sns, "relplot", relplot)
    loaded, trials, tracker = axis_study(store, extractor="classifier")
    written, main = tables.write_study_report(loaded, trials, tracker, tmp_path)
    out = tmp_path / "ax" / "unit"
    assert {p.name for p in written} >= {"README.md", "table1.md", "table1.csv", "table1.tex", "fid_over_steps.png"}
    csv = pd.read_csv(out / "table1.csv")
    assert csv[["variant", "model.width", "seeds"]].values.tolist() == [["D8", 32, 2], ["D8", 64, 2], ["D16", 32, 2],
                                                                         ["D16", 64, 2]]
    md = (out / "table1.md").read_text()
    assert "| Dataset | Variant | model.width |" in md and cells(md, "CIFAR10")[:4] == ["CIFAR10", "D8", "32", "4"]
    assert md.count("| CIFAR10 |") == 4 and "model.width" in (out / "table1.tex").read_text()
    # Figure 1: one line per variant and width, each averaging over the two seeds only
    (data, hue), = drawn
    lines = data.groupby(hue).size().to_dict()
    assert lines == {"D8 model.width=32": 4, "D8 model.width=64": 4, "D16 model.width=32": 4,
                     "D16 model.width=64": 4}  # 2 seeds x 2 evaluations each
    at4 = data[data.step == 4].groupby(hue)["fd_classifier"].mean()
    assert at4["D8 model.width=64"] == pytest.approx(35.5) and at4["D8 model.width=32"] == pytest.approx(21.0)
    # the report ranks variants against variants at the same width
    report = (out / "README.md").read_text()
    assert "### model.width=32" in report and "### model.width=64" in report
    section = report[report.index("### model.width=64"):]
    assert cells(section, "D16")[:4] == ["D16", "51.00", "+59.4%", "2"]  # 51 against D8's 32 at width 64
    assert main.startswith("# ax: Table 1 (unit profile)") and "| Dataset | Variant | model.width |" in main


def test_plot_lines_without_axes_are_the_variants(store):
    loaded, trials, tracker = axis_study(store)
    hist = trial_histories(trials, tracker, ["fid"])
    assert "model.width" in hist  # the full key: short ones can clash with the table's own columns
    assert set(tables.plot_lines(hist, "fid", []).variant) == {"D8", "D16"}
    assert set(tables.plot_lines(hist, "fid", ["model.width"]).variant) == {
        "D8 model.width=32", "D8 model.width=64", "D16 model.width=32", "D16 model.width=64"}


def test_a_study_without_a_paper_says_so_and_labels_only_ours(store):
    loaded, trials, tracker = axis_study(store, paper_csv=None)
    df, caption = tables.best_checkpoint_table(loaded, trials, tracker)
    assert "Paper: n/a" not in caption and "(n = 2000, Inception)" not in caption
    assert "No paper reference" in caption
    assert "profile `unit`" in caption and "n = 16 samples" in caption and "seeds 0, 1" in caption
    assert "features: Inception-v3" in caption and "trained 4 steps" in caption
    assert "paper_fid" not in df and "The paper's table" not in caption


def grid_study(store):
    """A settings study whose one substudy, ``grid``, crosses train.epochs (1, 2) with model.width (32, 64)."""
    s = Study(name="pts", recipe="ddpm", datasets=("helix",), variants=("mlp-a",), seeds=(0, 1),
              axes={"train.epochs": [1, 2], "model.width": [32, 64]}, eval=EvalSpec(metrics=("emd",)),
              table=TableSpec(kind="settings", metric="emd"))
    tracker = store("pts")
    trials = []
    for i, (epochs, width, seed) in enumerate((e, w, sd) for e in (1, 2) for w in (32, 64) for sd in (0, 1)):
        t = trial("pts", "mlp-a", "helix", seed, recipe="ddpm", axes={"train.epochs": epochs, "model.width": width},
                  train={"epochs": epochs}, substudies=("grid",))
        t = dataclasses.replace(t, model={"width": width})
        log_trial(tracker, t, {"emd_test": [(1, 100.0 * width + epochs + seed)]}, index=i)
        trials.append(t)
    return loaded_study(dataclasses.replace(s, substudies={"grid": {}}), (("grid", s),)), trials, tracker


def test_settings_plot_keeps_the_other_axis_apart(store):
    """A substudy with two axes, plotted against one: the other axis gives separate lines, not one pooled line."""
    loaded, trials, tracker = grid_study(store)
    df = settings.final_metrics(loaded, trials, tracker)
    _, shown = settings.substudy_table(df, "grid", ["helix"], ["emd"], None)
    assert list(shown.Setting) == ["epochs=1 width=32", "epochs=1 width=64", "epochs=2 width=32", "epochs=2 width=64"]
    by_hash = {t.config_hash: t for t in trials}
    df["x"] = [by_hash[h].train["epochs"] for h in df.hash]
    lines = settings.plot_lines(df, [by_hash[h] for h in df.hash])
    assert sorted(set(lines)) == ["helix model.width=32", "helix model.width=64"]
    df["x"] = [by_hash[h].model["width"] for h in df.hash]  # against width: the epochs apart
    assert sorted(set(settings.plot_lines(df, [by_hash[h] for h in df.hash]))) == [
        "helix train.epochs=1", "helix train.epochs=2"]
    one = df[df.hash.map(lambda h: by_hash[h].model["width"] == 32)]
    one = one.assign(x=[by_hash[h].train["epochs"] for h in one.hash])
    assert set(settings.plot_lines(one, [by_hash[h] for h in one.hash])) == {"helix"}  # nothing pooled: as before


def test_settings_main_tables_for_the_console(store, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "_data_sources", lambda loaded: ["helix generated"])
    monkeypatch.setattr(settings, "points_figure", lambda *a: None)
    loaded, trials, tracker = grid_study(store)
    written, body, main = settings.settings_tables(loaded, trials, tracker, tmp_path)
    assert main.startswith("# pts (unit profile)\n\nNo paper reference (the study names no paper and has no paper "
                           "table). Ours: mean ± std over seeds 0, 1;")
    assert "## grid\n\nVaries train.epochs, model.width;" in main
    assert cells(main, "epochs=2 width=64")[1] == "6,402 ± 0.71"  # seeds 0 and 1 of one setting
    assert "Paper: ." not in body and main.split("## grid")[1] in body


def test_harness_table_prints_the_main_table_before_the_files(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "fid_over_steps_plot", lambda *a: None)
    monkeypatch.setattr(pareto, "pareto_plot", lambda agg, label, higher, caption, path: path)
    loaded, trials, tracker = axis_study(store)
    monkeypatch.setattr(commands, "_open_store", lambda session: (trials, tracker))
    said: list[str] = []
    commands.write_tables(SimpleNamespace(loaded=loaded, results=tmp_path), echo=said.append)
    first_wrote = next(i for i, line in enumerate(said) if line.startswith("wrote "))
    table = "\n".join(said[:first_wrote])
    assert "| Dataset | Variant | model.width |" in table and table.count("| CIFAR10 |") == 4
    assert "Each row is one configuration" in table  # the caption labels the numbers
    assert all(line.startswith("wrote ") for line in said[first_wrote:])


def test_compare_by_variant_pairs_at_the_same_width_and_says_its_means_pool_widths(store, tmp_path):
    loaded, trials, tracker = axis_study(store)
    res, text, _ = compare.run_compare(loaded, trials, tracker, "variant", None, None, tmp_path)
    d16 = res.set_index("arm").loc["D16"]
    assert d16.pairs == 4 and d16["diff"] == pytest.approx((41.5 - 21.0 + 51.0 - 32.0) / 2)
    assert "Each arm's mean ± std pools its trials across model.width (n counts them)" in text
    _, text, _ = compare.run_compare(loaded, trials, tracker, "model.width", None, None, tmp_path)
    assert "pools" not in text  # the only axis is the one compared


def test_smoke_study_with_an_axis_end_to_end_keys_its_table_by_the_axis(tmp_path):
    """Through the real stack (`harness study` -> Ray Tune -> MLflow -> tables), then `harness table`: two variants x
    model.width (32, 64) x two seeds of the block-sharing smoke profile."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    args = [str(repo / "studies" / "block_sharing.yaml"), "--profile", "smoke", "--results-dir",
            str(tmp_path / "results"), "--set", "variants=[D8,D16]", "--set", "axes={model.width: [32, 64]}",
            "--set", "seeds=[0,1]"]

    def harness(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness.cli", *cmd, *args], capture_output=True, text=True,
                              timeout=600, env=env, cwd=repo)

    run = harness("study")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "results" / "block_sharing" / "smoke"
    table = pd.read_csv(out / "table1.csv")
    assert table[["variant", "model.width", "seeds"]].values.tolist() == [["D8", 32, 2], ["D8", 64, 2],
                                                                           ["D16", 32, 2], ["D16", 64, 2]]
    assert table.fd_classifier.notna().all()
    assert "Each row is one configuration (variant and model.width)" in (out / "table1.md").read_text()
    assert "### model.width=64" in (out / "README.md").read_text()
    shown = harness("table")
    assert shown.returncode == 0, shown.stderr[-3000:]
    head, _, files = shown.stdout.partition("\nwrote ")
    assert "| Dataset   | Variant | model.width |" in head and head.count("| synthetic |") == 4
    assert "table1.csv" in files
    # the evidence (issue 19): a calibration run measured the floor after the trials, Table 1 carries the verdict
    # against the baseline and each row's convergence, and harness plan reads the pilot
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("block_sharing").experiment_id
    cal = c.search_runs([exp], "tags.`harness.kind` = 'calibration'")
    assert len(cal) == 1 and any(k.startswith("floor/real_vs_real/fd_classifier/") for k in cal[0].data.metrics)
    md = (out / "table1.md").read_text()
    assert "vs baseline" in md and "Converged" in md and "Floor: FD" in md
    assert {"verdict", "converged"} <= set(table.columns) and table.verdict.notna().sum() == 2  # D16 at each width
    plan = harness("plan")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "seeds (n x1)" in plan.stdout and "D16" in plan.stdout


def test_a_settings_study_without_substudies_tables_every_trial(store, tmp_path, monkeypatch):
    """Regression: with no substudies the only section is named "" and no trial lists it, so every trial was
    skipped and the tables came out empty without a word; the study's own name now names the section."""
    monkeypatch.setattr(settings, "_data_sources", lambda loaded: ["helix generated"])
    monkeypatch.setattr(settings, "points_figure", lambda *a: None)
    loaded, trials, tracker = grid_study(store)
    flat = [dataclasses.replace(t, substudies=()) for t in trials]
    loaded = dataclasses.replace(loaded, study=dataclasses.replace(loaded.study, substudies={}),
                                 substudies=(("", loaded.study),))
    df = settings.final_metrics(loaded, flat, tracker)
    assert len(df) == 8 and set(df.substudy) == {"pts"}
    written, body, main = settings.settings_tables(loaded, flat, tracker, tmp_path)
    assert (tmp_path / "pts.csv").exists() and "## pts" in main
    assert cells(main, "epochs=2 width=64")[1] == "6,402 ± 0.71"
