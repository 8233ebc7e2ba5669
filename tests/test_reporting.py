"""The reporting layer on a fake MLflow store: the metric catalogue, Table 1 (best checkpoint), the settings tables,
the recipe's report hook, `harness compare` and the Pareto data.

Runs are logged into a local SQLite store the way the driver logs trials (study, kind, config-hash, variant,
dataset, seed, substudies, machine and running-time tags; metric histories by step; FINISHED or KILLED). Studies and
trials are built by hand, so no model is built, nothing trains and no Ray starts; plots are left out.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.entities import Metric as LoggedMetric

from harness.reporting import compare, metrics, pareto, settings, tables
from harness.reporting.recipe_report import DEFAULT, RecipeReport, report_of
from harness.study import spec
from harness.study.spec import EvalSpec, LoadedStudy, Study, TableSpec, Trial
from harness.tracking import Tracker

START = 1_700_000_000_000  # ms
REPORTING = Path(__file__).resolve().parents[1] / "harness" / "reporting"


# ----------------------------------------------------------------------------------------------------- fake store
# the fake store's fixtures (empty_store, store) are in conftest.py


def trial(study: str, variant: str, dataset: str, seed: int, *, recipe: str = "edm", axes: dict | None = None,
          train: dict | None = None, substudies: tuple[str, ...] = (), params: int = 1000) -> Trial:
    return Trial(study=study, recipe=recipe, variant=variant, dataset=dataset, seed=seed, axes=axes or {},
                 model={"width": 8}, train=train or {"steps": 4, "batch_size": 2}, eval={"n_samples": 16}, data={},
                 family="fake", params=params, gflops=0.5, substudies=substudies)


def log_trial(tracker: Tracker, t: Trial, history: dict[str, list[tuple[int, float]]], *, index: int,
              status: str = "FINISHED", skipped: str | None = None, minutes: float = 2.0) -> None:
    """One trial's run with the driver's tags; starts ``index`` minutes after START and runs ``minutes``."""
    tags = {"harness.study": t.study, "harness.kind": "trial", "harness.profile": "unit",
            "harness.config_hash": t.config_hash, "harness.variant": t.variant, "harness.dataset": t.dataset,
            "harness.seed": str(t.seed), "harness.params": str(t.params), "harness.diagnostic": "false",
            "harness.substudies": ",".join(t.substudies), "harness.machine": "a test machine",
            "harness.device": "cpu", "harness.versions": "python=3 torch=2",
            "harness.running_s": f"{minutes * 60:.1f}", **{f"harness.axis.{k}": str(v) for k, v in t.axes.items()},
            **({"harness.skipped": skipped} if skipped else {})}
    c = tracker.client
    start = START + index * 60_000
    run = c.create_run(tracker.experiment_id, run_name=t.run_name, tags=tags, start_time=start)
    logged = [LoggedMetric(k, v, start, step) for k, points in history.items() for step, v in points]
    c.log_batch(run.info.run_id, metrics=logged)
    c.set_terminated(run.info.run_id, status, end_time=start + int(minutes * 60_000))


def loaded_study(study: Study, parts: tuple[tuple[str, Study], ...] = ()) -> LoadedStudy:
    return LoadedStudy(study=study, path=Path("studies/unit.yaml"), profile="unit", raw={},
                       substudies=parts or (("", study),))


def cells(markdown: str, first: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first``."""
    for line in markdown.splitlines():
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and row[0] == first:
            return row
    raise AssertionError(f"no row {first!r} in\n{markdown}")


# ------------------------------------------------------------------------------------------------------ catalogue
def test_the_catalogue_agrees_with_the_study_schema():
    assert {n: (m.label, m.key) for n, m in metrics.TABLE_METRICS.items()} == spec.METRICS
    clf = metrics.image_distances("classifier")
    assert {m.name: (m.label, m.key) for m in clf} == spec.CLASSIFIER_METRICS
    assert set(metrics.TABLE_METRICS) <= set(spec.EVAL_METRICS)


def test_directions_units_and_feature_spaces():
    lower = [n for n, m in metrics.TABLE_METRICS.items() if not m.higher_better]
    assert sorted(n for n in metrics.TABLE_METRICS if n not in lower) == ["accuracy", "train_accuracy"]
    assert metrics.TABLE_METRICS["size"].unit == "bytes" and metrics.TABLE_METRICS["inference"].unit == "ms/image"
    fid, kid = metrics.image_distances("inception")
    fd, kd = metrics.image_distances("classifier")
    assert (fid.key, fid.features, fid.label) == ("fid", "inception", "FID")
    assert (fd.key, fd.features, fd.label, fd.short) == ("fd_classifier", "classifier", "FD (classifier)", "FD (clf)")
    assert (kd.key, kd.short) == ("kd_classifier", "KD (clf)") and kid.key == "kid"
    assert metrics.table_metric("fid", "classifier") is fd
    assert metrics.table_metric("emd", "classifier").key == "emd_test"
    assert metrics.same_as_paper("fid", "inception") and not metrics.same_as_paper("fid", "classifier")
    assert metrics.same_as_paper("size", "classifier")
    # logged keys: catalogued ones keep their direction, anything else is a lower-better quantity named by its key
    assert metrics.resolve("accuracy", "inception").key == "val_accuracy"
    assert metrics.resolve("val_accuracy", "inception").higher_better
    assert metrics.resolve("images_per_s", "classifier").higher_better
    loss = metrics.resolve("denoise_loss", "inception")
    assert (loss.key, loss.label, loss.higher_better) == ("denoise_loss", "denoise_loss", False)
    with pytest.raises(ValueError, match="extractor 'auto'"):
        metrics.table_metric("fid", "auto")


def test_no_distance_outside_inception_features_is_called_fid_or_kid():
    every = [*metrics.TABLE_METRICS.values(), *metrics.LOGGED_METRICS.values(),
             *(m for pair in metrics.IMAGE_DISTANCES.values() for m in pair)]
    others = [m for m in every if m.features not in (None, "inception")]
    assert {m.key for m in others} == {"fd_classifier", "kd_classifier"}
    for m in others:
        for text in (m.label, m.short, m.long):
            assert not re.search(r"\b(FID|KID)\b", text.replace("not FID", "").replace("not KID", "")), text
    assert metrics.image_distances("classifier")[0].long == "FD (classifier features, not FID)"
    with pytest.raises(ValueError, match="must not call it FID"):
        metrics.Metric("fid", "fd_dino", "FID (DINO)", features="dino")
    with pytest.raises(ValueError, match="direction"):
        metrics.Metric("x", "x", "X", direction="up")


# ------------------------------------------------------------------------------------------------------- Table 1
BEST = {  # (variant, seed) -> [(step, distance, kernel distance)]
    ("D8", 0): [(2, 30.0, 0.003), (4, 20.0, 0.002)],
    ("D8", 1): [(2, 26.0, 0.005), (4, 22.0, 0.004)],
    ("D16", 0): [(2, 50.0, 0.004), (4, 40.0, 0.003)],
    ("D16", 1): [(2, 44.0, 0.005), (4, 46.0, 0.006)],
}


def image_study(store, extractor: str) -> tuple[LoadedStudy, list[Trial], Tracker]:
    """A Table-1 study: D8 and D16 on CIFAR-10, seeds 0-2; seeds 0 and 1 finished, D16's seed 2 killed (with a
    lower distance than any finished run) and D8's seed 2 never ran."""
    s = Study(name="bs", recipe="edm", datasets=("cifar10",), variants=("D8", "D16"), paper="The paper",
              description="Two variants.", seeds=(0, 1, 2), train={"steps": 4},
              eval=EvalSpec(every=2, n_samples=16, extractor=extractor, metrics=("fid", "kid")),
              table=TableSpec(kind="best_checkpoint", paper_csv="block_sharing_table1.csv", metric="fid",
                              baseline="D8"))
    params = {"D8": 1000, "D16": 2000}
    trials = [trial("bs", v, "cifar10", seed, params=params[v]) for v in ("D8", "D16") for seed in (0, 1, 2)]
    by = {(t.variant, t.seed): t for t in trials}
    dist, kern = metrics.image_distances(extractor)
    tracker = store("bs")
    for i, ((variant, seed), points) in enumerate(BEST.items()):
        log_trial(tracker, by[variant, seed], {dist.key: [(s_, d) for s_, d, _ in points],
                                               kern.key: [(s_, k) for s_, _, k in points],
                                               "n_samples": [(s_, 16.0) for s_, _, _ in points]}, index=i)
    log_trial(tracker, by["D16", 2], {dist.key: [(2, 1.0)], "n_samples": [(2, 16.0)]}, index=4, status="KILLED")
    return loaded_study(s), trials, tracker


def test_table1_with_inception_features_sits_beside_the_papers_numbers(store):
    loaded, trials, tracker = image_study(store, "inception")
    df, caption = tables.best_checkpoint_table(loaded, trials, tracker)
    assert list(df.variant) == ["D8", "D16"] and list(df.dataset) == ["CIFAR10"] * 2  # the study's order
    d8, d16 = df.iloc[0], df.iloc[1]
    assert d8.seeds == 2 and d16.seeds == 2  # the killed run does not count
    assert d8.fid == pytest.approx(21.0) and d8.fid_std == pytest.approx(math.sqrt(2))
    assert d16.fid == pytest.approx(42.0) and d16.steps_million == pytest.approx(3e-6)  # best at steps 4 and 2
    assert d16.kid_x1e4 == pytest.approx(40.0) and d8.n == 16 and d8.wall_min == pytest.approx(2.0)
    assert (d8.paper_fid, d8.paper_kid_x1e4, d8.paper_steps_million) == (36.51, 67.98, 0.96)
    assert d8.fid_diff == pytest.approx(21.0 - 36.51) and d16.kid_x1e4_diff == pytest.approx(40.0 - 54.39)
    assert "lowest FID" in caption and "features: Inception-v3 (torch-fidelity)" in caption
    assert "n = 16 samples" in caption and "seeds 0, 1, 2" in caption
    shown = tables._display(df, *metrics.image_distances("inception"))
    assert list(shown.columns) == ["Dataset", "Variant", "Steps", "FID", "KID x1e4", "n", "Trial wall (min)",
                                   "vs baseline", "Converged", "Paper steps x1e-6", "Paper FID", "Paper KID x1e4",
                                   "FID diff", "KID x1e4 diff"]
    assert shown.iloc[0].tolist() == ["CIFAR10", "D8", "4", "21.00 ± 1.41", "30.00 ± 14.14", "16", "2.0", "–",
                                      "unknown 2/2", "0.96", "36.51", "67.98", "-15.51", "-37.98"]
    # D16 - D8 by seed: 20 and 22, so 21 with a 95% t interval of 21 ± 12.71 * sqrt(2) / sqrt(2)
    assert shown.iloc[1]["vs baseline"] == "+21.00 [+8.29, +33.71] worse" and d16.verdict == "worse"
    assert "Floor: not calibrated" in caption and "biased towards better values" in caption
    assert shown.iloc[1].tolist()[2:5] == ["3", "42.00 ± 2.83", "40.00 ± 14.14"]
    assert shown.iloc[1]["FID diff"] == "+7.48"


def test_table1_with_classifier_features_never_says_fid_for_ours(store):
    loaded, trials, tracker = image_study(store, "classifier")
    df, caption = tables.best_checkpoint_table(loaded, trials, tracker)
    assert df.fd_classifier.tolist() == pytest.approx([21.0, 42.0]) and "fid" not in df
    assert "fid_diff" not in df and df.paper_fid.tolist() == [36.51, 34.52]  # the paper's beside, not subtracted
    assert "lowest FD (classifier features, not FID)" in caption and "not FID/KID" in caption
    shown = tables._display(df, *metrics.image_distances("classifier"))
    assert list(shown.columns)[3:5] == ["FD (clf)", "KD (clf) x1e4"]
    assert [c for c in shown.columns if "FID" in c or "KID" in c] == ["Paper FID", "Paper KID x1e4"]
    assert shown["FD (clf)"].tolist() == ["21.00 ± 1.41", "42.00 ± 2.83"]


def test_table1_files_and_report_body(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "fid_over_steps_plot", lambda *a: None)  # no plot: the tables are under test
    loaded, trials, tracker = image_study(store, "classifier")
    (tmp_path / "out").mkdir()
    written, body = tables._write_best_checkpoint(loaded, trials, tracker, tmp_path / "out")
    assert [p.name for p in written] == ["table1.md", "table1.csv", "table1.tex"]
    md = (tmp_path / "out" / "table1.md").read_text()
    assert md.startswith("# bs: Table 1 (unit profile)")
    assert ("4/6 trials finished; wall clock 5.0 min from the first start to the last end (8.0 trial-minutes), on a "
            "test machine (cpu); python=3 torch=2.") in md
    assert cells(md, "CIFAR10")[:4] == ["CIFAR10", "D8", "4", "21.00 ± 1.41"]
    assert pd.read_csv(tmp_path / "out" / "table1.csv").variant.tolist() == ["D8", "D16"]
    assert "## Beside the paper" in body and "on the same dataset" in body
    assert cells(body, "D16")[:4] == ["D16", "42.00", "+100.0%", "2"]  # ours relative to D8, and its rank
    header = next(line for line in body.splitlines() if line.startswith("| Variant"))
    assert "Ours FD (clf) (CIFAR10)" in header and "Paper FID (CIFAR10)" in header and "Ours FID" not in header


# ------------------------------------------------------------------------------------------------ settings tables
PAPER = pd.DataFrame({"study": ["epochs", "epochs", "complexity"], "setting": ["100", "1000", "Model 1 (1x64)"],
                      "emd_helix": [125.74, 87.54, 120.17], "emd_sin_5_5": [116.59, 83.29, 124.39],
                      "emd_swiss": [10.5, 9.25, math.nan]})


def points_study(store) -> tuple[LoadedStudy, list[Trial], Tracker]:
    """Two substudies: ``epochs`` (axis written 1000 then 100, two datasets) and ``complexity`` (variants written
    mlp-b then mlp-a); some seeds missing, one trial skipped."""
    base = dict(name="pts", recipe="ddpm", train={"epochs": 2})
    epochs = Study(**base, datasets=("helix", "sin_5_5"), variants=("mlp-a",), axes={"train.epochs": [1000, 100]})
    complexity = Study(**base, datasets=("helix",), variants=("mlp-b", "mlp-a"))
    s = Study(**base, datasets=("helix", "sin_5_5"), variants=("mlp-a",), paper="The homework", seeds=(0, 1),
              description="Points.", eval=EvalSpec(metrics=("emd", "nll", "denoise_loss")),
              table=TableSpec(kind="settings", metric="emd",
                              labels={"mlp-a": "Model 1 (1x64)", "complexity/mlp-b": "Model 3 (64-128-128)"}),
              substudies={"epochs": {}, "complexity": {}})
    tracker = store("pts")
    trials, runs = [], [  # (substudy, variant, epochs, dataset, seed, final emd, final nll, skipped)
        ("epochs", "mlp-a", 100, "helix", 0, 120.0, None, None),
        ("epochs", "mlp-a", 100, "helix", 1, 120.0, None, None),
        ("epochs", "mlp-a", 100, "sin_5_5", 0, None, None, "needs CUDA"),
        ("epochs", "mlp-a", 1000, "helix", 0, 80.0, 1.5, None),
        ("epochs", "mlp-a", 1000, "helix", 1, 90.0, 2.5, None),
        ("epochs", "mlp-a", 1000, "sin_5_5", 0, 70.0, None, None),
        ("complexity", "mlp-a", 2, "helix", 0, 100.0, None, None),
        ("complexity", "mlp-a", 2, "helix", 1, 110.0, None, None),
        ("complexity", "mlp-b", 2, "helix", 0, 60.0, None, None)]
    for i, (part, variant, n, ds, seed, emd, nll, skipped) in enumerate(runs):
        axes = {"train.epochs": n} if part == "epochs" else {}
        t = trial("pts", variant, ds, seed, recipe="ddpm", axes=axes, train={"epochs": n}, substudies=(part,))
        history = {"emd_test": [(1, 999.0), (2, emd)]} if emd is not None else {}  # the last value counts
        history.update({"nll_test": [(2, nll)]} if nll is not None else {})
        log_trial(tracker, t, history, index=i, skipped=skipped)
        trials.append(t)
    trials.append(trial("pts", "mlp-a", "sin_5_5", 1, recipe="ddpm", axes={"train.epochs": 1000},
                        train={"epochs": 1000}, substudies=("epochs",)))  # never ran
    return loaded_study(s, (("epochs", epochs), ("complexity", complexity))), trials, tracker


def test_settings_table_rows_in_the_studys_order_with_the_paper_beside(store):
    loaded, trials, tracker = points_study(store)
    df = settings.final_metrics(loaded, trials, tracker)
    num, shown = settings.substudy_table(df, "epochs", ["helix", "sin_5_5"], ["emd", "nll"], PAPER)
    assert list(shown.Setting) == ["1000", "100"]  # as the axis is written, not as the runs were logged
    assert list(shown.columns) == ["Setting", "EMD (helix)", "Paper EMD (helix)", "Diff EMD (helix)", "NLL (helix)",
                                   "EMD (sin_5_5)", "Paper EMD (sin_5_5)", "Diff EMD (sin_5_5)", "NLL (sin_5_5)",
                                   "Paper EMD (swiss)", "EMD vs 1000 (helix)"]  # swiss: the paper's own dataset
    assert shown.iloc[0].tolist() == ["1000", "85.00 ± 7.07", "87.54", "-2.54", "2.00 ± 0.71", "70.00", "83.29",
                                      "-13.29", "–", "9.25", "–"]
    assert shown.iloc[1].tolist() == ["100", "120.00", "125.74", "-5.74", "–", "skipped", "116.59", "–", "skipped",
                                      "10.5", "+35.00 [-28.53, +98.53] within noise"]  # equal values: no "± 0"
    row = num.set_index("setting").loc["1000"]
    assert row.emd_helix == pytest.approx(85.0) and row.emd_helix_seeds == 2 and row.emd_sin_5_5_seeds == 1
    assert row.diff_emd_helix == pytest.approx(-2.54) and row.paper_emd_swiss == 9.25
    assert num.set_index("setting").loc["100", "skipped_sin_5_5"] == "needs CUDA"


def test_settings_table_of_variants_uses_the_papers_labels(store):
    loaded, trials, tracker = points_study(store)
    df = settings.final_metrics(loaded, trials, tracker)
    _, shown = settings.substudy_table(df, "complexity", ["helix"], ["emd", "nll"], PAPER)
    assert list(shown.columns) == ["Setting", "EMD (helix)", "Paper EMD (helix)", "Diff EMD (helix)",
                                   "EMD vs Model 3 (64-128-128) (helix)"]  # no NLL
    assert shown.values.tolist() == [["Model 3 (64-128-128)", "60.00", "–", "–", "–"],
                                     ["Model 1 (1x64)", "105.00 ± 7.07", "120.17", "-15.17",
                                      "+40.00 undecided (1 pair)"]]  # mlp-b has seed 0 only


@pytest.mark.parametrize("extractor", ["inception", "classifier"])
def test_settings_table_sets_only_the_same_quantity_beside_the_paper(store, extractor):
    part = Study(name="cmp", recipe="score", datasets=("mnist",), variants=("ncsn",),
                 axes={"train.quantize": ["none", "int8"]})
    s = Study(name="cmp", recipe="score", datasets=("mnist",), variants=("ncsn",), substudies={"quant": {}},
              eval=EvalSpec(metrics=("size", "fid"), extractor=extractor), table=TableSpec(kind="settings"))
    tracker = store("cmp")
    dist = metrics.image_distances(extractor)[0].key
    trials = []
    for i, (q, size, d) in enumerate((("none", 4_148_037.0, 150.0), ("int8", 1_200_000.0, 160.0))):
        t = trial("cmp", "ncsn", "mnist", 0, recipe="score", axes={"train.quantize": q},
                  train={"quantize": q}, substudies=("quant",))
        log_trial(tracker, t, {"compressed_bytes": [(1, size)], dist: [(1, d)]}, index=i)
        trials.append(t)
    paper = pd.DataFrame({"study": ["quant"], "setting": ["none"], "size_mnist": [4_147_037.0],
                          "fid_mnist": [182.1], "fid_cifar100": [31.1]})
    df = settings.final_metrics(loaded_study(s, (("quant", part),)), trials, tracker)
    num, shown = settings.substudy_table(df, "quant", ["mnist"], ["size", "fid"], paper, extractor)
    row = shown.set_index("Setting").loc["none"]
    assert row["Size (gzip bytes) (mnist)"] == "4,148,037" and row["Paper Size (gzip bytes) (mnist)"] == "4,147,037"
    assert row["Diff Size (gzip bytes) (mnist)"] == "+1,000"
    assert row["Paper FID (cifar100)"] == "31.1"  # the paper's own number on its own dataset, under its own name
    if extractor == "inception":
        assert (row["FID (mnist)"], row["Paper FID (mnist)"], row["Diff FID (mnist)"]) == ("150.00", "182.1", "-32.10")
    else:
        assert row["FD (classifier) (mnist)"] == "150.00" and num.paper_fid_mnist.isna().all()
        assert [c for c in shown.columns if "FID" in c] == ["Paper FID (cifar100)"]
        assert not any(c.startswith("Diff F") for c in shown.columns)


def test_write_settings_tables_gives_each_substudy_its_section(store, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "_data_sources", lambda loaded: ["helix from data/helix.npy"])
    monkeypatch.setattr(settings, "points_figure", lambda *a: None)  # the points figure reads real data
    loaded, trials, tracker = points_study(store)
    written, body = settings.write_settings_tables(loaded, trials, tracker, tmp_path)
    assert [p.name for p in written] == ["epochs.csv", "epochs.tex", "complexity.csv", "complexity.tex"]
    assert ("Paper: The homework. Ours: mean ± std over seeds 0, 1; test-set EMD over 128 random points and "
            "Gaussian-kernel NLL (temperature 0.1), each averaged over 3 sampling runs; data: helix from "
            "data/helix.npy; profile `unit`.") in body
    assert "9/10 trials finished" in body
    assert body.index("## epochs") < body.index("## complexity")
    assert "Varies train.epochs; 2 epochs unless varied.\n" in body and "Skipped: needs CUDA." in body
    assert "Varies variants mlp-b, mlp-a; 2 epochs unless varied." in body
    assert cells(body, "1000")[:3] == ["1000", "85.00 ± 7.07", "2.00 ± 0.71"]  # no paper_csv: no paper columns
    assert pd.read_csv(tmp_path / "complexity.csv").setting.tolist() == ["Model 3 (64-128-128)", "Model 1 (1x64)"]


# ------------------------------------------------------------------------------------------- the recipe's report
def test_the_registered_report_fills_the_templates(monkeypatch):
    own = RecipeReport(method="our words: n = {eval.n_samples}, {train[steps]} steps of {train[lr]}, {features}",
                       sampling="{eval.n_samples} at once over {train[T]}", defaults={"train.T": 7})
    monkeypatch.setattr("harness.recipes.get_recipe", lambda name: SimpleNamespace(report=own))
    s = Study(name="x", recipe="ddpm", datasets=("d",), variants=("v",), train={"steps": 4},
              eval=EvalSpec(n_samples=16, extractor="classifier"))
    assert settings.recipe_report("ddpm") is own  # whatever the registration supplies
    assert settings._method_note(s, ["d from f"]) == (
        "our words: n = 16, 4 steps of ?, a classifier trained on the dataset (Frechet/kernel distances in its "
        "feature space, not FID/KID)")
    assert settings._substudy_sampling(s) == "16 at once over 7"


def test_the_built_in_recipes_supply_their_report_and_others_get_the_default():
    from harness.recipes import get_recipe, recipe_names

    assert report_of(SimpleNamespace()) is DEFAULT and report_of(SimpleNamespace(report=None)) is DEFAULT
    assert get_recipe("ddpm").report.points_figure
    for name in recipe_names():
        assert isinstance(settings.recipe_report(name), RecipeReport)
        assert name == "null" or get_recipe(name).report is not None, name
    ev = EvalSpec(n_samples=32, sampler="euler", sampler_steps=10, extractor="classifier")
    part = {r: Study(name="x", recipe=r, datasets=("d",), variants=("v",), eval=ev, train={"steps": 4})
            for r in ("ddpm_image", "score", "gan", "classify", "vdiff", "ddpm")}
    assert settings._substudy_sampling(part["ddpm_image"]) == "n = 32 samples, ancestral over T = 1000 steps"
    assert settings._substudy_sampling(part["score"]) == "n = 32 samples, euler with 10 steps"
    assert settings._substudy_sampling(part["gan"]) == "n = 32 samples"
    assert settings._substudy_sampling(part["classify"]) == ""
    assert settings._method_note(part["vdiff"], []).startswith(
        "image quality of n = 32 samples (euler, 10 steps) against the first n training images with a classifier")
    assert settings._method_note(part["classify"], ["d from f"]) == (
        "top-1 accuracy and cross-entropy on the whole test split, 4 steps of batch ?; training accuracy on "
        "augmented batches; data: d from f")


def test_points_are_drawn_only_for_recipes_whose_report_asks(store):
    s = Study(name="c", recipe="classify", datasets=("d",), variants=("v",))
    df = pd.DataFrame({"emd_test": [1.0], "dataset": ["d"]})
    assert settings.points_figure(df, loaded_study(s), store("c"), Path("unused.png")) is None


def test_report_code_does_not_switch_on_recipe_names():
    from harness.recipes import recipe_names

    names = "|".join(sorted(recipe_names(), key=len, reverse=True))
    for path in REPORTING.glob("*.py"):
        text = path.read_text()
        assert not re.search(rf"""["']({names})["']""", text), path.name
        assert not re.search(r"\.recipe\s*(==|!=|\bin\b)", text), path.name


# ------------------------------------------------------------------------------------------- compare and Pareto
def test_compare_pairs_arms_with_the_studys_baseline_and_the_catalogues_direction(store, tmp_path):
    loaded, trials, tracker = image_study(store, "classifier")
    res, text, written = compare.run_compare(loaded, trials, tracker, "variant", None, None, tmp_path)
    assert "on `fd_classifier` (lower is better; best evaluation per trial)" in text and "baseline `D8`" in text
    d16 = res.set_index("arm").loc["D16"]
    assert d16.pairs == 2 and d16["diff"] == pytest.approx(21.0) and d16.vs_baseline == "worse"
    assert res.set_index("arm").loc["D8", "mean"] == pytest.approx(21.0)
    assert [p.name for p in written] == ["compare_variant.md", "compare_variant.csv"]
    metric = compare.study_metric(loaded)
    assert (metric.key, metric.label) == ("fd_classifier", "FD (classifier)")
    assert compare.study_metric(loaded, "accuracy").higher_better and compare.study_metric(loaded, "isc").higher_better


def test_compare_on_a_higher_better_metric_calls_the_higher_arm_better(store, tmp_path):
    s = Study(name="clf", recipe="classify", datasets=("cifar10", "mnist"), variants=("tiny",), seeds=(0, 1),
              axes={"train.lr": [0.1, 0.01]}, eval=EvalSpec(metrics=("accuracy",)),
              table=TableSpec(kind="settings", metric="accuracy"))
    tracker = store("clf")
    trials = []
    for i, (lr, ds, seed) in enumerate((lr, ds, seed) for lr in (0.1, 0.01) for ds in ("cifar10", "mnist")
                                       for seed in (0, 1)):
        t = trial("clf", "tiny", ds, seed, recipe="classify", axes={"train.lr": lr}, train={"lr": lr})
        acc = {"cifar10": 0.5, "mnist": 0.9}[ds] + 0.01 * seed + (0.03 + 0.001 * i if lr == 0.01 else 0.0)
        log_trial(tracker, t, {"val_accuracy": [(1, 0.1), (2, acc)], "train_loss": [(2, 1.0 - acc)]}, index=i)
        trials.append(t)
    res, text, _ = compare.run_compare(loaded_study(s), trials, tracker, "lr", None, "0.1", tmp_path)
    assert "arms of `train.lr` on `val_accuracy` (higher is better; final value per trial)" in text
    row = res.set_index("arm").loc[0.01]
    assert row.pairs == 4 and row["diff"] == pytest.approx(0.0355) and row.vs_baseline == "better"
    res, text, _ = compare.run_compare(loaded_study(s), trials, tracker, "lr", "train_loss", "0.1", tmp_path)
    assert "(lower is better" in text and res.set_index("arm").loc[0.01].vs_baseline == "better"


def test_pareto_front_and_file_named_by_the_logged_key(store, tmp_path, monkeypatch):
    loaded, trials, tracker = image_study(store, "classifier")
    frame = pareto.pareto_frame(loaded, trials, tracker, "fd_classifier", best=True)
    assert sorted(frame.quality) == [20.0, 22.0, 40.0, 44.0] and (frame.wall_min == 2.0).all()
    assert frame.train_pflops.iloc[0] == pytest.approx(3 * 0.5e9 * 4 * 2 / 1e15)
    drawn = {}

    def plot(agg, label, higher, caption, path):
        drawn.update(label=label, higher=higher, caption=caption, front=agg.set_index("label").front_params.to_dict())
        return path

    monkeypatch.setattr(pareto, "pareto_plot", plot)
    written = pareto.write_pareto(loaded, trials, tracker, tmp_path)
    assert [p.name for p in written] == ["pareto_fd_classifier.png", "pareto_fd_classifier.csv"]
    assert drawn["label"] == "FD (classifier)" and drawn["higher"] is False and "FID" not in drawn["caption"]
    assert drawn["front"] == {"D8": True, "D16": False}  # cheaper and better
    csv = pd.read_csv(tmp_path / "pareto_fd_classifier.csv")
    assert csv.set_index("label").fd_classifier.to_dict() == pytest.approx({"D8": 21.0, "D16": 42.0})


def test_table1_checks_convergence_against_the_calibrated_floor(store):
    """With a calibration run (real-vs-real FID spread 1.0: a change beyond 1.96 * sqrt(2) = 2.77 is more than
    noise), each seed's last change is classified and the floor is stated in the caption."""
    from harness.reporting.calibration import calibration_groups

    loaded, trials, tracker = image_study(store, "inception")
    groups = calibration_groups(trials, loaded.study.calibration_draws)
    assert len(groups) == 1
    tracker.log_calibration("bs", next(iter(groups)), "calibration cifar10 n=16", {}, [
        {"reference": "real vs real", "metric": "fid", "mean": 5.0, "sd": 1.0, "draws": 5, "n": 16}])
    df, caption = tables.best_checkpoint_table(loaded, trials, tracker)
    d8, d16 = df.iloc[0], df.iloc[1]
    assert d8.converged == "still improving 2/2" and d8.still_improving == 2  # 30 -> 20 and 26 -> 22
    assert d16.converged == "still improving 1/2, plateau 1/2"  # 50 -> 40, and 44 -> 46 within the noise
    assert "Floor: FID of real images against the reference, cifar10 5.00 ± 1.00 (5 draws of n = 16)" in caption


def test_settings_report_shows_the_noise_floor_or_says_it_is_missing(store, tmp_path, monkeypatch):
    from harness.reporting.calibration import calibration_groups

    monkeypatch.setattr(settings, "_data_sources", lambda loaded: ["helix generated"])
    monkeypatch.setattr(settings, "points_figure", lambda *a: None)
    loaded, trials, tracker = points_study(store)
    _, body, _ = settings.settings_tables(loaded, trials, tracker, tmp_path)
    assert "## Noise floor\n\nNot calibrated" in body
    for key in calibration_groups(trials, loaded.study.calibration_draws):
        tracker.log_calibration("pts", key, "c", {}, [
            {"reference": "training subset", "metric": "emd_test", "mean": 61.5, "sd": 6.1, "draws": 5, "n": 128},
            {"reference": "N(0, I)", "metric": "emd_test", "mean": 94.4, "sd": float("nan"), "draws": 5,
             "n": 128}])
    _, body, main = settings.settings_tables(loaded, trials, tracker, tmp_path)
    flat = " ".join(body.split())
    assert "| helix | training subset | emd_test | 61.50 | 6.10 | 5 | 128 |" in flat
    assert "| sin_5_5 | N(0, I) | emd_test | 94.40 | – | 5 | 128 |" in flat
    assert "## Noise floor" in main


def test_table1_gives_time_to_quality_when_the_study_states_a_target(store):
    """table.quality_target = 25: D8's seeds reach FID <= 25 at step 4 (20, 22); D16's never do (40, 44)."""
    import dataclasses

    loaded, trials, tracker = image_study(store, "inception")
    s = loaded.study
    loaded = dataclasses.replace(loaded, study=dataclasses.replace(
        s, table=dataclasses.replace(s.table, quality_target=25.0)))
    df, _ = tables.best_checkpoint_table(loaded, trials, tracker)
    d8, d16 = df.iloc[0], df.iloc[1]
    assert d8.reached == "2/2" and d8.steps_to_target == 4 and d16.reached == "0/2"
    shown = tables._display(df, *metrics.image_distances("inception"))
    assert shown.iloc[1]["To target: steps (min), seeds"] == "not reached, 0/2"
    assert shown.iloc[0]["To target: steps (min), seeds"].startswith("4 (")
