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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.console import format_table
from harness.errors import DISK_FULL, UserError, infrastructure_reason_at, one_line
from harness.study.spec import LoadedStudy, Trial, expand_trials, load_study
from harness.tracking import (
    KIND_TRIAL,
    RUNNING_S,
    TAG,
    Tracker,
    TrialRun,
    default_tracking_uri,
    git_sha,
    mlflow_key,
    package_versions,
    sqlite_path,
)

Echo = Callable[[str], None]
TRAIN_DRIVER_CPU = 0.01  # a Tune trial that only drives a TorchTrainer; its workers hold the real resources


@dataclass
class Plan:
    loaded: LoadedStudy
    trials: list[Trial]
    state: dict[str, str]  # config hash -> done | failed | resume | new
    runs: dict[str, Any] = field(default_factory=dict)  # config hash -> newest MLflow run


def results_dir_for(loaded: LoadedStudy, results_dir: str | Path | None) -> Path:
    path = Path(results_dir) if results_dir else loaded.project_dir / "results"
    path = path.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise UserError(f"results directory {path} is not writable; pass --results-dir with a writable path") from None
    return path


def plan_study(loaded: LoadedStudy, tracker: Tracker | None, retry_failed: bool = False) -> Plan:
    trials = expand_trials(loaded)
    existing = tracker.trial_runs(loaded.study.name) if tracker else {}
    state, runs = {}, {}
    for t in trials:
        found = existing.get(t.config_hash, [])
        finished = [r for r in found if r.info.status == "FINISHED"]
        if finished:
            state[t.config_hash], runs[t.config_hash] = "done", finished[0]
        elif found and found[0].info.status == "FAILED" and not retry_failed:
            state[t.config_hash], runs[t.config_hash] = "failed", found[0]
        elif found:
            state[t.config_hash], runs[t.config_hash] = "resume", found[0]
        else:
            state[t.config_hash] = "new"
    return Plan(loaded, trials, state, runs)


def trial_table(plan: Plan) -> str:
    rows = []
    parts = any(name for name, _ in plan.loaded.parts)
    for t in plan.trials:
        rows.append({
            "variant": t.variant, "dataset": t.dataset, "substudies": ",".join(t.substudies),
            "axes": t.axes_text(),
            "seed": t.seed, "params": t.params, "gflops": t.gflops,
            "steps": t.train.get("steps") or t.train.get("epochs"),
            "hash": t.config_hash, "trained_in": t.train_hash,
            "done": {"done": "yes", "failed": "FAILED", "resume": "partial"}.get(plan.state[t.config_hash], "no"),
        })
    cols = ["variant", "dataset", *(["substudies"] if parts else []), "axes", "seed", "params", "gflops",
            "steps" if not any("epochs" in t.train for t in plan.trials) else "epochs", "hash",
            *(["trained_in"] if any(t.train_hash for t in plan.trials) else []), "done"]
    for r in rows:
        r["epochs"] = r["steps"]
    return format_table(rows, cols)


def _check_data(loaded: LoadedStudy) -> dict[str, str]:
    """Load each dataset's training split once so missing data fails before any run is created; returns each
    dataset's content fingerprint. The config hash leaves out where data lives (data.root), so the fingerprint is
    what tells a trial trained on other files (or on generated stand-ins) apart: runs record it, and a run with
    another fingerprint does not count as this trial's."""
    from harness.recipes import get_recipe

    load = get_recipe(loaded.study.recipe).load_data_fn()
    data = {**dataclasses.asdict(loaded.study.data), "root": str(loaded.data_root())}
    return {name: load(name, data, "train", download=loaded.study.data.download).content_hash()[:16]
            for name in dict.fromkeys(d for _, part in loaded.parts for d in part.datasets)}


def _data_hashes_if_available(loaded: LoadedStudy) -> dict[str, str] | None:
    """Fingerprints for commands that only read the store (status, table, compare, --dry-run): without the data
    they cannot tell runs on other data apart, and say so in a warning instead of failing."""
    try:
        return _check_data(loaded)
    except UserError as e:
        print(f"warning: {e} (runs are not told apart by the data they used)", file=sys.stderr)
        return None


def run_study(
    path: str | Path,
    profile: str | None = None,
    sets: dict[str, Any] | None = None,
    dry_run: bool = False,
    address: str | None = None,
    tracking_uri: str | None = None,
    results_dir: str | Path | None = None,
    retry_failed: bool = False,
    echo: Echo = print,
) -> Plan:
    """Run (or resume) a study; returns the plan with each trial's final state."""
    loaded = load_study(path, profile, sets)
    s = loaded.study
    trials = expand_trials(loaded)  # budgets and variants checked before anything touches MLflow or Ray
    rdir = results_dir_for(loaded, results_dir)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(rdir)
    if (loaded.raw.get("eval") or {}).get("extractor") == "auto":
        echo("eval.extractor auto: " + ("Inception-v3 (FID/KID)" if s.eval.extractor == "inception" else
                                        "classifier features (no Inception weights: `harness fid-weights install` "
                                        "gives FID/KID offline)"))
    if dry_run:
        tracker = Tracker(uri, s.name, rdir / "mlartifacts") if store_exists(uri) else None
        if tracker is not None:
            tracker.data_hashes = _data_hashes_if_available(loaded)
        plan = plan_study(loaded, tracker)
        echo(f"study {s.name} [profile {loaded.profile}]: {len(trials)} trials")
        echo(trial_table(plan))
        return plan
    data_hashes = _check_data(loaded)
    store = sqlite_path(uri)
    # the lock lives beside a SQLite store (the results directory's own by default), so drivers sharing the store
    # see one lock; for a tracking server, beside the results
    with study_lock(store.parent if store else rdir, s.name, loaded.profile, path), _disk_full_is_one_sentence(rdir):
        tracker = Tracker(uri, s.name, rdir / "mlartifacts")
        tracker.data_hashes = data_hashes
        # With a SQLite store the lock covers every driver that can write it, so open runs have no live driver.
        orphans = tracker.close_orphans(s.name) if store else 0
        if orphans:
            echo(f"closed {orphans} run(s) left open by a driver that stopped without closing them (now KILLED)")
        plan = plan_study(loaded, tracker, retry_failed)
        todo = [t for t in plan.trials if plan.state[t.config_hash] in ("new", "resume")]
        done = sum(v == "done" for v in plan.state.values())
        echo(f"study {s.name} [profile {loaded.profile}]: {len(plan.trials)} trials, {done} done, "
             f"{len(todo)} to run, {sum(v == 'failed' for v in plan.state.values())} failed")
        parent = _run_trials(plan, todo, tracker, rdir, address, echo) if todo else None
        _write_tables(plan, tracker, rdir, parent, echo)
    return plan


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


def store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def _run_trials(plan: Plan, todo: list[Trial], tracker: Tracker, rdir: Path, address: str | None, echo: Echo) -> str:
    """Run ``todo`` through Ray Tune under a new parent run; returns the parent run's id."""
    _quiet_ray()
    from ray import tune

    from harness.run.progress import Progress, StudyCallback
    from harness.run.tune_trial import tune_trial

    loaded, s = plan.loaded, plan.loaded.study
    _ray_init(address)  # before any run is opened: an unreachable cluster or unshared storage leaves no run
    if address or os.environ.get("RAY_ADDRESS"):
        check_shared_storage(rdir, loaded.data_root())
    _check_fits(s.resources)
    versions = package_versions()
    common_tags = {
        f"{TAG}study": s.name, f"{TAG}profile": loaded.profile, f"{TAG}git_sha": git_sha(loaded.project_dir),
        f"{TAG}versions": " ".join(f"{k}={v}" for k, v in versions.items()),
        f"{TAG}device": _device(s.resources.gpus_per_worker),
        f"{TAG}machine": _machine(),
    }
    parent = tracker.start_parent(s.name, loaded.profile, common_tags, yaml.safe_dump(loaded.raw, sort_keys=False))
    runs: dict[str, TrialRun] = {}
    configs = []
    todo = schedule_order(todo)
    for t in todo:
        h = t.config_hash
        if plan.state[h] == "resume":
            rid = plan.runs[h].info.run_id
            tracker.reopen(rid, parent)
            old = plan.runs[h]
            ran = old.data.tags.get(RUNNING_S)
            before = float(ran) if ran else (  # a run from before running_s: its earlier span as it was
                (old.info.end_time - old.info.start_time) / 1000 if old.info.end_time else 0.0)
            runs[h] = TrialRun(rid, "RUNNING", tracker.last_steps(rid), running_s=before)
        else:
            tags = {**common_tags, f"{TAG}kind": KIND_TRIAL, f"{TAG}config_hash": h, f"{TAG}variant": t.variant,
                    f"{TAG}dataset": t.dataset, f"{TAG}seed": str(t.seed), f"{TAG}params": str(t.params),
                    f"{TAG}diagnostic": str(t.diagnostic).lower(), f"{TAG}substudies": ",".join(t.substudies),
                    **({f"{TAG}data_hash": tracker.data_hashes[t.dataset]}
                       if tracker.data_hashes and t.dataset in tracker.data_hashes else {}),
                    **{mlflow_key(f"{TAG}axis.{k}"): str(v) for k, v in t.axes.items()}}
            runs[h] = TrialRun("", "RUNNING", pending=(parent, t.run_name, tags, {**t.resolved(), "axes": t.axes}))
        configs.append(_trial_config(t, loaded, rdir, (tracker.data_hashes or {}).get(t.dataset, "")))

    res = s.resources
    use_train = res.uses_train
    if use_train:
        # The Tune trial is only a driver for the TorchTrainer, whose workers hold the resources.
        trial_resources: Any = {"cpu": TRAIN_DRIVER_CPU}
    else:
        trial_resources = {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker}
    progress = Progress(todo, plan.state, echo)
    callback = StudyCallback(tracker, runs, progress)

    def on_signal(signum, _frame):  # SIGTERM behaves like Ctrl-C: runs are closed as KILLED, resumable
        raise KeyboardInterrupt

    old = signal.getsignal(signal.SIGTERM)
    quiet = _quiet_tune_logs()
    try:
        # After ray.init: its C++ failure-signal handler would otherwise take SIGTERM and kill the driver without
        # closing the runs.
        signal.signal(signal.SIGTERM, on_signal)
        tuner = tune.Tuner(
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
                failure_config=tune.FailureConfig(max_failures=0 if use_train else res.max_failures),
                verbose=0,
            ),
        )
        tuner.fit()
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
    return max(1, int(cpus // max(_trial_cpus(res), 1e-9)))


def _trial_cpus(res) -> float:
    """CPUs one trial holds: its workers, plus the Train driver when it runs as a TorchTrainer."""
    return res.cpus_per_worker * res.workers + (TRAIN_DRIVER_CPU if res.uses_train else 0.0)


def _quiet_ray() -> None:
    """Our progress line replaces Tune's tables; Ctrl-C reaches us, not Tune's own handler (which would stop the
    trials and return normally, so interrupted trials would look failed instead of resumable)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) cluster address must accept a TCP connection within ``timeout``
    seconds; ray.init would otherwise keep retrying for minutes. ``auto`` and ``local`` are left to Ray."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start it with "
                        "`ray start --head` on the head node, or fix --address / RAY_ADDRESS.") from None


def _ray_init(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        else:
            # "local": a private instance for this study. Without it ray.init joins the cluster recorded by `ray
            # start` on this machine (someone else's, possibly running another checkout's Python), and a stale record
            # of a dead one makes it retry for minutes.
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def _check_fits(res) -> None:
    """A trial that asks for more than the cluster has would wait for resources forever: refuse it."""
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    need_cpu = _trial_cpus(res)
    if need_cpu > total.get("CPU", 0) + 1e-9:
        driver = " + the Train driver" if res.uses_train else ""
        raise UserError(f"a trial needs {need_cpu:g} CPUs (resources.workers={res.workers} x cpus_per_worker="
                        f"{res.cpus_per_worker:g}{driver}) but the Ray cluster has "
                        f"{total.get('CPU', 0):g}: lower resources.cpus_per_worker (fractions are allowed) or workers.")
    if res.workers * res.gpus_per_worker > total.get("GPU", 0) + 1e-9:
        raise UserError(f"a trial needs {res.workers * res.gpus_per_worker:g} GPUs (resources.workers x "
                        f"gpus_per_worker) but the Ray cluster has {total.get('GPU', 0):g}.")
    if not any(n.get("CPU", 0) >= res.cpus_per_worker and n.get("GPU", 0) >= res.gpus_per_worker for n in nodes):
        raise UserError(f"no Ray node has {res.cpus_per_worker:g} CPUs and {res.gpus_per_worker:g} GPUs for one worker "
                        "(resources.cpus_per_worker, gpus_per_worker).")


def _probe(path: str, data_root: str) -> tuple[str | None, bool]:
    """On one node: the token file's content (None if it is not there) and whether the data root exists."""
    try:
        token = Path(path).read_text()
    except OSError:
        token = None
    return token, Path(data_root).exists()


def check_shared_storage(rdir: Path, data_root: Path, probe=None) -> None:
    """On a multi-node cluster every node writes checkpoints and sample grids under the results directory and the
    driver logs them to MLflow, so the directory must be the same shared filesystem everywhere, and the data root
    must exist on every node where the driver has it. A token file written here is read back by a task pinned to
    each alive node."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = probe or ray.remote(num_cpus=0)(_probe)
    rdir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    path = rdir / f".shared-storage-check-{token}"
    path.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(path), str(data_root)) for n in nodes]
        answers = ray.get(refs, timeout=120)
    finally:
        path.unlink(missing_ok=True)
    unshared = [n["NodeManagerAddress"] for n, (got, _) in zip(nodes, answers) if got != token]
    if unshared:
        raise UserError(f"the results directory {rdir} is not shared with the Ray node(s) at "
                        f"{', '.join(unshared)}: put --results-dir on a filesystem every node mounts at the same "
                        "path (e.g. NFS), since trials write checkpoints and samples there for the driver to log.")
    # Only a data root the driver has is needed (made and package datasets read no files).
    no_data = [n["NodeManagerAddress"] for n, (_, ok) in zip(nodes, answers) if not ok and data_root.exists()]
    if no_data:
        raise UserError(f"the data root {data_root} does not exist on the Ray node(s) at {', '.join(no_data)}: "
                        "put the datasets on a shared filesystem or copy them to the same path on every node.")


STATUS = {"done": "done", "failed": "failed", "new": "missing"}


def trial_status(plan: Plan) -> dict[str, str]:
    """Each trial's state as `harness status` shows it: done, failed, missing (never started), running (its MLflow
    run is open: a study is running it, or its driver died without closing it) or interrupted (closed as KILLED)."""
    out = {}
    for t in plan.trials:
        h = t.config_hash
        state = plan.state[h]
        if state == "resume":
            state = "running" if plan.runs[h].info.status == "RUNNING" else "interrupted"
        out[h] = STATUS.get(state, state)
    return out


def study_status(path, profile=None, sets=None, tracking_uri=None, results_dir=None, echo: Echo = print) -> Plan:
    """`harness status`: every trial of the study with its state from MLflow, the failure reasons, and a summary."""
    from harness.tracking import TAG

    loaded = load_study(path, profile, sets)
    rdir = results_dir_for(loaded, results_dir)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(rdir)
    tracker = Tracker(uri, loaded.study.name, rdir / "mlartifacts") if store_exists(uri) else None
    if tracker is not None:
        tracker.data_hashes = _data_hashes_if_available(loaded)
    plan = plan_study(loaded, tracker)
    status = trial_status(plan)
    rows = [{"variant": t.variant, "dataset": t.dataset, "substudies": ",".join(t.substudies),
             "axes": t.axes_text(), "seed": t.seed, "hash": t.config_hash,
             "status": status[t.config_hash],
             "reason": (plan.runs[t.config_hash].data.tags.get(f"{TAG}failure_reason", "")[:80]
                        if status[t.config_hash] == "failed" else
                        plan.runs[t.config_hash].data.tags.get(f"{TAG}skipped", "")[:80]
                        if t.config_hash in plan.runs else "")}
            for t in plan.trials]
    cols = ["variant", "dataset", *(["substudies"] if any(r["substudies"] for r in rows) else []), "axes", "seed",
            "hash", "status", *(["reason"] if any(r["reason"] for r in rows) else [])]
    echo(f"study {loaded.study.name} [profile {loaded.profile}], store {uri}")
    echo(format_table(rows, cols))
    counts = {k: sum(v == k for v in status.values()) for k in ("done", "running", "interrupted", "failed", "missing")}
    echo(f"{len(plan.trials)} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k == "done"))
    return plan


def _open_store(path, profile, sets, tracking_uri, results_dir) -> tuple[LoadedStudy, list[Trial], Path, Tracker]:
    """The study, its trials, results dir and a tracker on its existing store (for commands that only read)."""
    loaded = load_study(path, profile, sets)
    trials = expand_trials(loaded)
    rdir = results_dir_for(loaded, results_dir)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(rdir)
    if not store_exists(uri):
        raise UserError(f"no MLflow store at {uri[len('sqlite:///'):]}; run `harness study {path}` first")
    tracker = Tracker(uri, loaded.study.name, rdir / "mlartifacts")
    tracker.data_hashes = _data_hashes_if_available(loaded)
    return loaded, trials, rdir, tracker


def write_tables(path, profile=None, sets=None, tracking_uri=None, results_dir=None, echo: Echo = print) -> list[Path]:
    """`harness table`: regenerate tables and plots from MLflow without training."""
    from harness.reporting.tables import write_study_tables

    loaded, trials, rdir, tracker = _open_store(path, profile, sets, tracking_uri, results_dir)
    written = write_study_tables(loaded, trials, tracker, rdir)
    for w in written:
        echo(f"wrote {w}")
    return written


def compare_study(path, by: str, metric: str | None = None, baseline: str | None = None, profile=None, sets=None,
                  tracking_uri=None, results_dir=None, substudy: str | None = None, echo: Echo = print):
    """`harness compare`: arms of ``by`` against the baseline arm, written beside the study's tables."""
    from harness.reporting.compare import run_compare

    loaded, trials, rdir, tracker = _open_store(path, profile, sets, tracking_uri, results_dir)
    out_dir = rdir / loaded.study.name / loaded.profile
    res, text, written = run_compare(loaded, trials, tracker, by, metric, baseline, out_dir, substudy)
    from harness.reporting.report import refresh_appendix

    report = refresh_appendix(out_dir)  # the report lists the comparison too
    written += [report] if report else []
    echo(text)
    for w in written:
        echo(f"wrote {w}")
    return res


def _trial_name(tr) -> str:
    cfg = tr.config["cfg"]
    return f"{cfg['trial']['variant']}-{cfg['trial_hash']}"
