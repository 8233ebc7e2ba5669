"""Messages that tell the user what to type run as printed, and messages say what went wrong (issue 18).

Every backticked `harness ...` command in the package's messages is parsed with click (without running it), so a
suggested option or command that does not exist fails here; the messages whose command depends on what the user
typed (the failed-trial hint, missing data, `zoo list`) are triggered and their commands parsed too. Also: a failed
trial's reason is its exception's own line, recipe configs name the key and value they refuse, and `zoo list` says
that parametric names build."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
import yaml
from click.testing import CliRunner

from harness.cli.main import failed_trials_hint, main, parse_sets

REPO = Path(__file__).resolve().parents[1]
BACKTICKED = re.compile(r"`([^`]+)`")
PLACEHOLDER = "\x00"  # an f-string's {...} while a string is scanned
# ALL-CAPS words (FILE, KEY) and <...> stand for a value in a message's command
PLACEHOLDERS = re.compile(r"\x00+|<[^<>]*>|\b[A-Z][A-Z_]{2,}\b")


# --------------------------------------------------------------------------------------------- parsing commands
def parse_command(line: str) -> list[click.Context]:
    """Parse ``harness ...`` with the CLI's own click objects, down to the last subcommand, without invoking
    anything; raises click.UsageError for an unknown command or option, a missing argument or a bad value. A line
    that only names a command (``harness study``, as in "the next `harness study` on the store") is checked to name
    one."""
    words = shlex.split(line)
    assert words[0] == "harness", line
    ctx = main.make_context("harness", words[1:])
    contexts, cmd = [ctx], main
    while isinstance(cmd, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]  # what the group left for its subcommand
        if not rest:
            break
        name, sub, rest = cmd.resolve_command(ctx, rest)
        if not rest and any(p.required for p in sub.params):
            break  # a command named, not given its arguments
        ctx = sub.make_context(name, rest, parent=ctx)
        contexts.append(ctx)
        cmd = sub
    return contexts


def all_options() -> set[str]:
    """Every option of every `harness` command."""
    found = {"--help", "--version"}

    def walk(cmd: click.Command) -> None:
        for p in cmd.params:
            if isinstance(p, click.Option):
                found.update(o for o in [*p.opts, *p.secondary_opts] if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(main)
    return found


def suggested_commands(message: str) -> list[str]:
    return [m for m in BACKTICKED.findall(message) if m.startswith("harness ")]


def unknown_options(message: str) -> list[str]:
    """``--options`` a message mentions outside backticked commands of other programs (`ray start --head`) that no
    `harness` command has, as in "run with --download"."""
    prose = BACKTICKED.sub(lambda m: m[0] if m[1].startswith(("harness", "--")) else "", message)
    return [o for o in re.findall(r"(?<![\w-])--[a-z][\w-]*", prose) if o not in all_options()]


def test_the_checks_catch_an_option_that_does_not_exist():
    """The checks below fail on the message this issue fixed ("run with --download") and on a suggested command with
    an unknown option or command, and pass a good one."""
    with pytest.raises(click.UsageError, match="--download"):
        parse_command("harness study studies/block_sharing.yaml --download")
    with pytest.raises(click.UsageError):
        parse_command("harness stats studies/block_sharing.yaml")
    with pytest.raises(click.UsageError):
        parse_command("harness fid-weights install --form x.whl")
    assert unknown_options("put a copy there or run with --download on a machine with internet") == ["--download"]
    assert unknown_options("start it with `ray start --head`, or fix --address") == []
    assert [c.info_name for c in parse_command("harness zoo show D3S3I --set width=128")] == ["harness", "zoo", "show"]
    status = parse_command("harness status 'my studies/x.yaml' --profile cpu --set train.steps=5")[-1]
    assert status.params["study_file"] == "my studies/x.yaml" and status.params["sets"] == ("train.steps=5",)


# ------------------------------------------------------------------------------ every command in the package
def _message_strings(path: Path) -> list[tuple[int, str]]:
    """The string literals of a module that are not docstrings, f-strings with their {...} as PLACEHOLDER."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings, parts = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
        if isinstance(node, ast.JoinedStr):
            parts.update(id(v) for v in node.values)
    out = []
    for node in ast.walk(tree):
        if id(node) in docstrings or id(node) in parts:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER
                                             for v in node.values)))
    return out


def _package_messages() -> list[tuple[str, str]]:
    return [(f"{path.relative_to(REPO)}:{line}", text)
            for path in sorted((REPO / "harness").rglob("*.py")) for line, text in _message_strings(path)]


def test_every_command_a_message_suggests_parses():
    """Each backticked `harness ...` in the package's strings (placeholders filled in) is a command the CLI
    accepts: its subcommands and options exist and its arguments are there."""
    checked, bad = [], []
    for where, text in _package_messages():
        for command in suggested_commands(text):
            line = PLACEHOLDERS.sub("x", command)
            try:
                parse_command(line)
            except click.UsageError as e:
                bad.append(f"{where}: `{command}` -> {e.format_message()}")
            checked.append(line)
    assert not bad, "\n".join(bad)
    # the scan sees the messages (an empty scan would pass anything)
    assert "harness fid-weights install --from x" in checked and "harness zoo list" in checked, checked


def test_every_option_a_message_mentions_exists():
    """"pass --results-dir", "--by KEY is ...": an option a message names outside a command is one the CLI has.
    Strings that are one option (click declarations, argv lists for pip or mlflow) are not messages."""
    bad = [f"{where}: {unknown_options(text)} in {text[:100]!r}" for where, text in _package_messages()
           if not re.fullmatch(r"--[\w-]+(=.*)?", text) and unknown_options(text)]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------- messages triggered here
def _study(tmp_path: Path) -> Path:
    doc = yaml.safe_load((REPO / "studies" / "block_sharing.yaml").read_text())
    path = tmp_path / "my studies" / "block_sharing.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("incomplete", [False, True])
def test_missing_data_suggests_the_download_key_that_exists(tmp_path, incomplete):
    """The missing-data error suggested `--download`, which no command has; its `--set data.download=true` parses
    as a study option and sets the study's key."""
    from harness.study.spec import load_study
    from harness.training.data import DataError, load_dataset

    if incomplete:
        (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path / "data")
    msg = str(e.value)
    assert ("incomplete" in msg) == incomplete, msg
    assert unknown_options(msg) == [], msg
    (fragment,) = BACKTICKED.findall(msg)
    assert fragment == "--set data.download=true", msg
    study = _study(tmp_path)
    ctx = parse_command(f"harness study {shlex.quote(str(study))} --profile smoke {fragment}")[-1]
    assert load_study(study, ctx.params["profile"], parse_sets(ctx.params["sets"])).study.data.download is True


@pytest.mark.parametrize("given", [
    dict(profile="cpu", sets=("train.steps=5", "seeds=[0, 1]", "data.root=/data/my data"),
         tracking_uri="sqlite:////tmp/a b/mlflow.db", results_dir="/tmp/my results", address="auto"),
    dict(profile=None, sets=(), tracking_uri=None, results_dir=None, address=None),
])
def test_failed_trial_hint_addresses_the_same_trials(given):
    """After a failed trial, `harness study` named `harness status FILE` without the profile and --set values, so
    typing it showed another profile's trials. Its commands now carry them, quoted, and parse to the same values."""
    study_file = "my studies/block_sharing.yaml"
    hint = failed_trials_hint(2, study_file, given["profile"], given["sets"], given["tracking_uri"],
                              given["results_dir"], given["address"])
    assert hint.startswith("2 trial(s) failed: `harness status ")
    status_cmd, retry_cmd = suggested_commands(hint)
    assert unknown_options(hint) == []
    status = parse_command(status_cmd)[-1]
    retry = parse_command(retry_cmd)[-1]
    assert status.info_name == "status" and retry.info_name == "study"
    same = {"study_file": study_file, "profile": given["profile"], "sets": given["sets"],
            "tracking_uri": given["tracking_uri"], "results_dir": given["results_dir"]}
    assert {k: status.params[k] for k in same} == same
    assert {k: retry.params[k] for k in same} == same
    assert retry.params["retry_failed"] is True and retry.params["address"] == given["address"]


def test_study_command_writes_parsed_sets_back():
    """study_command also takes the parsed --set mapping (as StudySession holds it): the CLI reads back the same
    values, a string that YAML would read as something else included."""
    from harness.errors import study_command

    sets = {"train.lr": 1e-4, "seeds": [0, 1], "data.root": "/d/x y", "model.name": "true", "train.flip": False}
    cmd = study_command("status", "s.yaml", "cpu", sets)
    assert parse_sets(parse_command(cmd)[-1].params["sets"]) == sets


# ------------------------------------------------------------------------------------ failed trials' reasons
ESC = "\x1b"
HEADER = (f"{ESC}[36mray::ImplicitFunc.train(){ESC}[39m (pid=24207, ip=192.0.2.2, "
          "actor_id=4e1586f65aa9995dbec9c91001000000, repr=tune_trial)")
TUNE_FRAMES = """\
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/venv/lib/python3.11/site-packages/ray/tune/trainable/trainable.py", line 329, in train
    raise skipped from exception_cause(skipped)
  File "/venv/lib/python3.11/site-packages/ray/air/_internal/util.py", line 98, in run
    self._ret = self._target(*self._args, **self._kwargs)
                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/venv/lib/python3.11/site-packages/ray/tune/trainable/function_trainable.py", line 249, in _trainable_func
    output = fn()
             ^^^^
  File "/work/harness/run/tune_trial.py", line 206, in tune_trial
    _run_recipe(config, tune.report, 0, 1)
"""
RECIPE_FRAME = """\
  File "/work/harness/recipes/null.py", line 40, in train_null
    raise ValueError("boom 42")
"""


def _failure(n: int, body: str) -> str:
    return f"Failure # {n} (occurred at 2026-12-07_20-33-2{n})\n{body}\n"


# Tune's error file for the trial, as Ray 2.x writes it (one block per failure; recorded from real runs)
ONE_WORKER = _failure(1, f"{HEADER}\n{TUNE_FRAMES}{RECIPE_FRAME}ValueError: boom 42")
ONE_WORKER_TWO_LINES = _failure(1, f"{HEADER}\n{TUNE_FRAMES}{RECIPE_FRAME}ValueError: boom 42\nsecond line")
RAY_TRAIN = _failure(1, f"""{HEADER}
{TUNE_FRAMES}  File "/venv/lib/python3.11/site-packages/ray/train/v2/api/data_parallel_trainer.py", line 195, in fit
    raise result.error
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 1 Error Snippet]:
{HEADER}
{RECIPE_FRAME}ValueError: boom 42
on rank 1
""")
TWO_RANKS = _failure(1, f"""{HEADER}
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
{HEADER}
  File "/work/harness/recipes/edm.py", line 80, in train_edm
    raise KeyError("k")
KeyError: 'k'
[Rank 1 Error Snippet]:
{HEADER}
{RECIPE_FRAME}ValueError: boom 42""")
RETRIED = _failure(1, f"{HEADER}\n{TUNE_FRAMES}  File \"x.py\", line 1, in f\n    g()\nRuntimeError: first try") + \
    ONE_WORKER_TWO_LINES.replace("Failure # 1", "Failure # 2")
CHAINED = _failure(1, f"""{HEADER}
{TUNE_FRAMES}{RECIPE_FRAME}ValueError: boom 42

The above exception was the direct cause of the following exception:

{HEADER}
  File "/work/harness/recipes/null.py", line 44, in train_null
    raise RuntimeError("step 3 failed") from e
harness.training.loop.TrialFailed: step 3 failed""")


@pytest.mark.parametrize(("text", "reason"), [
    (ONE_WORKER, "ValueError: boom 42"),
    (ONE_WORKER_TWO_LINES, "ValueError: boom 42 second line"),
    (RAY_TRAIN, "ValueError: boom 42 on rank 1"),
    (TWO_RANKS, "ValueError: boom 42"),
    (RETRIED, "ValueError: boom 42 second line"),
    (CHAINED, "TrialFailed: step 3 failed"),
    (_failure(1, "ray.exceptions.RayTaskError(ValueError): boom 42"), "ValueError: boom 42"),
    (_failure(1, "ray.tune.error.TuneError: could not restore the trial\n"), "TuneError: could not restore the trial"),
    (_failure(1, f"ValueError: boom 42\n{HEADER}"), "ValueError: boom 42"),  # no traceback: not Ray's header line
    (_failure(1, f"{HEADER}\n{RECIPE_FRAME}KeyboardInterrupt\n"), "KeyboardInterrupt"),
    ("", "trial raised an error"),
])
def test_failure_reason_is_the_exception_line(text, reason):
    """The reason `harness status` shows is `ExceptionType: message` of the recipe's exception, on one line, not the
    last line of Ray's wrapper (a message's second line, a Ray Train snippet, an earlier failure's text)."""
    from harness.run.progress import exception_line

    assert exception_line(text) == reason


class _Tracker:
    def __init__(self):
        self.tags, self.closed = {}, {}

    def set_tags(self, run_id, tags):
        self.tags.update(tags)

    def finish_trial(self, tr, status):
        self.closed[tr.run_id] = status


@pytest.mark.parametrize(("failure_txt", "error_file", "reason"), [
    (None, ONE_WORKER_TWO_LINES, "ValueError: boom 42 second line"),  # no failure.txt: a rank > 0 raised, say
    (None, RAY_TRAIN, "ValueError: boom 42 on rank 1"),
    ("ValueError: boom 42\nsecond line", ONE_WORKER_TWO_LINES, "ValueError: boom 42 second line"),
])
def test_a_failed_trial_records_its_exception_line(tmp_path, failure_txt, error_file, reason):
    """The driver's callback closes a trial whose recipe raised ValueError("boom 42") FAILED with the exception's
    line as its harness.failure_reason, which `harness status` shows: from the recipe's failure.txt when rank 0
    wrote one (made one line), else from Tune's error file."""
    from harness.run.progress import StudyCallback

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if failure_txt is not None:
        (run_dir / "failure.txt").write_text(failure_txt)
    err = tmp_path / "error.txt"
    err.write_text(error_file)
    trial = SimpleNamespace(config={"cfg": {"trial_hash": "h", "paths": {"run_dir": str(run_dir)}}},
                            error_file=str(err), get_error=lambda: None)
    tr = SimpleNamespace(status="RUNNING", run_id="r1", ensure=lambda tracker: None)
    ended = []
    progress = SimpleNamespace(end=lambda h, ok: ended.append((h, ok)), interrupt=lambda h, why: None)
    tracker = _Tracker()
    StudyCallback(tracker, {"h": tr}, progress).on_trial_error(0, [], trial)
    assert tracker.closed == {"r1": "FAILED"} and ended == [("h", False)]
    assert tracker.tags == {"harness.failure_reason": reason}


# ------------------------------------------------------------------------------------- recipe config messages
def _recipes():
    from harness.recipes import get_recipe, recipe_names

    return [get_recipe(n) for n in recipe_names()]


def test_every_recipe_names_the_key_and_value_it_refuses():
    """`--set train.steps=-5` said "steps, batch_size, grad_accum and log_every must be >= 1" without saying which.
    Every recipe's train config now names each refused key with its value, whatever number key is wrong."""
    import dataclasses
    import typing

    names = {r.name for r in _recipes()}
    assert {"edm", "vdiff", "gan", "ddpm", "score", "classify", "ddpm_image", "null"} <= names
    refused = 0
    for recipe in _recipes():
        cls = recipe.train_config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] not in (int, float, int | None, float | None):
                continue
            for bad in (-5, 1.5) if float in typing.get_args(hints[f.name]) or hints[f.name] is float else (-5,):
                try:
                    cls(**{f.name: bad})
                except ValueError as e:
                    msg = str(e)
                    refused += 1
                    assert re.search(rf"\b{f.name}\b", msg) and repr(bad) in msg, (recipe.name, f.name, msg)
    assert refused >= 30, refused
    for recipe in _recipes():
        count = "steps" if "steps" in {f.name for f in dataclasses.fields(recipe.train_config)} else "epochs"
        with pytest.raises(ValueError) as e:
            recipe.train_config(**{count: -5, "log_every" if recipe.name != "null" else "report_every": 0})
        key = "log_every" if recipe.name != "null" else "report_every"
        assert str(e.value) == f"train.{count} must be >= 1, got -5; train.{key} must be >= 1, got 0", recipe.name


def test_set_train_steps_names_the_key_on_the_command_line(tmp_path):
    res = CliRunner().invoke(main, ["study", str(_study(tmp_path)), "--profile", "smoke", "--set", "train.steps=-5",
                                    "--dry-run", "--results-dir", str(tmp_path / "results")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "train.steps must be >= 1, got -5" in res.output, res.output


def test_check_bounds_reads_its_bounds():
    from harness.recipes.base import check_bounds

    cfg = SimpleNamespace(a=0, b=1.0, c=None, d=0.0)
    check_bounds(cfg, {"a": ">= 0", "b": "in (0, 1]", "c": "> 0", "d": "in [0, 1)"})
    with pytest.raises(ValueError, match=r"^train.a must be > 0, got 0; train.b must be in \(0, 1\), got 1.0$"):
        check_bounds(cfg, {"a": "> 0", "b": "in (0, 1)"})
    with pytest.raises(ValueError, match=r"train.d must be in \(0, 1\], got 0.0"):
        check_bounds(cfg, {"d": "in (0, 1]"})


# ------------------------------------------------------------------------------------------------ zoo list
def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_zoo_list_of_a_parametric_pattern_says_they_build_and_the_command_runs():
    """`harness zoo list 'D3*'` said no name matches although D3S3I builds: it says how parametric names look and
    names a command that shows one, and that command runs."""
    res = _cli("zoo", "list", "D3*")
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert "D<n>S<k>I" in res.output and "build on demand" in res.output, res.output
    commands = suggested_commands(res.output)
    assert "harness zoo show D3S3I" in commands, res.output
    for command in commands:
        parse_command(command)
        shown = _cli(*shlex.split(command)[1:])
        assert shown.exit_code == 0, (command, shown.output)
    assert "D3S3I (block_sharing)" in _cli("zoo", "show", "D3S3I").output


def test_zoo_list_footer_names_parametric_names_and_lists_one_by_name():
    res = _cli("zoo", "list", "D2*")
    assert res.exit_code == 0, res.output
    footer = res.output.strip().splitlines()[-1]
    assert "build on demand" in footer and "D<n>S<k>I" in footer, footer
    (command,) = suggested_commands(footer)
    assert _cli(*shlex.split(command)[1:]).exit_code == 0, command
    one = _cli("zoo", "list", "D3S3I")  # a parametric name given as the pattern is listed
    assert one.exit_code == 0 and "\nD3S3I " in one.output, one.output
    typo = _cli("zoo", "list", "D3S3l")
    assert typo.exit_code == 2 and "closest names: D3S3I" in typo.output, typo.output
