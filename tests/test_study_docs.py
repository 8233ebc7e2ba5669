"""docs/study-files.md against the code, so the page cannot drift from what the harness does: every YAML block loads
and expands to the trial counts the page states, the printed dry-run is what `harness study --dry-run` prints, the
key tables list exactly the schema's keys (and each recipe's train keys, and each zoo family's config fields) with
their types and defaults, and the minimal study runs end to end and writes the files the page lists."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

import zoo
import zoo.registry
from harness.cli.main import main
from harness.recipes import get_recipe, recipe_names
from harness.recipes.score_config import CompressionKeys
from harness.study import spec
from harness.study.schema import Study
from harness.training.speed import SpeedKeys

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "study-files.md"
TEXT = DOC.read_text()
REQUIRED = object()
KEY_HEADER = ["key", "type", "default", "meaning"]
FAMILY_HEADER = ["family", "variants", "recipe", "config fields"]
COUNT = re.compile(r"(?:--profile (\S+) )?--dry-run: (\d+) trials?\b")


# ------------------------------------------------------------------------------------------------- reading the page
def yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", TEXT, re.S | re.M)


def tables() -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading above it, header cells, body rows) of every Markdown table on the page."""
    out, heading, lines = [], "", TEXT.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append((heading, block[0], block[2:]))
            continue
        i += 1
    return out


def key_rows() -> list[tuple[str, str, str, str]]:
    """(heading, key, type, default) of every row of the page's key tables."""
    rows = []
    for heading, header, body in tables():
        if header == KEY_HEADER:
            for cells in body:
                assert len(cells) == 4, f"{heading}: a key row needs 4 cells: {cells}"
                key = re.fullmatch(r"`([\w.]+)`", cells[0])
                assert key, f"{heading}: the key cell must be one backticked key, got {cells[0]!r}"
                rows.append((heading, key[1], cells[1], cells[2]))
    return rows


# ---------------------------------------------------------------------------------------------- what the code says
def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def _fields(cls: type, prefix: str = "", skip: type | None = None) -> dict[str, tuple[object, object]]:
    """``prefix + name`` -> (annotation, default) of ``cls``'s fields, without those of the base ``skip``."""
    hints = typing.get_type_hints(cls)
    own = {f.name for f in dataclasses.fields(skip)} if skip else set()
    return {prefix + f.name: (hints[f.name], _default(f)) for f in dataclasses.fields(cls) if f.name not in own}


def schema_keys() -> dict[str, tuple[object, object]]:
    """Every key of a study file: the top-level fields, and ``section.key`` for the sections that are dataclasses."""
    keys = _fields(Study)
    for name, (ann, _) in list(keys.items()):
        if dataclasses.is_dataclass(ann):
            keys.update(_fields(ann, f"{name}."))
    return keys


def doc_type(ann: object) -> str:
    """How the page writes a type: str, int, number, bool, list, mapping, section, each optionally 'or null'."""
    union = typing.get_origin(ann) in (typing.Union, types.UnionType)
    args = typing.get_args(ann) if union else (ann,)
    base = [a for a in args if a is not type(None)]
    assert len(base) == 1, ann
    origin = typing.get_origin(base[0]) or base[0]
    word = "section" if dataclasses.is_dataclass(base[0]) else {
        str: "str", int: "int", float: "number", bool: "bool", tuple: "list", list: "list", dict: "mapping"}[origin]
    return word + (" or null" if type(None) in args else "")


def _plain(value: object) -> object:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def check_row(where: str, typ: str, default: str, ann: object, expected: object) -> None:
    """The row's type and default say what the dataclass field has."""
    assert re.sub(r" of \w+", "", typ) == doc_type(ann), f"{where}: type {typ!r}, the code has {ann}"
    if expected is REQUIRED:
        assert default == "required", f"{where}: the field is required, the page says {default!r}"
    elif dataclasses.is_dataclass(ann):
        assert default.startswith("see "), f"{where}: a section's default points to its table"
    else:
        m = re.fullmatch(r"`(.*)`", default)
        assert m, f"{where}: the default must be one backticked YAML value, got {default!r}"
        value = yaml.load(m[1], Loader=spec._Loader)  # as the study file would read it
        same = value == _plain(expected) and isinstance(value, bool) == isinstance(expected, bool)
        assert same, f"{where}: default {m[1]!r} reads as {value!r}, the code has {expected!r}"


# ------------------------------------------------------------------------------------------------------- the tests
def test_the_key_tables_list_every_schema_key_with_its_type_and_default():
    rows = {key: (heading, typ, default) for heading, key, typ, default in key_rows() if not key.startswith("train.")}
    expected = schema_keys()
    assert sorted(set(expected) - set(rows)) == [], "schema keys the page does not list"
    assert sorted(set(rows) - set(expected)) == [], "keys the page lists that the schema does not have"
    for key, (heading, typ, default) in rows.items():
        check_row(f"{heading} {key}", typ, default, *expected[key])


def test_every_recipe_has_a_table_of_its_own_train_keys_and_the_shared_ones_are_listed_once():
    by_heading: dict[str, dict[str, tuple[str, str]]] = {}
    for heading, key, typ, default in key_rows():
        if key.startswith("train."):
            assert key not in by_heading.get(heading, {}), f"{heading}: {key} listed twice"
            by_heading.setdefault(heading, {})[key] = (typ, default)
    speed = [h for h in by_heading if "Speed keys" in h]
    compression = [h for h in by_heading if "Compression keys" in h]
    assert len(speed) == 1 and len(compression) == 1, sorted(by_heading)
    groups = {speed[0]: _fields(SpeedKeys, "train."),
              compression[0]: _fields(CompressionKeys, "train.", skip=SpeedKeys)}
    for name in recipe_names():
        cfg = get_recipe(name).train_config
        heading = f"#### `{name}`"
        assert heading in by_heading, f"recipe {name!r} has no table of train keys"
        groups[heading] = _fields(cfg, "train.", skip=CompressionKeys if issubclass(cfg, CompressionKeys)
                                  else SpeedKeys)
    assert sorted(by_heading) == sorted(groups), "a train-key table under a heading that is no recipe"
    for heading, expected in groups.items():
        listed = by_heading[heading]
        assert sorted(listed) == sorted(expected), heading
        for key, (typ, default) in listed.items():
            check_row(f"{heading} {key}", typ, default, *expected[key])


def test_the_family_table_lists_every_zoo_family_with_its_config_fields():
    rows = [(h, cells) for h, header, body in tables() if header == FAMILY_HEADER for cells in body]
    families = []
    for _, (family, variants, recipe, fields) in rows:
        name = re.fullmatch(r"`([\w-]+)`", family)[1]
        families.append(name)
        cls = zoo.get_family(name).config_cls
        assert re.findall(r"`(\w+)`", fields) == [f.name for f in dataclasses.fields(cls)], name
        assert re.fullmatch(r"`(\w+)`", recipe)[1] in recipe_names()
        for pattern in re.findall(r"`([^`]+)`", variants):
            if "<" not in pattern:  # a parametric form, not a glob
                matched = zoo.names(pattern)
                assert matched and {zoo.entry(n).family for n in matched} == {name}, (name, pattern)
    assert sorted(families) == sorted(zoo.registry.families())


def _write(block: str, tmp_path: Path) -> Path:
    """A YAML block as a study file under <tmp>/studies/, as the page tells the reader to place it."""
    name = yaml.load(block, Loader=spec._Loader)["name"]
    path = tmp_path / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block)
    return path


@pytest.mark.parametrize("index", range(len(yaml_blocks())))
def test_every_yaml_block_is_a_study_that_expands_to_the_trial_count_it_states(index, tmp_path):
    block = yaml_blocks()[index]
    path = _write(block, tmp_path)
    counts = {profile: int(n) for profile, n in COUNT.findall(block)}
    assert "" in counts, "each YAML block states its trial count as '--dry-run: N trials'"
    declared = list(yaml.load(block, Loader=spec._Loader).get("profiles") or {})
    for profile in dict.fromkeys(["", *declared, *counts]):
        trials = spec.expand_trials(spec.load_study(path, profile or None))
        if profile in counts:
            assert len(trials) == counts[profile], f"profile {profile or 'default'!r}"


def test_the_substudy_example_shares_the_trial_both_substudies_make(tmp_path):
    block = next(b for b in yaml_blocks() if "substudies:" in b)
    text = TEXT[TEXT.index(block):]
    assert "so those 2 trials run once: 10 trials in all" in text
    trials = spec.expand_trials(spec.load_study(_write(block, tmp_path)))
    shared = [t for t in trials if len(t.substudies) == 2]
    assert len(shared) == 2 and {t.variant for t in shared} == {"D2S4I"} and {t.model["width"] for t in shared} == {64}


def test_the_printed_dry_run_is_what_the_command_prints(tmp_path):
    m = re.search(r"```text\n\$ harness study studies/(\S+)\.yaml --dry-run\n(.*?)```", TEXT, re.S)
    assert m, "the page shows a dry-run"
    block = next(b for b in yaml_blocks() if re.search(rf"^name: {m[1]}$", b, re.M))
    path = _write(block, tmp_path)
    result = CliRunner().invoke(main, ["study", str(path), "--dry-run", "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    shown = [line.rstrip() for line in m[2].splitlines()]
    printed = [line.rstrip() for line in result.output.strip().splitlines()]
    assert printed[:len(shown)] == shown  # the page shows the trial table the output starts with


def test_the_minimal_study_is_the_first_block_and_needs_no_download():
    block = yaml_blocks()[0]
    study = yaml.load(block, Loader=spec._Loader)
    assert study["name"] == "my_first_study" and "profiles" not in study
    assert set(study["datasets"]) <= {"digits", "synthetic", "helix", "sin_5_5"}
    assert "--dry-run: 1 trial" in block


def test_the_readme_shows_the_same_minimal_study_and_links_the_page():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Writing your own study"):]
    section = section[:section.index("\n### ", 1)]
    assert f"```yaml\n{yaml_blocks()[0]}```" in section, "the README's minimal study is the page's first block"
    assert "](docs/study-files.md)" in section


def test_the_readme_lists_every_block_sharing_override():
    """The README's zoo.build example names the overrides of the family it builds (D2S8I: block_sharing)."""
    readme = (REPO / "README.md").read_text()
    start = readme.index('model = zoo.build("D2S8I"')
    comment = " ".join(line.partition("#")[2] for line in readme[start:readme.index("zoo.param_count", start)]
                       .splitlines())
    listed = re.findall(r"\b(\w+)\b", comment.partition("overrides:")[2])
    assert set(f.name for f in dataclasses.fields(zoo.get_family("block_sharing").config_cls)) <= set(listed)


def _listed_outputs() -> tuple[str, list[str]]:
    """The folder the page says the minimal study's tables go to, and the files it lists there."""
    folder = re.search(r"its tables go to\s+`results/([\w/]+)/`", TEXT)[1]
    part = TEXT[TEXT.index("its tables go to"):TEXT.index("Beside them")]
    files = [f for line in part.splitlines() if line.startswith("- ")
             for f in re.findall(r"`([^`]+\.[a-z]+)`", line.split(":")[0])]
    return folder, files


def test_the_minimal_study_runs_end_to_end_and_writes_what_the_page_lists(tmp_path):
    """The page's first study through the real stack (Ray Tune, Accelerate, MLflow, tables) in a tmp results dir."""
    folder, files = _listed_outputs()
    assert folder == "my_first_study/default" and "table1.csv" in files and len(files) >= 6
    path = _write(yaml_blocks()[0], tmp_path)
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness.cli", "study", str(path), "--results-dir", str(results),
                               *args], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)

    run = harness()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "finished 1 trial(s), failed 0" in run.stdout
    out = results / folder
    for f in files:
        assert list(out.glob(re.sub(r"<[^>]+>", "*", f))), f"the page lists {f}, the study did not write it"
    table = pd.read_csv(out / "table1.csv")
    assert list(table.variant) == ["D2S4I"] and table.fd_classifier.notna().all()
    assert (results / "mlflow.db").is_file() and list((results / "runs" / "my_first_study").glob("*/checkpoints"))
    again = harness("--dry-run")  # "Running the same command again trains nothing"
    row = next(line for line in again.stdout.splitlines() if line.startswith("D2S4I"))
    assert again.returncode == 0 and row.rstrip().endswith("yes"), again.stdout
