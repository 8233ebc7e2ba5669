"""The two "Modern Methods, Classical Constraints" studies end to end on their smoke profiles: the classifier
ablations (range test, OneCycle, budgets) and the generator (v-diffusion schedules and guidance, the GAN row,
`harness sample`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from test_study import REPO, client, harness

import zoo

DISC = REPO / "studies" / "classical_constraints.yaml"
GEN = REPO / "studies" / "classical_generator.yaml"


def _trials(results: Path, study: str) -> list:
    c = client(results)
    exp = c.get_experiment_by_name(study)
    return c.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'", max_results=1000)


def test_classifier_smoke_logs_the_range_test_apart_and_tables_the_ablations_beside_the_paper(tmp_path):
    results = tmp_path / "results"
    res = harness("study", str(DISC), "--profile", "smoke", "--results-dir", str(results))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = _trials(results, "classical_constraints")
    assert len(runs) == 10 and all(r.info.status == "FINISHED" for r in runs)
    c = client(results)
    for r in runs:
        sweep = c.get_metric_history(r.info.run_id, "lr_find_loss")
        assert len(sweep) == 12 and sorted(m.step for m in sweep) == list(range(12))  # its own step index
        assert r.data.metrics["peak_lr"] > 0
        assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy")) == [2, 4]
        assert [m.step for m in c.get_metric_history(r.info.run_id, "train_loss")] == [2, 4]
        variant, layers = r.data.tags["harness.variant"], r.data.tags.get("harness.axis.model.layers")
        overrides = {"num_classes": 4, **({"layers": int(layers)} if layers else {})}
        assert r.data.metrics["params"] == zoo.param_count(zoo.build(variant, **overrides))
    out = results / "classical_constraints" / "smoke"
    readme = (out / "README.md").read_text()
    assert "Paper Val accuracy (cifar100)" in readme and "0.62" in readme  # the paper's number, shown as its own
    assert (out / "baseline_curves.png").stat().st_size > 0 and (out / "layers_accuracy.png").exists()
    base = pd.read_csv(out / "baseline.csv")
    assert base["accuracy_synthetic_seeds"].iloc[0] == 2  # mean ± std over the two smoke seeds
    # the evidence (issue 19): chance accuracy as the floor, and each ablation's verdict against its first arm
    assert "## Noise floor" in readme and "| chance" in readme
    assert any(c.startswith("verdict_accuracy_") for c in pd.read_csv(out / "layers.csv").columns)


def test_over_budget_arm_is_refused_before_training_with_its_count(tmp_path):
    results = tmp_path / "results"
    res = harness("study", str(DISC), "--profile", "smoke", "--results-dir", str(results),
                  "--set", "budget.max_params=50000")
    assert res.returncode == 2 and "86,111 parameters" in res.stderr and "max_params=50,000" in res.stderr
    assert res.stderr.count("\n") == 1 and not (results / "mlflow.db").exists()
    res = harness("study", str(DISC), "--profile", "smoke", "--results-dir", str(results), "--set", "train.steps=10001")
    assert res.returncode == 2 and "max_steps=10,000" in res.stderr


def test_generator_smoke_samples_with_guidance_interpolates_and_puts_the_gan_beside_diffusion(tmp_path):
    results = tmp_path / "results"
    res = harness("study", str(GEN), "--profile", "smoke", "--results-dir", str(results))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = {(r.data.tags["harness.variant"], r.data.tags.get("harness.axis.train.schedule"),
             r.data.tags.get("harness.axis.train.cfg_weight")): r for r in _trials(results, "classical_generator")}
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs.values())
    c = client(results)
    for key, r in runs.items():
        m = r.data.metrics
        assert "fd_classifier" in m and "fid" not in m  # classifier features: never called FID
        if key[0] == "dcgan-tiny":
            assert m["nfe"] == 1 and m["params"] > m["generator_params"] > 0
            continue
        assert m["nfe"] == (3 if key[2] == "0.0" else 6)  # 3 sampler steps, 2 NFE each with guidance
        assert [x.step for x in c.get_metric_history(r.info.run_id, "loss")] == [2, 4]
        artifacts = [f.path for f in c.list_artifacts(r.info.run_id, "samples")]
        assert any("interp_" in a for a in artifacts) and any("step_000000004" in a for a in artifacts)
    out = results / "classical_generator" / "smoke"
    combined = pd.read_csv(out / "diffusion_vs_gan.csv")
    assert list(combined.setting) == ["v-diffusion U-Net, tiny preset (cosine, w = 3)",
                                      "conditional DCGAN, tiny preset"]
    assert "Paper FID (cifar100)" in (out / "README.md").read_text()

    res = harness("sample", str(GEN), "--profile", "smoke", "--results-dir", str(results), "--n", "4",
                  "--steps", "2", "--trial", runs[("vdiff-tiny", "spliced", None)].data.tags["harness.config_hash"])
    assert res.returncode == 0, res.stderr
    written = [Path(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("wrote ")]
    assert len(written) == 2 and all(p.exists() and p.stat().st_size > 0 for p in written)
