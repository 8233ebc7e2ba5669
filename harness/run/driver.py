"""`harness study`: spec -> pre-flight -> dedup against MLflow -> Ray Tune -> MLflow (one writer) -> tables.

Rerunning the same command resumes: trials whose config hash FINISHED are skipped, interrupted ones continue from
their last checkpoint in the same MLflow run (metric steps already logged are not logged twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from harness.errors import DISK_FULL, UserError, infrastructure_reason_at, one_line
from harness.run.calibrate import run_calibrations
from harness.run.commands import show_plan
from harness.run.estimate import estimate_total, estimate_trials
from harness.run.plan import Plan, estimate_table, plan_study
from harness.run.preflight import TRAIN_DRIVER_CPU, check_cluster, check_machine, trial_cpus
from harness.run.session import StudySession
from harness.study.spec import LoadedStudy, Trial, expand_trials
from harness.tracking import (
    KIND_TRIAL,
    RUNNING_S,
    TAG,
    Tracker,
    TrialRun,
    git_sha,
    mlflow_key,
    package_versions,
    sqlite_path,
)

Echo = Callable[[str], None]


def run_study(session: StudySession, dry_run: bool = False, address: str | None = None, retry_failed: bool = False,
              echo: Echo = print) -> Plan:
    """Run (or resume) a study; returns the plan with each trial's final state."""
    loaded = session.loaded
    s = loaded.study
    trials = expand_trials(loaded)  # budgets and variants checked before anything touches MLflow or Ray
    rdir = session.results
    if (loaded.raw.get("eval") or {}).get("extractor") == "auto":
        echo("eval.extractor auto: " + ("Inception-v3 (FID/KID)" if s.eval.extractor == "inception" else
                                        "classifier features (no Inception weights: `harness fid-weights install` "
                                        "gives FID/KID offline)"))
    if dry_run:
        plan = show_plan(session, len(trials), echo)
        _show_estimate(plan, echo)
        return plan
    # Before the lock, MLflow and Ray: every missing dataset, and (for a private local Ray) what one trial needs
    # that this machine lacks, in one sentence with the profiles that do run here.
    machine = check_machine(session, trials, address)
    if machine.missing:
        raise machine.error()
    data_hashes = machine.data_hashes
    store = sqlite_path(session.store_uri)
    # the lock lives beside a SQLite store (the results directory's own by default), so drivers sharing the store
    # see one lock; for a tracking server, beside the results
    lock = study_lock(store.parent if store else rdir, s.name, loaded.profile, session.path)
    with lock, _disk_full_is_one_sentence(rdir):
        tracker = session.tracker()
        tracker.data_hashes = data_hashes
        # With a SQLite store the lock covers every driver that can write it, so open runs have no live driver.
        orphans = tracker.close_orphans(s.name) if store else 0
        if orphans:
            echo(f"closed {orphans} run(s) left open by a driver that stopped without closing them (now KILLED)")
        plan = plan_study(loaded, tracker, retry_failed)
        todo = [t for t in plan.trials if plan.state[t.config_hash] in ("new", "resume")]
        if todo and machine.short:  # a study with nothing left to train still writes its tables on any machine
            raise machine.error()
        done = sum(v == "done" for v in plan.state.values())
        echo(f"study {s.name} [profile {loaded.profile}]: {len(plan.trials)} trials, {done} done, "
             f"{len(todo)} to run, {sum(v == 'failed' for v in plan.state.values())} failed")
        parent = _run_trials(plan, todo, tracker, rdir, address, echo, session) if todo else None
        run_calibrations(loaded, plan.trials, tracker, rdir, echo)  # the metrics' floors, once per group
        _write_tables(plan, tracker, rdir, parent, echo)
    return plan


def _show_estimate(plan: Plan, echo: Echo) -> None:
    """`--dry-run`'s compute estimate after the trial table: per trial, then in all (see harness.run.estimate)."""
    done = {h: r for h, r in plan.runs.items() if plan.state.get(h) == "done"}
    estimates = estimate_trials(plan.loaded, plan.trials, runs=done)
    echo("")
    echo(estimate_table(plan, estimates))
    echo(estimate_total(plan.loaded, estimates).describe())


def _write_tables(plan: Plan, tracker: Tracker, rdir: Path, parent: str | None, echo: Echo) -> None:
    from harness.reporting.tables import write_study_tables

    loaded = plan.loaded
    out_dir = rdir / loaded.study.name / loaded.profile
    for written in write_study_tables(loaded, plan.trials, tracker, rdir):
        echo(f"wrote {written}")
        if parent:  # the invocation's parent run carries the tables and plots it produced, laid out as on disk
            tracker.log_artifact(parent, written, str(Path("tables") / written.relative_to(out_dir).parent))


@contextlib.contextmanager
def study_lock(where: Path, study: str, profile: str, path: str | Path):
    """One driver per study and store: a second `harness study` on them (any profile: profiles can share trials)
    is refused with one sentence naming the running one. The lock is the kernel's (flock), so a driver that dies,
    however hard, leaves nothing held; the file keeps who holds it, for that sentence."""
    locks = where / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    f = open(locks / f"{study}.lock", "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"study {study} is already being run on the store in {where} by {holder}: wait for "
                            "it to finish or stop it (Ctrl-C; its trials resume), or pass another --results-dir "
                            "to run beside it") from None
        f.seek(0)
        f.truncate()
        f.write(f"`harness study {path} --profile {profile}` (pid {os.getpid()} on {socket.gethostname()}, "
                f"started {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def _run_trials(plan: Plan, todo: list[Trial], tracker: Tracker, rdir: Path, address: str | None, echo: Echo,
                session: StudySession | None = None) -> str:
    """Run ``todo`` through Ray Tune under a new parent run; returns the parent run's id."""
    _quiet_ray()
    from harness.run.progress import Progress, StudyCallback

    loaded, s = plan.loaded, plan.loaded.study
    # before any run is opened: an unreachable cluster or unshared storage leaves no run
    check_cluster(address, rdir, loaded, session)
    common_tags = _common_tags(loaded)
    parent = tracker.start_parent(s.name, loaded.profile, common_tags, yaml.safe_dump(loaded.raw, sort_keys=False))
    todo = schedule_order(todo)
    runs = {t.config_hash: _trial_run(plan, t, tracker, parent, common_tags) for t in todo}
    configs = [_trial_config(t, loaded, rdir, (tracker.data_hashes or {}).get(t.dataset, "")) for t in todo]
    progress = Progress(todo, plan.state, echo)
    callback = StudyCallback(tracker, runs, progress)
    _fit(loaded, configs, callback, tracker, parent, rdir, echo)
    return _close_parent(plan, callback, progress, tracker, parent, rdir)


def _common_tags(loaded: LoadedStudy) -> dict[str, str]:
    """The tags of the invocation's parent run, which every new trial run carries too."""
    s = loaded.study
    versions = package_versions()
    return {
        f"{TAG}study": s.name, f"{TAG}profile": loaded.profile, f"{TAG}git_sha": git_sha(loaded.project_dir),
        f"{TAG}versions": " ".join(f"{k}={v}" for k, v in versions.items()),
        f"{TAG}device": _device(s.resources.gpus_per_worker),
        f"{TAG}machine": _machine(),
    }


def _trial_run(plan: Plan, t: Trial, tracker: Tracker, parent: str, common_tags: dict[str, str]) -> TrialRun:
    """A resumed trial's run, reopened under ``parent``; or a new trial's, opened when the trial starts."""
    h = t.config_hash
    if plan.state[h] == "resume":
        old = plan.runs[h]
        rid = old.info.run_id
        tracker.reopen(rid, parent)
        ran = old.data.tags.get(RUNNING_S)
        before = float(ran) if ran else (  # a run from before running_s: its earlier span as it was
            (old.info.end_time - old.info.start_time) / 1000 if old.info.end_time else 0.0)
        return TrialRun(rid, "RUNNING", tracker.last_steps(rid), running_s=before)
    tags = {**common_tags, f"{TAG}kind": KIND_TRIAL, f"{TAG}config_hash": h, f"{TAG}variant": t.variant,
            f"{TAG}dataset": t.dataset, f"{TAG}seed": str(t.seed), f"{TAG}params": str(t.params),
            f"{TAG}diagnostic": str(t.diagnostic).lower(), f"{TAG}substudies": ",".join(t.substudies),
            **({f"{TAG}data_hash": tracker.data_hashes[t.dataset]}
               if tracker.data_hashes and t.dataset in tracker.data_hashes else {}),
            **{mlflow_key(f"{TAG}axis.{k}"): str(v) for k, v in t.axes.items()}}
    return TrialRun("", "RUNNING", pending=(parent, t.run_name, tags, {**t.resolved(), "axes": t.axes}))


def _fit(loaded: LoadedStudy, configs: list[dict[str, Any]], callback, tracker: Tracker, parent: str, rdir: Path,
         echo: Echo) -> None:
    """Tune runs the trials. Ctrl-C or SIGTERM closes the open runs as KILLED (resumable) and exits 130; Ray giving
    up closes them too and ends in one sentence."""
    def on_signal(signum, _frame):  # SIGTERM behaves like Ctrl-C: runs are closed as KILLED, resumable
        raise KeyboardInterrupt

    old = signal.getsignal(signal.SIGTERM)
    quiet = _quiet_tune_logs()
    try:
        # After ray.init: its C++ failure-signal handler would otherwise take SIGTERM and kill the driver without
        # closing the runs.
        signal.signal(signal.SIGTERM, on_signal)
        _tuner(loaded, configs, callback, rdir).fit()
    except KeyboardInterrupt:
        _close_killed(callback, tracker, parent)
        echo("interrupted: rerun the same command to resume")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - Ray itself gave up (its memory monitor, a lost GCS, a full disk, ...)
        # resumable: the rerun continues each trial from its checkpoint
        unclosed = _close_killed(callback, tracker, parent)
        why = _infrastructure(e, rdir) or f"Ray stopped the study ({one_line(e)})"
        raise UserError(f"{why}; the study's open runs are closed as KILLED{unclosed}: "
                        f"{_fix(why, rdir)}rerun the same command to resume") from None
    finally:
        signal.signal(signal.SIGTERM, old)
        _restore_logs(quiet)


def _tuner(loaded: LoadedStudy, configs: list[dict[str, Any]], callback, rdir: Path):
    """A grid search over the trials' configs, each trial in a fresh process holding the study's resources."""
    from ray import tune

    from harness.run.tune_trial import tune_trial

    s, res = loaded.study, loaded.study.resources
    if res.uses_train:
        # The Tune trial is only a driver for the TorchTrainer, whose workers hold the resources.
        trial_resources: Any = {"cpu": TRAIN_DRIVER_CPU}
    else:
        trial_resources = {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker}
    return tune.Tuner(
        tune.with_resources(tune_trial, trial_resources),
        param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=_max_concurrent(res),
            # Every trial gets a fresh process: thread counts, Accelerate state and a finished TorchTrainer's
            # actors do not carry over into the next trial.
            reuse_actors=False,
            trial_name_creator=_trial_name,
            trial_dirname_creator=lambda tr: tr.config["cfg"]["trial_hash"],
        ),
        run_config=tune.RunConfig(
            name=f"{s.name}-{loaded.profile}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(rdir / "ray"),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=0 if res.uses_train else res.max_failures),
            verbose=0,
        ),
    )


def _close_parent(plan: Plan, callback, progress, tracker: Tracker, parent: str, rdir: Path) -> str:
    """After Tune: every run closed, the plan updated with each trial's final state, the summary printed and the
    parent run closed; trials Ray or the machine stopped end the command in one sentence."""
    callback.close_all("FAILED")  # anything Tune did not report as complete
    for h, st in callback.final_state.items():
        plan.state[h] = st
    progress.summary()
    if callback.interruptions:  # Ray or the machine stopped trials: closed KILLED, resumed by the same command
        tracker.finish(parent, "KILLED")
        reasons = sorted(set(callback.interruptions.values()))
        why = "; ".join(reasons)
        raise UserError(f"{len(callback.interruptions)} trial(s) interrupted because {why} (closed as KILLED, "
                        f"not failed): {_fix(why, rdir)}rerun the same command to resume them")
    tracker.finish(parent, "FAILED" if progress.failed else "FINISHED")
    return parent


@contextlib.contextmanager
def _disk_full_is_one_sentence(rdir: Path):
    """The driver's own writes (the MLflow store, artifacts, tables) failing for lack of space end in one sentence;
    runs it could not close are closed by the next `harness study` on the store (it holds the study's lock)."""
    try:
        yield
    except (UserError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        why = _infrastructure(e, rdir)
        if not why or not why.startswith(DISK_FULL):
            raise
        raise UserError(f"{why}: free space on the disk holding {rdir}, then rerun the same command to resume "
                        "(runs left open are closed as KILLED then)") from None


def _close_killed(callback, tracker: Tracker, parent: str) -> str:
    """Close every open run as KILLED, the parent included, as far as the store can be written; returns the clause
    that says what could not be closed ("" when all were)."""
    problems = callback.close_all("KILLED")
    try:
        tracker.finish(parent, "KILLED")
    except Exception as e:  # noqa: BLE001 - reported in the sentence
        problems.append(one_line(e, 120))
    if not problems:
        return ""
    return (f" (some runs could not be closed: {problems[0]}; the next `harness study` on this results directory "
            "closes them as KILLED)")


def _infrastructure(e: BaseException, rdir: Path) -> str | None:
    """Why the study stopped, when Ray or the machine stopped it: the error's own words, or a nearly full disk."""
    why = infrastructure_reason_at(e, rdir)
    root = e
    while root.__cause__ is not None or root.__context__ is not None:  # the innermost error says it plainly
        root = root.__cause__ or root.__context__
    return f"{why} ({type(root).__name__}: {one_line(root, 160)})" if why else None


def _fix(why: str, rdir: Path) -> str:
    return f"free space on the disk holding {rdir}, then " if why.startswith(DISK_FULL) else ""


def _quiet_tune_logs() -> dict[str, int]:
    """Tune logs each failed trial's whole traceback (and a summary) at ERROR level; the driver records the reason
    in MLflow, says it in one line and keeps the trace in the trial's Ray folder, so those logs are silenced while
    the study runs."""
    levels = {}
    for name in ("ray.tune", "ray.train", "ray.air"):
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(logging.CRITICAL)
    return levels


def _restore_logs(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def schedule_order(todo: list[Trial]) -> list[Trial]:
    """The order trials are handed to Tune: one trial per shared trained model first (so trials running side by
    side train different models instead of waiting on each other's lock), each group longest first (estimated
    as GFLOPs x steps or epochs), so the long poles start early."""
    seen: set[str] = set()
    first = []
    for t in todo:
        first.append(not t.train_hash or t.train_hash not in seen)
        seen.add(t.train_hash)
    cost = [t.gflops * float(t.train.get("steps") or t.train.get("epochs") or 1) for t in todo]
    order = sorted(range(len(todo)), key=lambda i: (not first[i], -cost[i], i))
    return [todo[i] for i in order]


def _trial_config(t: Trial, loaded: LoadedStudy, rdir: Path, data_hash: str = "") -> dict[str, Any]:
    run_dir = rdir / "runs" / loaded.study.name / t.config_hash
    # Trials sharing a trained model keep its checkpoints in one place (a lock decides who trains it).
    train_dir = rdir / "runs" / loaded.study.name / "trained" / t.train_hash if t.train_hash else run_dir
    return {
        "trial": t.payload(),
        "trial_hash": t.config_hash,
        "resources": dataclasses.asdict(loaded.study.resources),
        "paths": {  # absolute: Tune changes each trial's working directory (docs/architecture.md)
            "run_dir": str(run_dir), "train_dir": str(train_dir), "cache_dir": str(rdir / "cache"),
            "data_root": str(loaded.data_root()), "ray_storage": str(rdir / "ray"), "data_hash": data_hash,
        },
    }


def _machine() -> str:
    from harness.run.machine import machine_info

    m = machine_info()
    return f"{m['cpu']}, {m['cores']} cores, {m['memory']}"


def _device(gpus: float) -> str:
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if gpus > 0 and torch.cuda.is_available() else "cpu"


def _max_concurrent(res) -> int:
    """As many trials as the cluster's CPUs hold (all nodes; ray.init must have run), unless the study says."""
    import ray

    if res.max_concurrent_trials:
        return res.max_concurrent_trials
    cpus = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
    cpus = cpus or os.cpu_count() or 1
    return max(1, int(cpus // max(trial_cpus(res), 1e-9)))


def _quiet_ray() -> None:
    """Our progress line replaces Tune's tables; Ctrl-C reaches us, not Tune's own handler (which would stop the
    trials and return normally, so interrupted trials would look failed instead of resumable)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")



def _trial_name(tr) -> str:
    cfg = tr.config["cfg"]
    return f"{cfg['trial']['variant']}-{cfg['trial_hash']}"
