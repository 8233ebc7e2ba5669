"""Pre-flight: every value a study file or `--set` controls is checked when the study is loaded (before Ray or
MLflow start, and by `--dry-run` too), and nothing the study names can make `harness table` write outside the
results folder (issue 16, items 2 and 7). Each case runs the CLI in-process and expects one sentence, exit 2."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

import harness.run.session as runner
import harness.study.spec as spec
from harness.cli.main import main
from harness.errors import UserError
from harness.study.spec import SpecError, load_study, out_file, safe_component

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


def study_copy(tmp: Path, name: str, edit=None) -> Path:
    """studies/<name>.yaml copied under ``tmp`` (so relative paths stay there), smoke by default, optionally edited."""
    doc = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
    doc["default_profile"] = "smoke"
    if edit:
        edit(doc)
    path = tmp / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_sentence(res, *fragments: str) -> str:
    assert res.exit_code == 2, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in res.output, (f, res.output)
    return res.output


@pytest.fixture(autouse=True)
def fixed_memory(monkeypatch):
    """The memory check compares with 16 GiB whatever machine runs the tests."""
    monkeypatch.setattr(spec, "machine_memory", lambda gpus=0: (16 * GIB, "this machine's"))


# ------------------------------------------------------------------------------------ a store with finished runs
class EveryTrial(dict):
    """finished_runs()/trial_runs() of a store where every trial of the study finished (same run for all)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def get(self, key, default=None):
        return self.value

    def __contains__(self, key):
        return True

    def __getitem__(self, key):
        return self.value


class FakeTracker:
    """Stands in for harness.tracking.Tracker on a store where every trial FINISHED with a few metrics."""

    def __init__(self, uri=None, study=None, artifacts=None):
        self.data_hashes = None
        self.run = SimpleNamespace(
            info=SimpleNamespace(run_id="r0", run_name="run", start_time=0, end_time=60_000, status="FINISHED"),
            data=SimpleNamespace(tags={}, metrics={"fd_classifier": 12.0, "kd_classifier": 0.1, "fid": 12.0,
                                                   "kid": 0.1, "loss": 0.5, "emd_test": 3.0, "nll_test": 1.0,
                                                   "val_accuracy": 0.5, "compressed_bytes": 1000.0}))
        self.client = SimpleNamespace(get_metric_history=lambda run_id, key: [],
                                      list_artifacts=lambda run_id, path=None: [],
                                      download_artifacts=self._no_artifact)

    @staticmethod
    def _no_artifact(*a, **k):
        raise OSError("no artifacts in the fake store")

    def finished_runs(self, study):
        return EveryTrial(self.run)

    def trial_runs(self, study):
        return EveryTrial([self.run])

    def calibration_runs(self, study):
        return {}  # not calibrated: the reports say so


@pytest.fixture
def fake_store(monkeypatch):
    """`harness table` / `harness compare` read this fake store instead of MLflow."""
    monkeypatch.setattr(runner, "Tracker", FakeTracker)
    monkeypatch.setattr(runner, "store_exists", lambda uri: True)


def tree(root: Path, skip: Path | None = None) -> set[Path]:
    return {p for p in root.rglob("*") if skip is None or not p.is_relative_to(skip)}


# --------------------------------------------------------------------------------------- item 2: path traversal
def test_table_combine_key_from_set_cannot_write_outside_results(tmp_path, fake_store):
    """`harness table --set 'table.combine./abs/x=[baseline,gan]'` used to write /abs/x.csv."""
    study = study_copy(tmp_path, "classical_generator")
    outside = tmp_path / "outside"
    outside.mkdir()
    results = tmp_path / "results"
    res = invoke("table", str(study), "--results-dir", str(results),
                 "--set", f"table.combine.{outside / 'x'}=[baseline,gan]")
    assert_one_sentence(res, str(study), "table.combine key", "it becomes a file name")
    assert not (outside / "x.csv").exists() and not list(outside.iterdir())
    assert not results.exists() or not list(results.rglob("*.csv"))  # refused before anything was written


def test_table_combine_key_in_study_file_cannot_climb_out(tmp_path, fake_store):
    study = study_copy(tmp_path, "classical_generator",
                       lambda d: d["table"]["combine"].update({"../../../escaped": ["baseline", "gan"]}))
    res = invoke("table", str(study), "--results-dir", str(tmp_path / "results"))
    assert_one_sentence(res, "table.combine key '../../../escaped'")
    assert not list(tmp_path.rglob("escaped*"))


def test_table_with_valid_names_writes_only_inside_its_folder(tmp_path, fake_store):
    study = study_copy(tmp_path, "classical_generator")
    before = tree(tmp_path)
    res = invoke("table", str(study), "--results-dir", str(tmp_path / "results"))
    assert res.exit_code == 0, (res.output, res.exception)
    out_dir = tmp_path / "results" / "classical_generator" / "smoke"
    assert (out_dir / "diffusion_vs_gan.csv").exists()
    new = tree(tmp_path) - before
    assert new and all(p.is_relative_to(tmp_path / "results") for p in new), sorted(new)


@pytest.mark.parametrize(("sets", "fragments"), [
    (["table.plots./abs=train.steps"], ["table.plots key '/abs'"]),
    (["table.curves.a/b=[loss]"], ["table.curves key 'a/b'"]),
    (["table.scatter=[../x,fid]"], ["table.scatter entry '../x'"]),
    (["table.metric=../../m"], ["table.metric '../../m'"]),
    (["table.paper_csv=../x.csv"], ["table.paper_csv '../x.csv'"]),
    (["name=../x"], ["study name '../x'"]),
    (["table.scatter=[fid,bogus]"], ["table.scatter entry 'bogus' is not a known metric"]),
    (["table.scatter=[fid]"], ["table.scatter must name two metrics"]),
    (["table.combine.both=[baseline,nope]"], ["table.combine.both lists 'nope', which is not a substudy"]),
    (["table.combine.both=3"], ["table.combine.both must be a non-empty list of substudy names"]),
    (["table.plots.nope=train.steps"], ["table.plots key 'nope' is not a substudy"]),
    (["table.curves.nope=[loss]"], ["table.curves key 'nope' is not a substudy"]),
    (["table.plots.baseline=train.bogus"], ["table.plots.baseline 'train.bogus' is not a key of the substudy"]),
    (["table.plots.baseline=bogus"], ["table.plots.baseline must be 'depth' or a config key"]),
    (["table.labels.x=[1,2]"], ["table.labels must map settings to text labels"]),
    (["table.kind=pivot"], ["table.kind must be one of best_checkpoint, settings, got 'pivot'"]),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_table_section_is_checked_at_load(tmp_path, sets, fragments):
    study = study_copy(tmp_path, "classical_generator")
    args = [a for s in sets for a in ("--set", s)]
    res = invoke("study", str(study), "--dry-run", "--results-dir", str(tmp_path / "results"), *args)
    assert_one_sentence(res, str(study), *fragments)


def test_substudy_and_profile_names_cannot_be_paths(tmp_path):
    study = study_copy(tmp_path, "classical_generator")
    res = invoke("study", str(study), "--dry-run", "--set", "substudies./x.seeds=[0]")
    assert_one_sentence(res, "substudy name '/x'")
    res = invoke("study", str(study), "--dry-run", "--profile", "../smoke")
    assert_one_sentence(res, "profile name '../smoke'")


def test_safe_component_and_out_file(tmp_path):
    for good in ("baseline", "diffusion_vs_gan", "train.lr", "a-b.c_1"):
        assert safe_component(good, "x", "here") == good
    for bad in ("", ".", "..", "../x", "/abs", "a/b", "a\\b", "x\x00", "-x", "Ω", "a" * 81, 3, None):
        with pytest.raises(SpecError, match="it becomes a file name"):
            safe_component(bad, "table.combine key", "here")
    out = tmp_path / "results" / "s" / "p"
    out.mkdir(parents=True)
    assert out_file(out, "t.csv") == out / "t.csv"
    for bad in ("../t.csv", "../../../t.csv", str(tmp_path / "abs.csv")):
        with pytest.raises(UserError, match="not inside the results folder"):
            out_file(out, bad)
    (out / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(UserError, match="not inside the results folder"):
        out_file(out, "link.csv")


def test_compare_by_key_cannot_name_a_path(tmp_path, fake_store):
    study = study_copy(tmp_path, "classical_generator")
    res = invoke("compare", str(study), "--by", "../../x.y", "--results-dir", str(tmp_path / "results"))
    assert_one_sentence(res, "--by key '../../x.y'")
    assert not list(tmp_path.rglob("compare_*"))


# ------------------------------------------------------------------ item 7: values that used to fail only later
HUGE = "1" * 100_000


@pytest.mark.parametrize(("study", "sets", "fragments"), [
    # (a) enumerations: each recipe's samplers, metrics, table kind, ray_train, train enumerations
    ("classical_generator", ["eval.sampler=bogus"], ["eval.sampler 'bogus' is not a sampler of recipe 'vdiff'",
                                                      "samplers: ancestral, ddim"]),
    ("block_sharing", ["eval.sampler=dpmpp2m"], ["eval.sampler 'dpmpp2m' is not a sampler of recipe 'edm'",
                                                 "did you mean 'dpmpp_2m'?"]),
    ("mnist_compression", ["eval.sampler=ancestral"], ["recipe 'score'", "samplers: euler_maruyama, pc, ode"]),
    ("block_sharing", ["eval.metrics=[fid,fidd]"], ["eval.metrics entry 'fidd' is not a known metric"]),
    ("block_sharing", ["eval.extractor=clip"], ["eval.extractor must be one of inception, classifier, auto"]),
    ("block_sharing", ["resources.ray_train=sometimes"], ["resources.ray_train must be one of auto, always"]),
    ("toy_ddpm", ["train.mixed_precision=fp8"], ["train.mixed_precision must be no, fp16 or bf16"]),
    ("toy_ddpm", ["train.schedule=quadratic"], ["unknown beta schedule 'quadratic'"]),
    ("classical_generator", ["train.schedule=quadratic"], ["unknown v-diffusion schedule 'quadratic'"]),
    # (b) numbers: finite, bounded, positive where the code needs it
    ("block_sharing", [f"train.lr={HUGE}"], ["--set 'train.lr': cannot read its value",
                                             "a number with too many digits"]),
    ("block_sharing", ["train.lr=1e999"], ["train.lr: inf is not a finite number"]),
    ("block_sharing", ["train.lr=.nan"], ["train.lr: nan is not a finite number"]),
    ("block_sharing", ["train.lr=-1"], ["train.lr must be a positive learning rate, got -1.0"]),
    ("block_sharing", ["train.lr=0"], ["train.lr must be a positive learning rate, got 0.0"]),
    ("block_sharing", [f"train.lr={'9' * 400}"], ["train.lr: a 400-digit number is too large for a number"]),
    ("classical_generator", ["train.betas=[0.9,.inf]"], ["train.betas: inf is not a finite number"]),
    ("block_sharing", ["model.sigma_data=.inf"], ["model.sigma_data: inf is not a finite number (variant 'D16')"]),
    ("block_sharing", ["resources.cpus_per_worker=0"], ["resources.cpus_per_worker must be positive"]),
    ("block_sharing", ["resources.workers=0"], ["resources.workers must be at least 1"]),
    ("block_sharing", ["seeds=[-1]"], ["seed -1 must be an integer from 0 to 2,147,483,647"]),
    ("block_sharing", ["seeds=[1000000000000]"], ["seed 1000000000000 must be an integer from 0"]),
    ("block_sharing", ["train.batch_size=2.5"], ["train.batch_size: 2.5 has type float, expected int"]),
    # (c) step counts fit the 9-digit checkpoint names
    ("block_sharing", ["train.steps=1e12"], ["train.steps=1000000000000 is too large: at most 999,999,999",
                                            "9 digits"]),
    ("block_sharing", ["train.steps=1000000000"], ["train.steps=1000000000 is too large"]),
    ("toy_ddpm", ["train.epochs=1e9"], ["train.epochs=1000000000 is too large"]),
    ("block_sharing", ["train.steps=0"], ["block_sharing.yaml: train.steps must be >= 1, got 0"]),
    # (d) memory that obviously cannot fit
    ("block_sharing", ["train.batch_size=1e8"], ["variant 'D16' needs at least", "GB of memory per worker",
                                                 "more than this machine's 17.2 GB", "lower train.batch_size"]),
    ("block_sharing", ["train.batch_size=100000000"], ["needs at least", "batch 100,000,000"]),
    ("block_sharing", ["eval.batch_size=100000000"], ["needs at least", "batch 100,000,000"]),
    ("block_sharing", ["eval.n_samples=900000000"], ["needs at least", "900,000,000 evaluation samples"]),
    ("block_sharing", ["data.options.n=100000000"], ["data.options n=100000000 and size=8 generate at least"]),
    ("block_sharing", ["data.size=100000"], ["data.size=100000 is too large: at most 4,096"]),
    # eval counts
    ("block_sharing", ["eval.every=0"], ["eval.every must be at least 1, got 0"]),
    ("block_sharing", ["eval.n_samples=-5"], ["eval.n_samples must be at least 1, got -5"]),
    ("block_sharing", ["eval.batch_size=0"], ["eval.batch_size must be at least 1"]),
    ("block_sharing", ["eval.grid=0"], ["eval.grid must be at least 1"]),
    ("block_sharing", ["eval.sampler_steps=0"], ["eval.sampler_steps must be at least 1"]),
    ("block_sharing", ["eval.sampler_steps=1e10"], ["eval.sampler_steps=10000000000 is too large"]),
    ("toy_ddpm", ["eval.emd_n=0"], ["eval.emd_n must be at least 1"]),
])
def test_values_that_used_to_fail_later_are_refused_at_load(tmp_path, study, sets, fragments):
    path = study_copy(tmp_path, study)
    args = [a for s in sets for a in ("--set", s)]
    res = invoke("study", str(path), "--dry-run", "--results-dir", str(tmp_path / "results"), *args)
    out = assert_one_sentence(res, *fragments)
    assert len(out) < 600, out
    assert not (tmp_path / "results" / "mlflow.db").exists()


def test_axes_values_are_checked_per_trial(tmp_path):
    """Axes set values the study's own sections never held: each trial's values are checked too."""
    for axes, message in (({"eval.sampler": ["heun", "bogus"]}, "eval.sampler 'bogus' is not a sampler of recipe"),
                          ({"train.steps": [2, 10**10]}, "train.steps=10000000000 is too large"),
                          ({"train.lr": [1e-4, float("nan")]}, "train.lr: nan is not a finite number")):
        path = study_copy(tmp_path, "block_sharing", lambda d, axes=axes: d.update(axes=axes))
        with pytest.raises(SpecError, match=message):
            spec.expand_trials(load_study(path))


def test_huge_number_in_a_study_file_is_one_sentence(tmp_path):
    path = tmp_path / "studies" / "huge.yaml"
    path.parent.mkdir()
    text = (REPO / "studies" / "block_sharing.yaml").read_text()
    path.write_text(text.replace("lr: 5.0e-4", f"lr: {HUGE}"))
    with pytest.raises(SpecError, match="cannot read a value .a number with too many digits"):
        load_study(path)


MINI = """\
name: mini
recipe: edm
datasets: [synthetic]
variants: [D8]
model: {width: 32, head_dim: 16, patch_size: 2, mapping_depth: 1}
data: {options: {n: 32, size: 8}}
train: {steps: STEPS, batch_size: 8, lr: LR}
eval: {every: 2, n_samples: 8}
"""


def test_exponent_numbers_read_alike_in_files_and_set(tmp_path):
    """YAML 1.1 reads 1e-4 and 4e0 as text; study files read them as numbers, as --set does, and an integral float
    where an int is expected is that int (with that int's hash)."""
    (tmp_path / "studies").mkdir()
    plain, exp = tmp_path / "studies" / "plain.yaml", tmp_path / "studies" / "exp.yaml"
    plain.write_text(MINI.replace("STEPS", "4").replace("LR", "0.0005"))
    exp.write_text(MINI.replace("STEPS", "4e0").replace("LR", "5e-4"))
    assert load_study(exp).study.train == {"steps": 4.0, "batch_size": 8, "lr": 5e-4}
    trials = spec.expand_trials(load_study(exp))
    assert [type(t.train["steps"]) for t in trials] == [int]
    by_set = spec.expand_trials(load_study(plain, sets={"train.steps": 4.0, "train.lr": 5e-4}))
    assert [t.config_hash for t in trials] == [t.config_hash for t in by_set] == [
        t.config_hash for t in spec.expand_trials(load_study(plain))]
    exp.write_text(MINI.replace("STEPS", "4.5").replace("LR", "5e-4"))
    with pytest.raises(SpecError, match="train.steps: 4.5 has type float, expected int"):
        load_study(exp)


def test_every_recipe_declares_the_samplers_its_module_has():
    from harness.diffusion import edm, score
    from harness.recipes import get_recipe, vdiff_config

    assert set(get_recipe("edm").eval_samplers) == set(edm.SAMPLERS)
    assert set(get_recipe("score").eval_samplers) == set(score.SAMPLERS)
    assert set(get_recipe("vdiff").eval_samplers) == set(vdiff_config.SAMPLERS)
    for name in ("ddpm", "ddpm_image", "gan", "classify", "null"):  # they never read eval.sampler
        assert get_recipe(name).eval_samplers == ()


def test_every_enumerated_train_key_is_checked_at_load():
    import dataclasses
    import typing

    from harness.recipes import get_recipe, recipe_names
    from harness.study.spec import check_train, from_dict

    for name in recipe_names():
        cls = get_recipe(name).train_config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if str in (typing.get_args(hints[f.name]) or (hints[f.name],)):
                with pytest.raises(SpecError, match=f.name):
                    check_train(from_dict(cls, {f.name: "bogus"}, "x: train"), "x")


def test_memory_estimate_counts_what_it_says():
    """A lower bound (tests/test_spec.py loads every shipped profile with the real machine's memory)."""
    model = {"in_channels": 3, "input_size": 32}
    need, how = spec.memory_estimate(1_000_000, model, {"batch_size": 128}, {"batch_size": 100, "n_samples": 10})
    assert need == 128 * 3072 * 4 * spec.ACTIVATION_FACTOR + 1_000_000 * spec.BYTES_PER_PARAM + 10 * 3072 * 4
    assert "batch 128" in how and "1,000,000 parameters" in how
    per_worker, _ = spec.memory_estimate(0, model, {"batch_size": 128}, {"batch_size": 1}, workers=2)
    assert per_worker == 64 * 3072 * 4 * spec.ACTIVATION_FACTOR
    assert spec._sample_elements({"n_dim": 3}) == 3


def test_memory_is_the_gpus_when_the_study_asks_for_one_and_cuda_is_here(monkeypatch):
    import torch

    monkeypatch.undo()  # the real machine_memory, not the fixed one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    assert spec.machine_memory(1.0) == (80 * GIB, "the GPU's (Fake GPU)")
    import psutil

    assert spec.machine_memory(0.0) == (psutil.virtual_memory().total, "this machine's")


# ------------------------------------------------------ issue 18: one pre-flight before Ray, with the remedy
@pytest.fixture
def laptop(monkeypatch):
    """This machine as a 2-CPU laptop without GPUs, whatever runs the tests."""
    import torch

    import harness.run.preflight as preflight

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(preflight, "machine_cpus", lambda: 2.0)


def test_paper_profile_on_a_laptop_fails_once_before_ray_naming_everything_and_the_profile_that_runs(
        tmp_path, monkeypatch, laptop):
    """It used to fail one prerequisite at a time: cifar10, then artbench10, then (after starting Ray) the CPUs, then
    the GPUs without a remedy."""
    import shlex

    import ray

    import harness.run.estimate as estimate

    path = study_copy(tmp_path, "block_sharing", lambda d: d.update(default_profile="paper"))
    results = tmp_path / "results"
    # data.download=false: the test must not download CIFAR where there is a network
    res = invoke("study", str(path), "--results-dir", str(results), "--set", "data.download=false")
    out = assert_one_sentence(
        res, "profile 'paper' trains 16 trials x 2,000,000 steps on 1 GPU and 8 CPUs each (an estimated ",
        " GPU-hours at A100 fp32 19.5 TFLOP/s at 40% utilisation), more than this machine has: ",
        f"dataset 'cifar10' not found under {tmp_path / 'data'}",
        f"dataset 'artbench10' not found under {tmp_path / 'data'}",
        "a trial needs 1 GPU (resources.workers x gpus_per_worker) but this machine has 0",
        "a trial needs 8 CPUs (resources.workers=1 x cpus_per_worker=8) but this machine has 2")
    command = f"harness study {path} --profile cpu --set data.download=false --results-dir {results}"
    assert f"runs here: `{command}`" in out, out
    assert "--profile paper" not in out  # it needs a GPU
    assert out.count(";") == out.count("; ")  # a ';'-joined list: the loader's own ';' became ','
    assert not ray.is_initialized()
    assert not (results / "mlflow.db").exists()

    # the command runs as printed (here as a dry run, without measuring rates)
    monkeypatch.setattr(estimate, "MEASURE_BUDGET_S", 0.0)
    words = shlex.split(command)
    assert words[:2] == ["harness", "study"]
    ok = CliRunner().invoke(main, [*words[1:], "--dry-run"])
    assert ok.exit_code == 0, (ok.output, ok.exception)
    assert "study block_sharing [profile cpu]: 8 trials" in ok.output


def test_a_trial_larger_than_this_machine_is_refused_before_ray_with_the_sets_that_still_apply(tmp_path, laptop):
    """Data present, only resources short: refused before Ray starts (after the store is read: a study with nothing
    left to train still writes its tables); --set values that no longer fit are left out of the remedy."""
    import ray

    path = study_copy(tmp_path, "block_sharing")
    results = tmp_path / "results"
    res = invoke("study", str(path), "--results-dir", str(results), "--set", "resources.gpus_per_worker=1",
                 "--set", "seeds=[3]")
    out = assert_one_sentence(res, "profile 'smoke' trains 8 trials x 4 steps on 1 GPU and 1 CPU each",
                              "more than this machine has: a trial needs 1 GPU",
                              f"runs here: `harness study {path} --profile cpu --set 'seeds=[3]' --results-dir "
                              f"{results}`")
    assert "gpus_per_worker=1 " not in out.split("runs here")[1]
    assert "--profile paper" not in out
    assert not ray.is_initialized()
    c = __import__("mlflow").tracking.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    assert not c.search_runs([c.get_experiment_by_name("block_sharing").experiment_id])  # no parent, no trial


def test_on_a_cluster_too_small_the_refusal_names_the_profiles_that_fit_it(tmp_path, monkeypatch):
    import harness.run.preflight as preflight
    from harness.run.session import StudySession

    path = study_copy(tmp_path, "block_sharing", lambda d: d.update(default_profile="paper"))
    session = StudySession(str(path), sets={"data.download": False})
    monkeypatch.setattr(preflight, "cluster_capacity",
                        lambda: preflight.Capacity(4.0, 0.0, ((2.0, 0.0), (2.0, 0.0)), "the Ray cluster"))
    with pytest.raises(UserError) as e:
        preflight._check_fits(session.loaded.study.resources, session, "10.0.0.1:6379")
    msg = str(e.value)
    assert msg.startswith("a trial needs 8 CPUs (resources.workers=1 x cpus_per_worker=8) but the Ray cluster has 4; "
                          "a trial needs 1 GPU"), msg
    assert ("runs there: `harness study " + str(path) + " --profile cpu --set data.download=false --address "
            "10.0.0.1:6379` or `harness study " + str(path) + " --profile smoke --set data.download=false --address "
            "10.0.0.1:6379`") in msg, msg
    assert "\n" not in msg

    monkeypatch.setattr(preflight, "cluster_capacity",
                        lambda: preflight.Capacity(16.0, 2.0, ((8.0, 0.0), (8.0, 2.0)), "the Ray cluster"))
    preflight._check_fits(session.loaded.study.resources, session, "10.0.0.1:6379")  # fits: no error
    monkeypatch.setattr(preflight, "cluster_capacity",
                        lambda: preflight.Capacity(16.0, 2.0, ((8.0, 0.0), (4.0, 2.0)), "the Ray cluster"))
    with pytest.raises(UserError, match="no node of the Ray cluster has 8 CPUs and 1 GPUs for one worker"):
        preflight._check_fits(session.loaded.study.resources, session, "10.0.0.1:6379")
