"""Hostile input: mutated study files and hostile `--set` values fed to the loader, `harness study --dry-run` and
`harness table` never end in a traceback, a file that is refused never creates an MLflow store or run, and nothing
a study or `--set` names writes a file outside the results folder (property-based, hypothesis).

The CLI runs in-process (click's CliRunner) so hundreds of files take seconds; a mutated file that is still valid
goes as far as the trial plan, and the Ray step is replaced by a recorder (training is other tests' business).
`harness table` reads a fake store in which every trial finished (tests/test_preflight.py), so every table, plot
and combined table is written. The machine's memory reads as 2 GiB, so no generated value can make the planner
draw gigabytes of synthetic data.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_preflight import FakeTracker, study_copy, tree

import harness.run.driver as runner
import harness.run.preflight as preflight
import harness.run.session as session
import harness.study.spec as spec
from harness.cli.main import main
from harness.errors import UserError
from harness.study.spec import deep_merge, expand_trials, load_study

REPO = Path(__file__).resolve().parents[1]
STUDIES = ["block_sharing", "toy_ddpm", "mnist_compression", "classical_constraints", "classical_generator"]
BASES = {name: yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text()) for name in STUDIES}

# Values of every kind a careless or hostile edit could put anywhere.
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["D8", "cifar10", "smoke", "../../etc/passwd", "!!python/object", "1e400"]),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    """Every key path of a nested dict/list study."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(doc, path, value, delete=False):
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def mutated_study(draw) -> str:
    """A study file's text after structural edits (replace, delete or add keys) or raw text damage."""
    name = draw(st.sampled_from(STUDIES))
    doc = copy.deepcopy(BASES[name])
    doc["default_profile"] = "smoke"  # a still-valid file never plans a paper-scale study
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "add":
            parent = path[:-1]
            node = doc
            for key in parent:
                node = node[key]
            if isinstance(node, dict):
                node[draw(st.text(min_size=1, max_size=8))] = draw(VALUES)
        else:
            _set(doc, path, draw(VALUES), delete=action == "delete")
    text = yaml.safe_dump(doc, sort_keys=False)
    if draw(st.booleans()):  # raw damage: cut, duplicate or insert characters
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        text = text[:i] + draw(st.sampled_from(["", ":", "- ", "{", "]", "\t", "'", "&a *a", "\x00"])) + text[j:]
    return text


@pytest.fixture
def no_training(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "_run_trials", lambda plan, todo, *a, **k: calls.append(len(todo)))
    monkeypatch.setattr(spec, "machine_memory", lambda gpus=0: (2 * 2**30, "this machine's"))
    return calls


SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check_mutated_study(tmp_path_factory, text: str) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    study = tmp / "studies" / "mutated.yaml"
    study.parent.mkdir()
    study.write_text(text)
    results = tmp / "results"

    try:  # the loader and the data check: a user error or a plan, nothing else
        loaded = load_study(study)
        expand_trials(loaded)
        preflight._check_data(loaded)
        valid = True
    except UserError as e:
        valid = False
        assert str(e) and "\n" not in str(e).strip(), str(e)

    res = CliRunner().invoke(main, ["study", str(study), "--results-dir", str(results)])
    assert res.exit_code in (0, 2), (res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 2:
        assert not valid
        assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
        assert not (results / "mlflow.db").exists()  # refused before any store or run exists
    else:
        assert valid


@settings(max_examples=60, **SETTINGS)  # with the --set and table cases below, the default run stays about 1 min
@given(text=mutated_study())
def test_mutated_study_files_never_traceback_and_refused_ones_create_no_run(tmp_path_factory, no_training, text):
    check_mutated_study(tmp_path_factory, text)


@pytest.mark.slow
@settings(max_examples=600, **SETTINGS)
@given(text=mutated_study())
def test_600_mutated_study_files(tmp_path_factory, no_training, text):
    check_mutated_study(tmp_path_factory, text)


# ---------------------------------------------------------------------------- hostile --set values and path keys
ABS = "{ABS}"  # replaced by an absolute path inside the example's own tmp folder (<tmp>/outside/x)
GOOD_NAMES = ["baseline", "gan", "schedule", "x", "x.csv", "a-b.c_1"]
# Names that would leave the results folder if they became a path ('../' survives in study files only: --set keys
# split on dots), then other names a file system or a terminal reads specially.
ESCAPES = [ABS, "../../../outside/x", "../x", "a/b", ".."]
BAD_NAMES = [*ESCAPES, ".", "\x00", "x\x00y", "Ω", "ü/..", "", " ", "-x", "a" * 81, "x\ny", "~", "$HOME"]
NAMES = GOOD_NAMES + BAD_NAMES
# Values that used to pass pre-flight and fail later, or end in a traceback.
BOMBS = ["1" * 100_000, "-" + "9" * 5000, "1." + "1" * 100_000, "9" * 400, str(10**100), str(2**64), "1e999",
         "-1e999", ".nan", ".inf", "-.inf", "1e12", "1e9", "1e8", "-1", "0", "2.5", "[[[[", "&a [*a]", "{}", "[]",
         "!!python/object/apply:os.system [echo]", "bogus"]
TOKENS = [*NAMES, "nan", "inf", "1", "true", "null", "~", "[baseline,gan]", "[../x,gan]", f"[{ABS},gan]",
          "[size,fid]", "[fid,bogus]", "[fid]", "train.steps", "depth", "[loss]"]
SET_VALUES = st.one_of(st.sampled_from(BOMBS), st.sampled_from(TOKENS), st.integers(-10**15, 10**15).map(str),
                       st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12))
# Keys whose last part ({K}) or value ({K}) becomes a file name, with a value of the right shape.
PATH_KEYS = {
    "table.combine.{K}": "[baseline,gan]",
    "table.plots.{K}": "train.cfg_weight",
    "table.curves.{K}": "[loss]",
    "table.scatter": "[{K},fid]",
    "table.metric": "{K}",
    "name": "{K}",
    "substudies.{K}.seeds": "[0]",
}


def _dotted(node, prefix=""):
    """Every leaf key of a study (lists are leaves) as a dotted --set key."""
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _dotted(v, f"{key}.")
        else:
            yield key


REAL_KEYS = {name: sorted(set(_dotted({k: v for k, v in deep_merge(doc, doc["profiles"]["smoke"]).items()
                                       if k != "profiles"}))) for name, doc in BASES.items()}


def _path_item(draw) -> tuple[str, str]:
    """A path-bearing key and value, the name in it good or bad (escapes most often), the value sometimes hostile."""
    template = draw(st.sampled_from(sorted(PATH_KEYS)))
    kind = draw(st.integers(0, 3))
    good = ["fid", "kid", "size", "params"] if template in ("table.scatter", "table.metric") else GOOD_NAMES
    name = draw(st.sampled_from(good if kind < 2 else ESCAPES if kind == 2 else BAD_NAMES))
    value = PATH_KEYS[template] if draw(st.integers(0, 3)) else draw(SET_VALUES)
    return template.replace("{K}", name), value.replace("{K}", name)


@st.composite
def hostile_sets(draw, studies=tuple(STUDIES), file_edits=False) -> tuple[str, str, list[str], dict]:
    """(study, profile, --set items, edits of the study file): the study's real keys with hostile values and the
    path-bearing keys (table.combine/plots/curves keys, table.scatter and table.metric names, study and substudy
    names); the profile is mostly smoke, else a hostile name. With ``file_edits``, path-bearing keys may be written
    into the study file itself (where '../' keys survive) instead of given with --set."""
    name = draw(st.sampled_from(studies))
    sets, edits = [], {}
    for _ in range(draw(st.integers(1, 2 if file_edits else 3))):
        if not file_edits and draw(st.booleans()):
            sets.append(f"{draw(st.sampled_from(REAL_KEYS[name]))}={draw(SET_VALUES)}")
            continue
        key, value = _path_item(draw)
        if file_edits and draw(st.booleans()):
            edits[key] = value
        else:
            sets.append(f"{key}={value}")
    profile = "smoke" if draw(st.integers(0, 9)) < 8 else draw(st.sampled_from(BAD_NAMES))
    return name, profile, sets, edits


def _edit(doc: dict, edits: dict[str, str], target: str) -> None:
    """Write ``edits`` (a key of PATH_KEYS -> YAML text) into a study document; the drawn name may hold dots and
    slashes, so keys are split by their template, not at every dot."""
    for key, text in edits.items():
        key, text = key.replace(ABS, target), text.replace(ABS, target)
        if key.startswith("substudies."):
            sub, _, leaf = key[len("substudies."):].rpartition(".")
            parts = ["substudies", sub, leaf]
        else:
            parts = key.split(".", 2)
        try:
            value = yaml.safe_load(text)
        except Exception:  # noqa: BLE001 - text YAML cannot read stays text
            value = text
        node = doc
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[parts[-1]] = value


def _sane(loaded) -> None:
    """A plan `--dry-run` accepted holds nothing that fails later: finite numbers only, and step, epoch and other
    counts that fit the 9-digit checkpoint names."""
    import json

    for t in expand_trials(loaded):
        json.dumps(t.payload(), allow_nan=False)
        for section in (t.train, t.eval):
            for key, v in section.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    assert abs(v) <= 999_999_999, (key, v)


def check_hostile_sets(tmp_path_factory, monkeypatch, case, command: str) -> None:
    """`harness study --dry-run` or `harness table` with the case's --set items: exit 0 or one sentence with exit 2,
    no exception but SystemExit, no file anywhere but under the results folder, and an accepted plan is sane."""
    from harness.cli.main import parse_sets

    name, profile, sets, edits = case
    tmp = tmp_path_factory.mktemp("sets")
    outside = tmp / "outside"
    outside.mkdir()
    target = str(outside / "x")
    study = study_copy(tmp, name, lambda doc: _edit(doc, edits, target))
    results = tmp / "results"
    monkeypatch.chdir(tmp)  # a relative path that escaped would land here, in view
    before = tree(tmp)
    profile = profile.replace(ABS, target)
    sets = [item.replace(ABS, target) for item in sets]
    args = [command, str(study), "--profile", profile, "--results-dir", str(results),
            *(["--dry-run"] if command == "study" else []), *(a for item in sets for a in ("--set", item))]
    res = CliRunner().invoke(main, args)
    assert res.exit_code in (0, 2), (args, res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception))
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        *before_error, last = res.output.rstrip("\n").split("\n")
        assert last.startswith("error: ") and all(line.startswith("warning: ") for line in before_error), res.output
        assert not (results / "mlflow.db").exists()
    elif command == "study":
        _sane(load_study(study, profile, parse_sets(sets)))
    new = tree(tmp) - before
    assert all(p.is_relative_to(results) for p in new), (args, sorted(new))
    assert not list(outside.iterdir()) and not list(tmp.glob("*.csv")), (args, sorted(new))


@settings(max_examples=60, **SETTINGS)
@given(case=hostile_sets())
def test_hostile_set_values_never_traceback_nor_write_outside(tmp_path_factory, monkeypatch, no_training, case):
    check_hostile_sets(tmp_path_factory, monkeypatch, case, "study")


@pytest.mark.slow
@settings(max_examples=600, **SETTINGS)
@given(case=hostile_sets())
def test_600_hostile_set_cases(tmp_path_factory, monkeypatch, no_training, case):
    check_hostile_sets(tmp_path_factory, monkeypatch, case, "study")


@pytest.fixture
def fake_store(monkeypatch):
    monkeypatch.setattr(session, "Tracker", FakeTracker)
    monkeypatch.setattr(session, "store_exists", lambda uri: True)


TABLE_STUDY = ("classical_generator",)  # settings tables, substudies, a combined table and curves


@settings(max_examples=20, **SETTINGS)
@given(case=hostile_sets(TABLE_STUDY, file_edits=True))
def test_hostile_table_names_never_write_outside_results(tmp_path_factory, monkeypatch, no_training, fake_store,
                                                         case):
    check_hostile_sets(tmp_path_factory, monkeypatch, case, "table")


@pytest.mark.slow
@settings(max_examples=500, **SETTINGS)
@given(case=hostile_sets(TABLE_STUDY, file_edits=True))
def test_500_hostile_table_cases(tmp_path_factory, monkeypatch, no_training, fake_store, case):
    check_hostile_sets(tmp_path_factory, monkeypatch, case, "table")
