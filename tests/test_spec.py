"""Study files: validation, precedence, expansion, hashing and budgets (no training, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.study.spec import SpecError, expand_trials, load_study

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "mini",
    "recipe": "edm",
    "datasets": ["synthetic"],
    "variants": ["D2S4I", "D8"],
    "model": {"width": 32, "head_dim": 16, "patch_size": 2, "mapping_depth": 1},
    "data": {"options": {"n": 32, "size": 8}},
    "train": {"steps": 10, "batch_size": 8},
    "eval": {"every": 5, "n_samples": 8},
    "profiles": {"small": {"train": {"steps": 4}}, "wide": {"model": {"width": 64}}},
}


def write(tmp_path: Path, data: dict, name: str = "mini.yaml") -> Path:
    d = tmp_path / "studies"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_file_validates_in_every_profile(path):
    raw = yaml.safe_load(path.read_text())
    for profile in ["default", *raw.get("profiles", {})]:
        loaded = load_study(path, None if profile == "default" else profile)
        trials = expand_trials(loaded)
        assert trials and all(t.params > 0 for t in trials)
        assert len({t.config_hash for t in trials}) == len(trials)


def test_precedence_defaults_yaml_profile_cli(tmp_path):
    p = write(tmp_path, BASE)
    assert load_study(p).study.eval.sampler_steps == 50  # dataclass default
    assert load_study(p).study.train["steps"] == 10  # YAML
    assert load_study(p, "small").study.train["steps"] == 4  # profile over YAML
    assert load_study(p, "small", {"train.steps": 2}).study.train["steps"] == 2  # --set over profile


def test_trials_expand_grid_and_hash_is_stable(tmp_path):
    data = {**BASE, "axes": {"train.lr": [1e-4, 2e-4]}, "seeds": [0, 1]}
    p = write(tmp_path, data)
    trials = expand_trials(load_study(p))
    assert len(trials) == 2 * 2 * 2  # variants x lr x seeds
    again = expand_trials(load_study(p))
    assert [t.config_hash for t in trials] == [t.config_hash for t in again]
    assert {t.train["lr"] for t in trials} == {1e-4, 2e-4}
    # The model config is resolved from the dataset: synthetic images are 3x8x8 with 4 classes.
    assert trials[0].model["in_channels"] == 3 and trials[0].model["input_size"] == 8
    assert trials[0].model["num_classes"] == 4
    # Resources and the data location are not part of the hash; the seed and the model are.
    moved = expand_trials(load_study(p, sets={"resources.cpus_per_worker": 2, "data.root": "/elsewhere"}))
    assert [t.config_hash for t in moved] == [t.config_hash for t in trials]
    wider = expand_trials(load_study(p, "wide"))
    assert not {t.config_hash for t in wider} & {t.config_hash for t in trials}


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"trian": {}}, "unknown key 'trian' (did you mean 'train'?)"),
        ({"train": {"step": 3}}, "unknown key 'step' (did you mean 'steps'?)"),
        ({"eval": {"n_samples": "many"}}, "eval.n_samples: 'many' has type str, expected int"),
        ({"variants": ["D8", "D0S4I"]}, "D0S4I"),
        ({"variants": ["Q9"]}, "unknown zoo name 'Q9'"),
        ({"recipe": "edn"}, "did you mean 'edm'"),
        ({"budget": {"max_params": 1000}}, "over the study's budget max_params=1,000"),
        ({"budget": {"max_steps": 5}}, "max_steps=5"),
        ({"axes": {"lr": [1, 2]}}, "axes key 'lr'"),
        ({"train": {"mixed_precision": "fp8"}}, "mixed_precision"),
        ({"eval": {**BASE["eval"], "sampler": "bogus"}}, "eval.sampler 'bogus' is not a sampler of recipe 'edm'"),
        ({"eval": {**BASE["eval"], "metrics": ["fid", "fidd"]}}, "eval.metrics entry 'fidd' is not a known metric"),
        ({"train": {"steps": 10**9, "batch_size": 8}}, "train.steps=1000000000 is too large: at most 999,999,999"),
        ({"train": {"steps": 10, "batch_size": 8, "lr": float("inf")}}, "train.lr: inf is not a finite number"),
        ({"train": {"steps": 10, "batch_size": 10**8}}, "needs at least"),
        ({"table": {"combine": {"../x": ["a"]}}}, "table.combine key '../x' must be"),
        ({"table": {"kind": "settings", "scatter": ["size", "nope"]}}, "table.scatter entry 'nope' is not a known"),
        ({"table": {"plots": {"nope": "train.steps"}}}, "table.plots key 'nope' is not a substudy"),
        ({"resources": {"ray_train": "never"}}, "resources.ray_train must be one of auto, always"),
    ],
)
def test_bad_study_content_names_file_and_key(tmp_path, patch, fragment):
    p = write(tmp_path, {**BASE, **patch})
    with pytest.raises(Exception) as info:
        expand_trials(load_study(p))
    assert fragment in str(info.value)
    assert str(p) in str(info.value) or "zoo name" in str(info.value)


def test_unknown_profile_lists_profiles(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(SpecError, match="unknown profile 'huge' .profiles: small, wide."):
        load_study(p, "huge")


def test_diagnostic_variant_may_exceed_budget(tmp_path):
    p = write(tmp_path, {**BASE, "budget": {"max_params": 60_000, "diagnostic": ["D8"]}})
    trials = expand_trials(load_study(p))
    assert [t.diagnostic for t in trials] == [False, True]


def test_yaml_syntax_error_has_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nvariants: [D8\n")
    with pytest.raises(SpecError, match=r"YAML syntax error at line \d+"):
        load_study(p)


def test_substudies_expand_their_own_axes_and_share_identical_trials(tmp_path):
    data = {
        **BASE,
        "variants": ["D8"],
        "substudies": {
            "lr": {"axes": {"train.lr": [1e-4, 5e-4]}},
            "depth": {"variants": ["D2S4I", "D8"]},
        },
    }
    p = write(tmp_path, data)
    loaded = load_study(p, sets={"train.steps": 3})
    assert sorted(name for name, _ in loaded.substudies) == ["depth", "lr"]
    trials = expand_trials(loaded)
    # lr: D8 x {1e-4, 5e-4}; depth: D2S4I and D8 at the default lr 5e-4, the latter the same trial as lr=5e-4.
    assert len(trials) == 3
    shared = [t for t in trials if set(t.substudies) == {"lr", "depth"}]
    assert len(shared) == 1 and shared[0].variant == "D8" and shared[0].train["lr"] == 5e-4
    assert all(t.train["steps"] == 3 for t in trials)  # --set reaches every part


def test_substudy_cannot_set_study_wide_keys(tmp_path):
    p = write(tmp_path, {**BASE, "substudies": {"x": {"resources": {"workers": 2}}}})
    with pytest.raises(SpecError, match="substudies.x cannot set 'resources'"):
        load_study(p)


def test_auto_extractor_is_resolved_at_load_and_hashed_as_resolved(tmp_path, monkeypatch):
    import harness.eval.image_metrics as M

    p = write(tmp_path, {**BASE, "eval": {**BASE["eval"], "extractor": "auto"}})
    monkeypatch.setattr(M, "inception_available", lambda weights=None: False)
    without = load_study(p)
    assert without.study.eval.extractor == "classifier"
    t_without = expand_trials(without)
    assert {t.eval["extractor"] for t in t_without} == {"classifier"}
    monkeypatch.setattr(M, "inception_available", lambda weights=None: True)
    with_weights = load_study(p)
    assert with_weights.study.eval.extractor == "inception"
    t_with = expand_trials(with_weights)
    assert {t.eval["extractor"] for t in t_with} == {"inception"}
    # the resolved extractor is part of the hash: installing the weights makes new trials, not stale hits
    assert not {t.config_hash for t in t_with} & {t.config_hash for t in t_without}
    explicit = write(tmp_path, {**BASE, "eval": {**BASE["eval"], "extractor": "inception"}}, "explicit.yaml")
    assert [t.config_hash for t in expand_trials(load_study(explicit))] == [t.config_hash for t in t_with]
    # a weights file named by the user means Inception, checked when it is used
    monkeypatch.setattr(M, "inception_available", lambda weights=None: False)
    named_eval = {**BASE["eval"], "extractor": "auto", "inception_weights": "/x.pt"}
    named = write(tmp_path, {**BASE, "eval": named_eval}, "n.yaml")
    assert load_study(named).study.eval.extractor == "inception"


def test_unknown_extractor_is_one_sentence(tmp_path):
    p = write(tmp_path, {**BASE, "eval": {**BASE["eval"], "extractor": "clip"}})
    with pytest.raises(SpecError, match="eval.extractor must be one of inception, classifier, auto, got 'clip'"):
        load_study(p)


def test_inception_available_sees_each_source(tmp_path, monkeypatch):
    import harness.eval.image_metrics as M
    import harness.eval.inception as W

    monkeypatch.setattr(M, "default_inception_weights", lambda: tmp_path / "none.pth")
    monkeypatch.setattr(W, "where", lambda cache=None: None)
    assert not M.inception_available()
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert M.inception_available(f) and not M.inception_available(tmp_path / "missing.pt")
    monkeypatch.setattr(W, "where", lambda cache=None: f)
    assert M.inception_available()
