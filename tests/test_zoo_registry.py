"""Registry behaviour and the `harness zoo` CLI (errors are one sentence with a non-zero exit)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from click.testing import CliRunner

import zoo
from harness.cli.main import main, parse_sets

PAPER_NAMES = ["D16", "D8", "D1S16", "D1S8", "D2S4I", "D2S4UI", "D2S8I", "D2S8UI"]
REFERENCE_EXTRA = ["D4S2I", "D4S2UI", "D4S4I", "D4S4UI", "D8S2I", "D8S2UI"]


def test_names_lists_all_registered_variants():
    assert set(PAPER_NAMES + REFERENCE_EXTRA) <= set(zoo.names())
    assert zoo.names("D2*") == [n for n in zoo.names() if n.startswith("D2")]
    assert set(zoo.names("D2*")) == {"D2S4I", "D2S4UI", "D2S8I", "D2S8UI"}


def test_config_is_frozen_and_overrides_apply():
    cfg = zoo.config("D8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 3  # type: ignore[misc]
    small = zoo.config("D8", width=128, dropout=None)  # None overrides are dropped
    assert small.width == 128 and small.dropout == cfg.dropout
    assert zoo.config("D8").width == 512  # the registered preset is unchanged


def test_int_accepted_for_float_field():
    assert zoo.config("D8", dropout=0).dropout == 0.0
    assert isinstance(zoo.config("D8", dropout=0).dropout, float)


@pytest.mark.parametrize(
    ("name", "overrides", "fragment"),
    [
        ("D7S3Q", {}, "D7S3Q"),
        ("resnet50", {}, "unknown zoo name"),
        ("D8", {"widht": 128}, "did you mean 'width'"),
        ("D8", {"width": "big"}, "expected int"),
        ("D8", {"interleaved": 1}, "expected bool"),
    ],
)
def test_bad_input_raises_zoo_error(name, overrides, fragment):
    with pytest.raises(zoo.ZooError, match=fragment):
        zoo.build(name, **overrides)


def test_unknown_name_suggests_close_names():
    with pytest.raises(zoo.ZooError, match="closest registered names: .*D2S8I"):
        zoo.entry("D2S8II")


@pytest.mark.parametrize(("typo", "first"), [
    ("D2S2l", "D2S2I"),  # lower-case L for I: suggested D8S2I, D4S2I, D2S8I, never the D2S2I it builds
    ("d2s2i", "D2S2I"), ("D2S2Ul", "D2S2UI"), ("D3S3X", "D3S3I"), ("D2S8II", "D2S8I"), ("D2SO8I", "D2S8I"),
    ("toy-mlp-2x6a", "toy-mlp-2x6"),
])
def test_typos_suggest_the_parametric_names_that_build(typo, first):
    """Suggestions for a mistyped zoo name include the parametric names built from its numbers, not only the
    registered presets; every name suggested builds."""
    with pytest.raises(zoo.ZooError) as e:
        zoo.entry(typo)
    close = re.search(r"closest (?:registered )?names: ([^;(]+)", str(e.value))
    assert close, str(e.value)
    names = [n.strip() for n in close[1].split(",")]
    assert names[0] == first, str(e.value)
    for name in names:
        zoo.entry(name)


def test_param_count_on_meta_device_matches_recorded():
    for name in PAPER_NAMES + REFERENCE_EXTRA:
        assert zoo.param_count(name) == zoo.entry(name).recorded_params, name


def test_describe_row():
    row = zoo.describe("D2S4I")
    assert row["params"] == 12_378_640 and row["applications"] == 8 and row["family"] == "block_sharing"
    assert 3.0 < row["gflops"] < 3.8  # ~0.42 GFLOP per block application, 8 applications


def test_parse_sets_types():
    assert parse_sets(["width=128", "dropout=0.1", "interleaved=false", "lr=1e-4", "name=D8"]) == {
        "width": 128, "dropout": 0.1, "interleaved": False, "lr": 1e-4, "name": "D8",
    }


# ---------------------------------------------------------------------------------------------------------- CLI
def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_zoo_list_shows_every_name():
    res = _run("zoo", "list")
    assert res.exit_code == 0, res.output
    for name in PAPER_NAMES + REFERENCE_EXTRA:
        assert f"\n{name} " in res.output
    assert "34,793,536" in res.output  # D8 at paper settings


def test_cli_zoo_show_with_override():
    res = _run("zoo", "show", "D2S4I", "--set", "width=128")
    assert res.exit_code == 0, res.output
    assert "width: 128" in res.output and "applications: 8" in res.output and "trainable parameters" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["zoo", "show", "D0S4I"],
        ["zoo", "show", "D2S4"],
        ["zoo", "show", "nope"],
        ["zoo", "show", "D8", "--set", "colour=red"],
        ["zoo", "show", "D8", "--set", "width=big"],
        ["zoo", "show", "D8", "--set", "width"],
        ["zoo", "list", "Q*"],
    ],
)
def test_cli_bad_input_is_one_sentence(args):
    res = _run(*args)
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output
