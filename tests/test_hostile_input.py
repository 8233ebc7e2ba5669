"""Hostile input: mutated study files fed to the loader and to `harness study` never end in a traceback, and a
file that is refused never creates an MLflow store or run (property-based, hypothesis).

The CLI runs in-process (click's CliRunner) so hundreds of files take seconds; a mutated file that is still valid
goes as far as the trial plan, and the Ray step is replaced by a recorder (training is other tests' business).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harness.runner as runner
from harness.cli import main
from harness.errors import UserError
from harness.spec import expand_trials, load_study

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
        runner._check_data(loaded)
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


@settings(max_examples=100, **SETTINGS)
@given(text=mutated_study())
def test_mutated_study_files_never_traceback_and_refused_ones_create_no_run(tmp_path_factory, no_training, text):
    check_mutated_study(tmp_path_factory, text)


@pytest.mark.slow
@settings(max_examples=600, **SETTINGS)
@given(text=mutated_study())
def test_600_mutated_study_files(tmp_path_factory, no_training, text):
    check_mutated_study(tmp_path_factory, text)
