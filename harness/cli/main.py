"""The `harness` command line (click).

Errors a user can cause are printed as one sentence with exit code 2 and no traceback (docs/conventions.md, "Errors
are one sentence").
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click
import yaml

from harness.cli.fid_weights import fid_weights
from harness.cli.ui import ui
from harness.errors import YAML_VALUE_ERRORS, UserError, unreadable_value

USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)


def _user_errors() -> tuple[type[BaseException], ...]:
    # zoo.ZooError lives in the zoo package (it does not depend on harness); imported lazily so `harness --help`
    # does not import torch.
    from zoo import ZooError

    return USER_ERRORS + (ZooError,)


class HarnessGroup(click.Group):
    """A click group that turns user errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _user_errors() as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


def parse_sets(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are parsed as YAML scalars (so 128 is an int, true a bool, 1e-4 a float)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except YAML_VALUE_ERRORS as e:  # e.g. a 100,000-digit number
            raise UserError(f"--set {key[:80]!r}: cannot read its value ({unreadable_value(e)})") from None
        if isinstance(value, str) and _looks_like_float(value):
            value = float(value)  # YAML 1.1 reads "1e-4" as a string
        out[key] = value
    return out


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip().lower() not in {"nan", "inf", "-inf", "+inf", "infinity", "-infinity"}


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="harness")
def main() -> None:
    """Rerun published ablation studies of small vision models end to end: train, evaluate, track, tabulate."""


# ----------------------------------------------------------------------------------------------------------- zoo
@main.group(cls=HarnessGroup)
def zoo() -> None:
    """The model zoo: registered architecture variants."""


@zoo.command("list")
@click.argument("pattern", required=False)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override applied to every name.")
def zoo_list(pattern: str | None, sets: tuple[str, ...]) -> None:
    """List registered names (optionally matching a glob PATTERN) with parameters and GFLOPs per sample."""
    import zoo as zoo_pkg
    from harness.console import format_table

    overrides = parse_sets(sets)
    names = zoo_pkg.names(pattern)
    if not names and pattern and not any(ch in pattern for ch in "*?["):
        names = [zoo_pkg.entry(pattern).name]  # a parametric name (D3S3I) is listed; a mistyped one is told so
    rows = [zoo_pkg.describe(n, **overrides) for n in names]
    if not rows:
        raise UserError(f"no registered zoo name matches {pattern!r}; {_parametric_note(pattern)}, and "
                        "`harness zoo list` shows the registered ones")
    cols = ["name", "family", "params", "applications", "gflops"]
    for r in rows:
        r["gflops"] = round(r["gflops"], 3)
    click.echo(format_table(rows, cols))
    note = _parametric_note(pattern)
    click.echo(f"\n{note[0].upper()}{note[1:]}.")


def _parametric_note(pattern: str | None) -> str:
    """The names the zoo builds beyond the registered ones, with a command that shows one (matching ``pattern`` if
    one can): `zoo list` lists only registered names."""
    import zoo as zoo_pkg

    example = zoo_pkg.parametric_example(pattern)
    shown = f", e.g. `harness zoo show {example}`" if example else ""
    return f"parametric names build on demand too ({zoo_pkg.parametric_forms()}){shown}"


@zoo.command("show")
@click.argument("name")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override, e.g. --set width=128.")
def zoo_show(name: str, sets: tuple[str, ...]) -> None:
    """Show the resolved config of NAME and a module summary."""
    import torch

    import zoo as zoo_pkg
    from harness.console import format_table

    overrides = parse_sets(sets)
    cfg = zoo_pkg.config(name, **overrides)
    entry = zoo_pkg.entry(name)
    with torch.device("meta"):
        model = zoo_pkg.build_from_config(entry.family, cfg)
    resolved = dataclasses.asdict(cfg)
    for attr in ("d_ff",):  # derived fields shown with the config
        if hasattr(cfg, attr):
            resolved[attr] = getattr(cfg, attr)
    click.echo(f"# {name} ({entry.family})")
    if entry.doc:
        click.echo(f"# {entry.doc.splitlines()[0]}")
    click.echo(yaml.safe_dump({"config": resolved}, sort_keys=False).rstrip())
    rows = [
        {"module": n, "type": type(m).__name__, "params": sum(p.numel() for p in m.parameters())}
        for n, m in model.named_children()
    ]
    click.echo("")
    click.echo(format_table(rows, ["module", "type", "params"]))
    click.echo("")
    click.echo(f"trainable parameters: {zoo_pkg.param_count(model):,}")
    click.echo(f"forward GFLOPs per sample: {zoo_pkg.flops(name, **overrides) / 1e9:.3f}")
    if entry.recorded_params is not None and not overrides:
        click.echo(f"paper's count: {entry.recorded_params:,}")
    for key, value in getattr(model, "summary_fields", lambda: {})().items():
        click.echo(f"{key}: {value}")


# --------------------------------------------------------------------------------------------------------- study
_study_file = click.argument("study_file", type=click.Path(dir_okay=False))
_profile = click.option("--profile", "-p", default=None,
                        help="Scale profile declared in the study (e.g. paper, cpu, smoke).")
_sets = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override a study key, e.g. --set train.steps=100 (precedence: YAML < profile < --set).")
_tracking = click.option("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: sqlite store in <results-dir>/mlflow.db).")
_results = click.option("--results-dir", default=None, type=click.Path(file_okay=False),
                        help="Where tables, plots, runs and the default MLflow store go (default: ./results beside "
                             "studies/).")


@main.command()
@_study_file
@_profile
@_sets
@click.option("--dry-run", is_flag=True,
              help="Print the trial table (variant, axes, seed, params, steps, hash, done?) and exit.")
@click.option("--address", default=None, help="Ray cluster address (e.g. auto); default: a local Ray instance.")
@_tracking
@_results
@click.option("--retry-failed", is_flag=True, help="Rerun trials that FAILED before (default: keep them failed).")
def study(study_file, profile, sets, dry_run, address, tracking_uri, results_dir, retry_failed) -> None:
    """Run (or resume) the study in STUDY_FILE: train every trial, evaluate, track in MLflow, write the tables.

    Exits 1 when a trial failed (the others still ran; `harness status` lists the reasons)."""
    from harness.run.driver import run_study
    from harness.run.session import StudySession

    session = StudySession(study_file, profile, parse_sets(sets), tracking_uri, results_dir)
    plan = run_study(session, dry_run=dry_run, address=address, retry_failed=retry_failed, echo=click.echo)
    failed = sum(v == "failed" for v in plan.state.values())
    if failed and not dry_run:
        click.echo(failed_trials_hint(failed, study_file, profile, sets, tracking_uri, results_dir, address), err=True)
        sys.exit(1)


def failed_trials_hint(failed: int, study_file: str, profile: str | None, sets: tuple[str, ...],
                       tracking_uri: str | None, results_dir: str | None, address: str | None = None) -> str:
    """What `harness study` prints after failed trials: the status and retry commands for the same trials (the
    profile and --set values pick the trials, the store and results folder where they are), runnable as printed."""
    from harness.errors import study_command

    where = (study_file, profile, sets, tracking_uri, results_dir)
    retry = study_command("study", *where, *(["--address", address] if address else []), "--retry-failed")
    return f"{failed} trial(s) failed: `{study_command('status', *where)}` lists the reasons; `{retry}` reruns them"


@main.command()
@_study_file
@_profile
@_sets
@_tracking
@_results
def table(study_file, profile, sets, tracking_uri, results_dir) -> None:
    """Regenerate the study's tables and plots from MLflow into results/<study>/<profile>/."""
    from harness.run.commands import write_tables
    from harness.run.session import StudySession

    write_tables(StudySession(study_file, profile, parse_sets(sets), tracking_uri, results_dir), echo=click.echo)


@main.command()
@_study_file
@click.option("--by", required=True, help="The key whose values are the arms: variant, dataset or a config key "
              "(train.lr, or just lr when unique).")
@click.option("--metric", default=None, help="Metric to compare (default: the study's table metric, e.g. fid).")
@click.option("--baseline", default=None, help="The arm the others are compared with (default: the study's "
              "table.baseline variant, else the first arm).")
@click.option("--substudy", default=None, help="Only this substudy's trials (default: the substudies that vary the "
              "key).")
@click.option("--margin", default=None, type=float, help="Equivalence margin in the metric's units: an arm within "
              "±MARGIN of the baseline by two one-sided tests is called equivalent (a claim that A matches B).")
@_profile
@_sets
@_tracking
@_results
def compare(study_file, by, metric, baseline, substudy, margin, profile, sets, tracking_uri, results_dir) -> None:
    """Arms of STUDY_FILE side by side (mean ± std over seeds), each paired with the baseline arm: mean difference,
    95% interval and paired t-test; writes results/<study>/<profile>/compare_<key>.{md,csv}."""
    from harness.run.commands import compare_study
    from harness.run.session import StudySession

    session = StudySession(study_file, profile, parse_sets(sets), tracking_uri, results_dir)
    compare_study(session, by, metric, baseline, substudy, echo=click.echo, margin=margin)


@main.command()
@_study_file
@_profile
@_sets
@click.option("--effect", default=None, type=float, help="The difference to detect, in the table metric's units "
              "(default: the smallest difference the paper reports between the study's arms and their baseline, "
              "else the pilot's).")
@click.option("--power", "target", default=0.8, show_default=True, type=click.FloatRange(0.5, 0.999),
              help="Target power of the two-sided paired t-test at 5%.")
@_tracking
@_results
def plan(study_file, profile, sets, effect, target, tracking_uri, results_dir) -> None:
    """Seeds (and samples n) STUDY_FILE needs to decide each comparison, from the finished trials in its store, and
    the estimated cost here and in GPU-hours at the profile's scale."""
    from harness.run.planner import plan_study
    from harness.run.session import StudySession

    if effect is not None and not effect > 0:
        raise click.BadParameter("must be > 0", param_hint="--effect")
    plan_study(StudySession(study_file, profile, parse_sets(sets), tracking_uri, results_dir), effect, target,
               echo=click.echo)


@main.command()
@_study_file
@_profile
@_sets
@_tracking
@_results
def status(study_file, profile, sets, tracking_uri, results_dir) -> None:
    """Show every trial of STUDY_FILE as done, running, interrupted, failed (with its reason) or missing."""
    from harness.run.commands import study_status
    from harness.run.session import StudySession

    study_status(StudySession(study_file, profile, parse_sets(sets), tracking_uri, results_dir), echo=click.echo)


@main.command()
@_study_file
@_profile
@_sets
@click.option("--trial", default=None, help="Hash (or its prefix) of the trial to sample; default: every trial.")
@click.option("--n", "n", default=64, show_default=True, help="Samples per grid (classes balanced).")
@click.option("--seed", default=0, show_default=True)
@click.option("--steps", default=None, type=int, help="Sampler steps (default: the study's eval.sampler_steps).")
@click.option("--w", default=None, type=float, help="Guidance weight (default: the trial's).")
@click.option("--sampler", default=None, help="Sampler, e.g. ancestral or ddim (default: the study's).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: results/<study>/<profile>/samples/<hash>/).")
@_results
def sample(study_file, profile, sets, trial, n, seed, steps, w, sampler, out, results_dir) -> None:
    """Write sample and interpolation grids from finished trials' checkpoints (no training)."""
    from harness.cli.sample import sample_study
    from harness.run.session import StudySession

    if n < 1:
        raise click.BadParameter("must be >= 1", param_hint="--n")
    session = StudySession(study_file, profile, parse_sets(sets), results_dir=results_dir)
    sample_study(session, trial, n, seed, out, steps, w, sampler, echo=click.echo)


# --------------------------------------------------------------------------------------------------------- bench
@main.group(cls=HarnessGroup)
def bench() -> None:
    """Benchmarks that print figures and write results/bench/<name>.md."""


@bench.command("zoo")
@click.option("--variants", default="D8,D1S8,D2S4I", show_default=True, help="Comma-separated zoo names.")
@click.option("--widths", default="512,128", show_default=True, help="Comma-separated model widths.")
@click.option("--batches", default="8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--steps", default=6, show_default=True, help="Timed steps per measurement (after warm-up).")
@click.option("--threads", default=None, type=int, help="torch threads (default: all cores).")
@click.option("--out", default="results/bench/zoo.md", show_default=True, type=click.Path(dir_okay=False))
def bench_zoo(variants: str, widths: str, batches: str, steps: int, threads: int | None, out: str) -> None:
    """Training-step and forward throughput per variant, width and batch, against the measured matmul GFLOP/s."""
    from harness.bench.inprocess import zoo_benchmark

    zoo_benchmark(
        variants=[v.strip() for v in variants.split(",") if v.strip()],
        widths=[int(w) for w in widths.split(",")],
        batches=[int(b) for b in batches.split(",")],
        steps=steps,
        threads=threads,
        out=out,
        echo=click.echo,
    )


@bench.command("eval")
@_study_file
@_profile
@_sets
@click.option("--out", default="results/bench/eval.md", show_default=True, type=click.Path(dir_okay=False))
def bench_eval(study_file, profile, sets, out: str) -> None:
    """FID/KID evaluation time of STUDY_FILE's first trial: sampling, sample features and reference features, for a
    first and a second (reference cached) evaluation."""
    from harness.bench.inprocess import eval_benchmark

    eval_benchmark(study_file, profile, parse_sets(sets), out, echo=click.echo)


@bench.command("overhead")
@click.option("--workers", default="1,2", show_default=True, help="Comma-separated worker counts.")
@click.option("--trials", default=3, show_default=True, help="Null trials per study (run one after another).")
@click.option("--seconds", default=30.0, show_default=True, help="Stand-in compute per trial.")
@click.option("--step-ms", default=50.0, show_default=True, help="Stand-in compute per step.")
@click.option("--out", default="results/bench/overhead.md", show_default=True, type=click.Path(dir_okay=False))
def bench_overhead(workers: str, trials: int, seconds: float, step_ms: float, out: str) -> None:
    """What the harness costs around a null model: trial start to first step, last step to finished, per report."""
    from harness.bench.runs import overhead_benchmark

    overhead_benchmark([int(w) for w in workers.split(",")], trials, seconds, step_ms / 1000, out, echo=click.echo)


@bench.command("data")
@click.option("--studies", default="studies", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the study files the cases use.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="A folder of real data: adds a CIFAR-10 case when it holds cifar10.npz or cifar-10-batches-py.")
@click.option("--windows", default=4, show_default=True, help="Reporting windows measured after the warm-up one.")
@click.option("--per-window", default=20, show_default=True, help="Steps (epochs for epoch-based recipes) per window.")
@click.option("--out", default="results/bench/data.md", show_default=True, type=click.Path(dir_okay=False))
def bench_data(studies: str, data_root: str | None, windows: int, per_window: int, out: str) -> None:
    """Share of training-step time spent producing the batch, for each dataset kind."""
    from harness.bench.runs import data_benchmark

    data_benchmark(studies, data_root, windows, per_window, out, echo=click.echo)


@bench.command("keys")
@click.option("--studies", default="studies", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the study files the cases use.")
@click.option("--windows", default=3, show_default=True, help="Reporting windows measured after the warm-up one.")
@click.option("--per-window", default=20, show_default=True, help="Steps per window.")
@click.option("--out", default="results/bench/keys.md", show_default=True, type=click.Path(dir_okay=False))
def bench_keys(studies: str, windows: int, per_window: int, out: str) -> None:
    """Effect of the speed keys (fused optimizer, channels_last, compile) on training throughput."""
    from harness.bench.runs import keys_benchmark

    keys_benchmark(studies, windows, per_window, out, echo=click.echo)


main.add_command(fid_weights)  # `harness fid-weights`, kept in harness/cli/fid_weights.py
main.add_command(ui)  # `harness ui`, kept in harness/cli/ui.py

if __name__ == "__main__":
    main()
