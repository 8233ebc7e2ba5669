"""Benchmarks that run real trials: ``harness bench overhead`` (the whole stack around a null model), ``harness bench
data`` (the share of a training step spent producing its batch, per dataset kind) and ``harness bench keys`` (the
effect of the speed keys on a study's training throughput). Scripts that print figures, never timed tests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.bench.inprocess import _write_report, inprocess_context
from harness.console import format_table
from harness.errors import one_line

Echo = Callable[[str], None]
TWO_MINUTES = 120.0
FIXED_TARGET = 0.03  # issue 9: fixed cost per trial <= 3% of a 2-minute trial
REPORT_TARGET = 0.01  # and one report per second <= 1% of step time


# ------------------------------------------------------------------------------------------------------- overhead
def calibrate_work(step_seconds: float, threads: int = 1) -> int:
    """How many of the null recipe's 256x256 matmuls take ``step_seconds`` on ``threads`` threads here."""
    import torch

    from harness.recipes.null_config import WORK_SIZE

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.linalg.qr(torch.randn(WORK_SIZE, WORK_SIZE))[0]
        b = a
        for _ in range(20):
            b = a @ b
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(50):
                b = a @ b
            best = min(best, (time.perf_counter() - t) / 50)
    finally:
        torch.set_num_threads(old)
    return max(1, round(step_seconds / best))


def null_study(name: str, workers: int, trials: int, steps: int, work: int, report_every: int,
               phase_steps: int = 0) -> dict[str, Any]:
    """A study of ``trials`` null trials run one after another with ``workers`` workers on this machine's CPUs (one
    each; a little less when the Train driver needs its share)."""
    import os

    from harness.run.preflight import TRAIN_DRIVER_CPU

    cores = os.cpu_count() or 1
    cpus = 1.0 if workers == 1 else min(1.0, round((cores - TRAIN_DRIVER_CPU) / workers - 0.005, 3))
    return {
        "name": name, "recipe": "null", "datasets": ["synthetic"], "variants": ["null"],
        "seeds": list(range(trials)),
        "train": {"steps": steps, "work": work, "report_every": report_every, "phase_steps": phase_steps},
        "eval": {"metrics": []},
        "resources": {"workers": workers, "cpus_per_worker": cpus, "max_concurrent_trials": 1},
        "table": {"kind": "settings", "metric": "loss"},
    }


def run_temp_study(study: dict[str, Any], tmp: Path, echo: Echo | None = None) -> tuple[list[Any], float]:
    """Run ``study`` (a dict) with its own results dir and SQLite store under ``tmp``; returns its finished MLflow
    trial runs and the wall time of ``run_study``."""
    import ray
    import yaml

    from harness.errors import UserError
    from harness.run.driver import run_study
    from harness.run.session import StudySession
    from harness.tracking import Tracker

    path = tmp / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    started_ray = not ray.is_initialized()
    t = time.time()
    try:
        session = StudySession(path, tracking_uri=uri, results_dir=tmp / "results")
        plan = run_study(session, echo=echo or (lambda _s: None))
    finally:
        if started_ray:  # the local Ray this study started goes with it (each study pays Ray's start, as in use)
            ray.shutdown()
    wall = time.time() - t
    failed = [h for h, st in plan.state.items() if st != "done"]
    if failed:
        raise UserError(f"benchmark study {study['name']}: {len(failed)} trial(s) did not finish")
    runs = list(Tracker(uri, study["name"]).finished_runs(study["name"]).values())
    return runs, wall


def _overhead_row(w: int, runs: list[Any], wall: float) -> dict[str, Any]:
    """One worker count's medians over its null trials (MLflow run times against the trial's own clock)."""
    starts, ends, quiet, loud, blocked = [], [], [], [], []
    to_process, to_recipe, to_step = [], [], []  # where the start goes
    for r in runs:
        m = r.data.metrics
        starts.append(m["first_step_unix"] - r.info.start_time / 1000)
        to_process.append(m["process_start_unix"] - r.info.start_time / 1000)
        to_recipe.append(m["recipe_start_unix"] - m["process_start_unix"])
        to_step.append(m["first_step_unix"] - m["recipe_start_unix"])
        ends.append(r.info.end_time / 1000 - m["last_step_unix"])
        quiet.append(m["quiet_step_seconds"])
        loud.append(m["reporting_step_seconds"])
        blocked.append(1000 * m["report_seconds"] / max(1, m["reports"] - 1))
    med = statistics.median
    cost = [lo / q - 1 for lo, q in zip(loud, quiet)]
    row = {
        "workers": w, "trials": len(runs), "study_wall_s": wall,
        "start_to_first_step_s": med(starts),
        "start_split_s": f"{med(to_process):.1f} + {med(to_recipe):.1f} + {med(to_step):.1f}",
        "last_step_to_finished_s": med(ends),
        "fixed_of_2min": (med(starts) + med(ends)) / TWO_MINUTES,
        "quiet_step_ms": 1000 * med(quiet), "reporting_step_ms": 1000 * med(loud),
        "report_cost_of_step": med(cost), "cost_range": f"{min(cost):+.2%} .. {max(cost):+.2%}",
        "ms_blocked_per_report": med(blocked),
    }
    return row


def overhead_benchmark(workers: list[int], trials: int, seconds: float, step_seconds: float, out: str | Path,
                       echo: Echo = print, phase_seconds: float = 5.0) -> list[dict[str, Any]]:
    """For each worker count, a study of null trials whose steps alternate between phases of ``phase_seconds``
    with one report per second and phases without reports. Per trial: driver start (MLflow run start) to first
    step, last step to driver finish (run end), the step time in each kind of phase, and the time spent inside
    ``ctx.report``."""
    work = calibrate_work(step_seconds)
    steps = max(4, round(seconds / step_seconds))
    per_second = max(1, round(1 / step_seconds))
    phase = max(1, min(steps // 2, round(phase_seconds / step_seconds)))
    echo(f"null trials: {steps} steps of {work} 256x256 matmuls (~{step_seconds * 1000:.0f} ms each on one thread), "
         f"phases of {phase} steps alternating one report per second and none; {trials} trials per study")
    rows = []
    for w in workers:
        with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
            study = null_study(f"bench_overhead_w{w}", w, trials, steps, work, per_second, phase)
            runs, wall = run_temp_study(study, Path(tmp))
        row = _overhead_row(w, runs, wall)
        row["targets_met"] = ", ".join(
            f"{name} {'yes' if ok else 'no'}" for name, ok in
            (("fixed", row["fixed_of_2min"] <= FIXED_TARGET), ("report", row["report_cost_of_step"] <= REPORT_TARGET)))
        rows.append(row)
        echo(f"{w} worker(s): start -> first step {row['start_to_first_step_s']:.1f} s, last step -> finished "
             f"{row['last_step_to_finished_s']:.1f} s ({row['fixed_of_2min']:.1%} of a 2-minute trial); one report "
             f"per second costs {row['report_cost_of_step']:+.2%} of step time (trials {row['cost_range']}), "
             f"{row['ms_blocked_per_report']:.2f} ms blocked in each ctx.report")
        if row["fixed_of_2min"] > FIXED_TARGET:
            echo(f"  fixed cost above {FIXED_TARGET:.0%}: the start splits into {row['start_split_s']} s (Tune's "
                 "trial start -> recipe process exists -> recipe entered -> first step)")
    cols = ["workers", "trials", "study_wall_s", "start_to_first_step_s", "start_split_s", "last_step_to_finished_s",
            "fixed_of_2min",
            "quiet_step_ms", "reporting_step_ms", "report_cost_of_step", "cost_range", "ms_blocked_per_report",
            "targets_met"]
    for r in rows:
        for k in cols:
            if isinstance(r.get(k), float):
                r[k] = round(r[k], 4 if k in ("fixed_of_2min", "report_cost_of_step") else 2)
    table = format_table(rows, cols, markdown=True)
    echo("")
    echo(table)
    _write_report(out, "Harness overhead benchmark", [
        "Produced by `harness bench overhead`: studies of null trials (the zoo's `null` model, one parameter, plus a",
        f"fixed {work} 256x256 fp32 matmuls per step as stand-in compute, {steps} steps) run by `harness study`'s own",
        "code path: Ray Tune (one worker: the recipe in the Tune trial process; several: a Ray Train TorchTrainer",
        "with gloo), Accelerate, MLflow (SQLite). Medians over the trials of each study; times from the MLflow runs",
        "(driver side: run start = Tune starts the trial, run end = Tune reports it complete) and the trial's clock.",
        "",
        "- `start_split_s`: the start as Tune's trial start -> the (rank-0) process that runs the recipe exists ->",
        "  the recipe is entered (imports, Ray Train's worker setup, process group) -> its first step (Accelerate,",
        "  model, checkpoint lookup; torch's first optimizer imports torch._dynamo, about 1.4 s). A negative first",
        "  part: Ray had started that process before the trial (a pooled worker).",
        "- `start_to_first_step_s`, `last_step_to_finished_s`: a trial's fixed cost; `fixed_of_2min` is their sum",
        "  as a share of a 2-minute trial (target <= 3%). `study_wall_s` also holds Ray's start, the data check and",
        "  the tables written at the end, once per study.",
        f"- Each trial alternates phases of {phase} steps with one report per second and without reports;",
        "  `report_cost_of_step` is how much longer a step took in the reporting phases (target <= 1%), with its",
        "  range over the trials; `ms_blocked_per_report` is the training thread's time inside `ctx.report`."],
        table, {"stand-in step": f"{work} matmuls 256^3, ~{step_seconds * 1000:.0f} ms"}, echo=echo)
    return rows


# -------------------------------------------------------------------------------------- in-process training windows
class _Enough(Exception):
    """Raised from the report callback once the benchmark has the windows it asked for."""


def training_windows(path: str | Path, profile: str | None, sets: dict[str, Any], windows: int, per_window: int,
                     tmp: Path) -> tuple[Any, list[dict[str, Any]]]:
    """Run a study's first trial in this process (the recipe's own training loop, no Ray) until it has reported
    ``windows`` + 1 times, ``per_window`` steps (or epochs) apart; returns the trial and the metrics of every report
    after the first (the first window holds the warm-up, and compilation with ``compile``). Evaluation never runs:
    ``eval.every`` and the step/epoch budget lie beyond the last window."""
    from accelerate.state import AcceleratorState

    from harness.recipes import get_recipe
    from harness.study.spec import expand_trials, load_study

    horizon = per_window * (windows + 3)
    loaded = load_study(path, profile, sets)
    trial = expand_trials(loaded)[0]
    payload = trial.payload()
    train = payload["train"]
    budget = "epochs" if "epochs" in train else "steps"
    train[budget] = max(int(train[budget]), horizon)
    train["log_every"] = per_window
    if "every" in payload["eval"]:
        payload["eval"]["every"] = horizon * 10
    reports: list[dict[str, Any]] = []

    def collect(p: dict[str, Any]) -> None:
        if p.get("metrics"):
            reports.append(dict(p["metrics"]))
        if len(reports) > windows:
            raise _Enough

    # Accelerate's state is per process (a trial process has one trial); each benchmark run starts from none, so
    # one run's compile or mixed-precision setting does not carry into the next
    AcceleratorState._reset_state(reset_partial_state=True)
    ctx = inprocess_context(payload, tmp, loaded.data_root(), collect, loaded.study.resources.cpus_per_worker)
    try:
        get_recipe(payload["recipe"]).load_trial_fn()(payload, ctx)
    except _Enough:
        pass
    return trial, reports[1:]


def _throughput(m: dict[str, Any]) -> tuple[str, float]:
    for key in ("images_per_s", "points_per_s"):
        if key in m:
            return key, float(m[key])
    if "train_ms_per_epoch" in m:
        return "epochs_per_s", 1000.0 / float(m["train_ms_per_epoch"])
    return "", float("nan")


# ------------------------------------------------------------------------------------------------------------ data
def _made_npz(path: Path, n: int, size: int, channels: int, classes: int = 10) -> Path:
    """An .npz in the harness layout (uint8 x N x H x W [x C], int y, split) of seeded noise images."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (n, size, size, channels) if channels > 1 else (n, size, size)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(n) % classes
    split = np.where(np.arange(n) < n * 9 // 10, "train", "test")
    np.savez(path, x=x, y=y, split=split)
    return path


def data_cases(studies: Path, tmp: Path, data_root: str | Path | None) -> list[tuple[str, str, Path, str, dict]]:
    """(dataset kind, what trains on it, study file, profile, --set overrides): every way data reaches a recipe,
    each with the model and batch its study trains at CPU scale."""
    rgb = _made_npz(tmp / "rgb32.npz", 2048, 32, 3)
    grey = _made_npz(tmp / "grey28.npz", 1024, 28, 1)
    bs = studies / "block_sharing.yaml"
    cases = [
        ("synthetic (generated in memory)", "EDM, D8 w128, Karras augmentation", bs, "cpu",
         {"datasets": ["synthetic"], "data.options": {"n": 2048, "size": 16, "channels": 3, "num_classes": 10},
          "data.size": None}),
        ("digits (scikit-learn package)", "EDM, D8 w128, Karras augmentation", bs, "cpu", {}),
        ("npz file, 32x32 RGB", "EDM, D8 w128 patch 4, Karras augmentation", bs, "cpu",
         {"datasets": ["npz"], "data.options": {"path": str(rgb)}, "data.size": None, "model.patch_size": 4}),
        ("npz file, 32x32 RGB", "classifier, RandAugment + crop + flip in batch",
         studies / "classical_constraints.yaml", "cpu",
         {"datasets": ["npz"], "data.options": {"path": str(rgb)}, "train.lr": 1e-3}),
        ("npz file, 28x28 grey", "NCSN score model (MNIST compression)", studies / "mnist_compression.yaml", "cpu",
         {"datasets": ["npz"], "data.options": {"path": str(grey)}, "data.limit": 320}),
        ("points (helix, generated)", "DDPM on 3-D points, MLP 64-128-128", studies / "toy_ddpm.yaml", "paper",
         {"datasets": ["helix"]}),
    ]
    if data_root and (Path(data_root) / "cifar10.npz").is_file():  # the shared data's real CIFAR-10 images
        cases.insert(3, ("npz file, CIFAR-10 (real images)", "EDM, D8 w128 patch 4, Karras augmentation", bs, "cpu",
                         {"datasets": ["npz"], "data.options": {"path": str(Path(data_root) / "cifar10.npz")},
                          "data.size": None, "model.patch_size": 4}))
    if data_root and (Path(data_root) / "cifar-10-batches-py").is_dir():
        cases.insert(3, ("cifar10 (torchvision files)", "EDM, D8 w128 patch 4, Karras augmentation", bs, "cpu",
                         {"datasets": ["cifar10"], "data.size": None, "model.patch_size": 4,
                          "data.root": str(data_root)}))
    return cases


def data_benchmark(studies: str | Path, data_root: str | Path | None, windows: int, per_window: int,
                   out: str | Path, echo: Echo = print) -> list[dict[str, Any]]:
    """Per dataset kind: the share of training-step time spent producing the batch (``data_wait_share``, measured
    by the recipe around its batch code: fetch, conversion, augmentation), over ``windows`` reporting windows."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for kind, trains, study, profile, sets in data_cases(Path(studies), tmp, data_root):
            with tempfile.TemporaryDirectory(dir=tmp) as run_tmp:
                trial, reports = training_windows(study, profile, sets, windows, per_window, Path(run_tmp))
            shares = [float(m["data_wait_share"]) for m in reports if "data_wait_share" in m]
            key, _ = _throughput(reports[0]) if reports else ("", 0.0)
            rate = statistics.median(_throughput(m)[1] for m in reports) if reports else float("nan")
            row = {"dataset kind": kind, "trains": trains, "study": f"{Path(study).stem} [{profile}]",
                   "throughput": f"{rate:.1f} {key.replace('_per_s', '/s')}",
                   "data_wait_share": statistics.median(shares) if shares else float("nan"),
                   "max_window_share": max(shares) if shares else float("nan")}
            rows.append(row)
            echo(f"{kind:32s} {trains:48s} data wait {row['data_wait_share']:.2%} of step time "
                 f"(worst window {row['max_window_share']:.2%}), {row['throughput']}")
    cols = ["dataset kind", "trains", "study", "throughput", "data_wait_share", "max_window_share"]
    for r in rows:
        r["data_wait_share"] = round(r["data_wait_share"], 4)
        r["max_window_share"] = round(r["max_window_share"], 4)
    table = format_table(rows, cols, markdown=True)
    echo("")
    echo(table)
    _write_report(out, "Data-wait benchmark", [
        "Produced by `harness bench data`: each case runs a study's first trial in this process (the recipe's own",
        f"training loop, no Ray) for {windows} reporting windows of {per_window} steps (epochs for the epoch-based",
        "recipes) after a warm-up window. `data_wait_share` is the median over windows of the time inside the",
        "recipe's batch code (fetch from the in-memory uint8 tensor, conversion, augmentation in batch; the",
        "`ctx.data_wait()` block) over the window's wall time; target <= 5%. Made .npz files are seeded noise",
        "images in the harness layout; their content does not change the cost of a batch."], table, echo=echo)
    return rows


# ------------------------------------------------------------------------------------------------------------ keys
KEY_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("default (fused optimizer)", {}),
    ("fused_optimizer: false", {"train.fused_optimizer": False}),
    ("channels_last: true", {"train.channels_last": True}),
    ("compile: true", {"train.compile": True}),
]


def keys_cases(studies: Path, tmp: Path) -> list[tuple[str, Path, str, dict[str, Any]]]:
    """(model, study, profile, overrides): a transformer, a conv classifier and a conv U-Net at their CPU profiles."""
    rgb = _made_npz(tmp / "rgb32.npz", 2048, 32, 3)
    npz = {"datasets": ["npz"], "data.options": {"path": str(rgb)}}
    return [
        ("block-sharing D8 w128 (transformer)", studies / "block_sharing.yaml", "cpu", {}),
        ("classifier (conv, <100k params)", studies / "classical_constraints.yaml", "cpu", {**npz, "train.lr": 1e-3}),
        ("v-diffusion U-Net (conv)", studies / "classical_generator.yaml", "cpu", npz),
    ]


def keys_benchmark(studies: str | Path, windows: int, per_window: int, out: str | Path,
                   echo: Echo = print) -> list[dict[str, Any]]:
    """Training throughput of each case under each speed key, relative to the default, in the same run."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for model, study, profile, sets in keys_cases(Path(studies), tmp):
            base = None
            for label, extra in KEY_SETTINGS:
                with tempfile.TemporaryDirectory(dir=tmp) as run_tmp:
                    t = time.perf_counter()
                    try:
                        _trial, reports = training_windows(study, profile, {**sets, **extra}, windows, per_window,
                                                           Path(run_tmp))
                    except Exception as e:  # noqa: BLE001 - a setting that fails is a result too (e.g. compile)
                        first = one_line(e, 160)
                        rows.append({"model": model, "setting": label, "throughput": "failed", "unit": first,
                                     "vs_default": "", "run_s": round(time.perf_counter() - t, 1)})
                        echo(f"{model:36s} {label:28s} failed: {first}")
                        continue
                    wall = time.perf_counter() - t
                key = _throughput(reports[0])[0]
                rate = statistics.median(_throughput(m)[1] for m in reports)
                base = rate if base is None else base
                row = {"model": model, "setting": label, "throughput": round(rate, 1),
                       "unit": key.replace("_per_s", "/s"), "vs_default": round(rate / base, 3),
                       "run_s": round(wall, 1)}
                rows.append(row)
                echo(f"{model:36s} {label:28s} {rate:8.1f} {row['unit']} ({row['vs_default']:.3f}x), "
                     f"{wall:.0f} s with warm-up")
    cols = ["model", "setting", "throughput", "unit", "vs_default", "run_s"]
    table = format_table(rows, cols, markdown=True)
    echo("")
    echo(table)
    _write_report(out, "Speed-keys benchmark", [
        "Produced by `harness bench keys`: each model's study trial trained in this process (the recipe's own loop,",
        f"no Ray) under each speed key of the train section; throughput is the median of {windows} reporting windows",
        f"of {per_window} steps after a warm-up window (which holds torch.compile's compilation; `run_s` includes",
        "it). `vs_default` is against the default in the same run. The default is the fused AdamW/Adam kernel;",
        "`compile` and `channels_last` are off unless a study sets them."], table, echo=echo)
    return rows
