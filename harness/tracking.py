"""MLflow tracking: one writer (the driver), a parent run per study invocation, a child run per trial.

Pitfalls handled here (docs/architecture.md, "One MLflow writer, and the tracking URI"): the SQLite URI and
artifact root are absolute (Tune changes each trial's working directory); only the driver
writes (SQLite has one writer); runs are found by a config-hash tag, never by name; params are flattened strings
and the resolved config goes in as an artifact; ``MLFLOW_RUN_ID`` is never exported to workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError

# MLflow draws a progress bar on stderr for every artifact download (the reports read sample grids and calibration
# files back): noise between the harness's own lines. Users who want it set the variable themselves.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TAG = "harness."
KIND_PARENT, KIND_TRIAL, KIND_CALIBRATION = "study", "trial", "calibration"


RUNNING_S = f"{TAG}running_s"  # seconds a trial's run spent running, summed over its attempts (not the gaps)


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI; None for other stores."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str):
    """Held while a process opens a SQLite store: MLflow creates and migrates the schema on first use, and two
    processes doing that at once fail inside the migration. Other stores need no lock."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_store(uri: str) -> None:
    """Refuse a damaged SQLite store with one sentence (SQLite's quick check), instead of tables read from half a
    store or an error that reads like a network problem. A missing file is not damaged (it is created)."""
    path = sqlite_path(uri)
    if path is None or not path.exists() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            rows = db.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.DatabaseError as e:
        problem = " ".join(str(e).split())
    else:
        problems = [r[0] for r in rows if r and r[0] != "ok"]
        if not problems:
            return
        problem = " ".join("; ".join(problems).replace("*** in database main ***", "").split())[:200]
    raise UserError(
        f"the MLflow store {path} is damaged (SQLite: {problem}): restore it from a backup, or salvage what is "
        f"readable with `sqlite3 {path} .recover | sqlite3 {path.with_name('mlflow-recovered.db')}` and use that "
        f"file, or move it aside to start a new store (checkpoints under {path.parent / 'runs'} are kept, so "
        "interrupted trials resume from them).")


def run_seconds(run: Any) -> float | None:
    """How long a finished trial ran: the sum of its attempts' running time (``harness.running_s``); runs from before
    that tag was recorded fall back to end minus start, which counts the gaps between attempts."""
    tagged = run.data.tags.get(RUNNING_S)
    if tagged:
        with contextlib.suppress(ValueError):
            return float(tagged)
    return (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None


def mlflow_key(key: str) -> str:
    """MLflow keys allow alphanumerics and _ - . space : /; anything else (e.g. the + of a zipped axis) becomes ':'."""
    return re.sub(r"[^\w\-. :/]", ":", key)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"width": 512}} -> {"model.width": "512"}; values stringified (MLflow params are strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = mlflow_key(f"{prefix}{k}")
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def git_sha(cwd: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("harness", "torch", "torchvision", "accelerate", "ray", "mlflow", "torch-fidelity"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


@dataclass
class TrialRun:
    """The MLflow run of one trial and what has been logged to it (for step de-duplication on resume)."""

    run_id: str  # "" until the trial starts: a new trial's run is created then, so its start time is the trial's
    status: str
    last_step: dict[str, int] = field(default_factory=dict)
    pending: tuple[str, str, dict[str, str], dict[str, Any]] | None = None  # (parent id, name, tags, resolved)
    running_s: float = 0.0  # running time of the run's earlier attempts (``harness.running_s``)
    attempt_start: float | None = None  # when this invocation's attempt started (time.time())

    def ensure(self, tracker: Tracker) -> str:
        if not self.run_id and self.pending:
            self.run_id = tracker.create_trial_run(*self.pending)
            self.pending = None
        return self.run_id


def check_server(uri: str, timeout: float = 10.0) -> None:
    """An http(s) tracking URI must answer its ``/health`` endpoint within ``timeout`` seconds (MLflow's client
    would otherwise retry for minutes before saying the server is down)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: a proxy or an older server without /health; the client reports real problems
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot reach the MLflow tracking server at {uri} ({reason}): start it (e.g. `mlflow server "
                        "--host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db`) or fix "
                        "--tracking-uri / MLFLOW_TRACKING_URI.") from None


# The MLflow UI's shareable views: an experiment tag `mlflow.sharedViewState.<key>` holds a JSON view (search
# filter, ordering, selected columns, column widths) that `?viewStateShareKey=<key>` opens; the UI takes no columns
# from the URL itself. The harness's own views carry this key prefix, so stale ones are replaced, never the user's.
SHARED_VIEW_TAG, VIEW_KEY_PREFIX = "mlflow.sharedViewState.", "harness-"
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's column id (190 px wide by default)
# (study file as the newest parent run logged it, metric keys its trial runs logged) -> [(key, higher is better)]
KeyMetrics = Callable[[dict[str, Any], set[str]], list[tuple[str, bool]]]


def runs_page_urls(tracking_uri: str, base_url: str, key_metrics: KeyMetrics | None = None) -> dict[str, str]:
    """Each experiment's runs table in the MLflow UI at ``base_url``, opened in its model-training view (MLflow 3's
    UI starts in its GenAI view, which shows traces, not runs).

    With ``key_metrics`` (given the study file the newest parent run logged and the metric keys its trial runs
    logged, it returns ``[(metric key, higher is better)]``, the one to rank by first), the page opens on a saved
    view: the trial runs only, flat (the UI nests child runs, collapsed, only when sorted by start time), ranked by
    the first key metric, with those metrics as columns and a run-name column wide enough for trial names. A store
    that cannot take the view's tag (read-only) gets the plain page."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    out = {}
    for e in client.search_experiments():
        if e.name == "Default":
            continue
        url = f"{base_url}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning"
        view = _key_metric_view(client, e.experiment_id, key_metrics) if key_metrics else None
        key = _save_view(client, e, view) if view else None
        out[e.name] = f"{url}&viewStateShareKey={key}" if key else url
    return out


def _key_metric_view(client: Any, experiment_id: str, key_metrics: KeyMetrics) -> dict | None:
    """The runs-table view of a study's trial runs ranked by its key metrics; None when its trials logged none."""
    trials = client.search_runs([experiment_id], filter_string=f"tags.`{TAG}kind` = '{KIND_TRIAL}'",
                                max_results=1000)
    logged = {k for r in trials for k in r.data.metrics}
    metrics = key_metrics(_study_file(client, experiment_id), logged) if logged else []
    if not metrics:
        return None
    columns = [f"metrics.`{k}`" for k, _ in metrics]
    return {
        "searchFilter": f"tags.`{TAG}kind` = '{KIND_TRIAL}'",
        "orderByKey": columns[0],
        "orderByAsc": not metrics[0][1],
        "selectedColumns": [*columns, f"tags.`{TAG}profile`"],
        "columnOrder": [RUN_NAME_COLUMN, *columns],  # the UI applies widths only to the columns listed here
        # wide enough for a trial's name and a metric's full float (the UI shows every digit, 100 px shows 10)
        "columnWidths": {RUN_NAME_COLUMN: 300, **{c: 160 for c in columns}},
    }


def _study_file(client: Any, experiment_id: str) -> dict[str, Any]:
    """The resolved study file the newest parent run logged (``study.yaml``); {} when there is none to read."""
    import tempfile

    parents = client.search_runs([experiment_id], filter_string=f"tags.`{TAG}kind` = '{KIND_PARENT}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        return {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(parents[0].info.run_id, "study.yaml", tmp)).read_text()
        study = yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - a missing or unreadable artifact only loses the study's own metric order
        return {}
    return study if isinstance(study, dict) else {}


def _save_view(client: Any, experiment: Any, view: dict) -> str | None:
    """Store ``view`` as the experiment's shared view under a key made from its content (so an unchanged view is
    written once) and drop the harness's older views; returns the key, or None when the store refuses the write."""
    import hashlib

    text = json.dumps(view, sort_keys=True)
    key = VIEW_KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]
    tags = experiment.tags or {}
    try:
        if tags.get(SHARED_VIEW_TAG + key) != text:
            client.set_experiment_tag(experiment.experiment_id, SHARED_VIEW_TAG + key, text)
    except Exception as e:  # noqa: BLE001 - a read-only or busy store still serves the plain page
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        logging.getLogger(__name__).warning("no key-metric view for %s (%s)", experiment.name, first)
        return None
    for old in tags:
        if old.startswith(SHARED_VIEW_TAG + VIEW_KEY_PREFIX) and old != SHARED_VIEW_TAG + key:
            with contextlib.suppress(Exception):  # a stale view left behind is harmless
                client.delete_experiment_tag(experiment.experiment_id, old)
    return key


def _slug(text: str) -> str:
    """A floor's reference as a metric-name part: "real vs real" -> real_vs_real, "N(0, I)" -> N_0_I."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def parent_run_name(profile: str, when: float | None = None) -> str:
    """A parent run's name: the profile and the start (``smoke 05-01 12:00``). The study is the run's experiment, so
    its name would only repeat it; the MLflow UI's run-name column shows about 16 characters before it cuts."""
    return f"{profile} {time.strftime('%m-%d %H:%M', time.localtime(when))}"


class Tracker:
    """All MLflow writes of one study invocation."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        # Only the client API: mlflow.set_tracking_uri would export MLFLOW_TRACKING_URI to the whole process, and a
        # second study run in the same process (library use, tests) would then write to this one's store.
        self.uri = tracking_uri
        # MLflow's SQL store logs every database error with its traceback before raising it; the harness says what
        # went wrong in one sentence (a full disk, a damaged store), and anything else still raises with its trace
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        check_server(tracking_uri)
        check_store(tracking_uri)
        with store_lock(tracking_uri):  # schema creation/migration and the experiment, one process at a time
            try:
                self.client = MlflowClient(tracking_uri)
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    loc = artifact_root.resolve().as_uri() if artifact_root else None
                    # the experiment kind tells MLflow 3's UI that these are training runs, not GenAI traces
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=loc,
                        tags={"mlflow.experimentKind": "custom_model_development"})
                else:
                    self.experiment_id = exp.experiment_id
            except Exception as e:  # noqa: BLE001 - any backend failure is the same user-facing problem
                check_store(tracking_uri)  # a store damaged in a way the quick check missed says so
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                where = "store" if sqlite_path(tracking_uri) else "tracking store"
                raise UserError(f"cannot open the MLflow {where} {tracking_uri}: {first}") from None

    # ------------------------------------------------------------------------------------------------- queries
    # dataset name -> content fingerprint of the data this invocation uses; when set, runs that recorded another
    # fingerprint for their dataset (the same config on other data, e.g. another data.root) are not this study's
    data_hashes: dict[str, str] | None = None

    def trial_runs(self, study: str) -> dict[str, list[Any]]:
        """All trial runs of ``study`` by config hash (newest first), without runs trained on other data than
        ``data_hashes`` says (runs from before fingerprints were recorded are kept)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG}study` = '{study}' and tags.`{TAG}kind` = '{KIND_TRIAL}'",
            max_results=50_000,
            order_by=["attributes.start_time DESC"],
        )
        out: dict[str, list[Any]] = {}
        for r in runs:
            if self.data_hashes is not None:
                recorded = r.data.tags.get(f"{TAG}data_hash")
                current = self.data_hashes.get(r.data.tags.get(f"{TAG}dataset", ""))
                if recorded and current and recorded != current:
                    continue
            out.setdefault(r.data.tags.get(f"{TAG}config_hash", ""), []).append(r)
        return out

    def finished_runs(self, study: str) -> dict[str, Any]:
        """The newest FINISHED trial run of ``study`` per config hash (after the same data filter)."""
        out: dict[str, Any] = {}
        for h, runs in self.trial_runs(study).items():
            done = [r for r in runs if r.info.status == "FINISHED"]
            if done:
                out[h] = done[0]
        return out

    def close_orphans(self, study: str) -> int:
        """Close as KILLED the runs of ``study`` still marked RUNNING: called with the study's driver lock held, so
        no live driver owns them (a driver killed hard, or one that could not write its last status). Returns how
        many; the trials among them resume as interrupted ones do."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG}study` = '{study}' and attributes.status = 'RUNNING'",
            max_results=50_000)
        for r in runs:
            self.client.set_terminated(r.info.run_id, status="KILLED")
        return len(runs)

    def last_steps(self, run_id: str) -> dict[str, int]:
        run = self.client.get_run(run_id)
        out = {}
        for key in run.data.metrics:
            hist = self.client.get_metric_history(run_id, key)
            out[key] = max((m.step for m in hist), default=-1)
        return out

    # ------------------------------------------------------------------------------------------------- writes
    def start_parent(self, study: str, profile: str, tags: dict[str, str], resolved_yaml: str) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=parent_run_name(profile),
            tags={f"{TAG}study": study, f"{TAG}kind": KIND_PARENT, f"{TAG}profile": profile, **tags},
        )
        self.client.log_text(run.info.run_id, resolved_yaml, "study.yaml")
        return run.info.run_id

    def create_trial_run(self, parent_id: str, name: str, tags: dict[str, str], resolved: dict[str, Any]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id, **tags}
        )
        rid = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flatten(resolved).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(rid, params=params[i : i + 100])
        self.client.log_text(rid, yaml.safe_dump(resolved, sort_keys=False), "config/resolved.yaml")
        return rid

    def reopen(self, run_id: str, parent_id: str) -> None:
        """A resumed trial keeps its run; it moves under this invocation's parent run."""
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "mlflow.parentRunId", parent_id)

    def log_metrics(self, tr: TrialRun, step: int, metrics: dict[str, float]) -> None:
        """Log finite numeric metrics at ``step``, skipping steps already logged (a resumed trial replays some)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for k, v in metrics.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or step <= tr.last_step.get(k, -1):
                continue
            if not math.isfinite(float(v)):
                continue
            batch.append(Metric(k, float(v), now, step))
            tr.last_step[k] = step
        for i in range(0, len(batch), 1000):
            self.client.log_batch(tr.run_id, metrics=batch[i : i + 1000])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def calibration_runs(self, study: str) -> dict[str, Any]:
        """The newest FINISHED calibration run of ``study`` per calibration key (harness.run.calibrate)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG}study` = '{study}' and tags.`{TAG}kind` = '{KIND_CALIBRATION}' and "
                          "attributes.status = 'FINISHED'",
            max_results=50_000, order_by=["attributes.start_time DESC"])
        out: dict[str, Any] = {}
        for r in runs:
            out.setdefault(r.data.tags.get(f"{TAG}calibration_key", ""), r)
        return out

    def log_calibration(self, study: str, key: str, name: str, tags: dict[str, str],
                        floors: list[dict[str, Any]]) -> str:
        """One calibration as a finished run of its own: each floor's mean and sd as metrics named
        ``floor/<reference>/<metric>/{mean,sd}``, and the floors as ``floors.json`` and in the tag ``harness.floors``
        (what the reports read: no artifact download)."""
        from mlflow.entities import Metric

        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            f"{TAG}study": study, f"{TAG}kind": KIND_CALIBRATION, f"{TAG}calibration_key": key,
            f"{TAG}floors": json.dumps(floors)[:7000], **tags})
        rid = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(f"floor/{_slug(f['reference'])}/{f['metric']}/{stat}", float(f[stat]), now, 0)
                   for f in floors for stat in ("mean", "sd") if f[stat] == f[stat]]  # NaN sd: not logged
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(rid, metrics=metrics[i: i + 1000])
        self.client.log_text(rid, json.dumps(floors, indent=1), "floors.json")
        self.finish(rid)
        return rid

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def finish_trial(self, tr: TrialRun, status: str) -> None:
        """Close a trial's run, adding this attempt's running time to ``harness.running_s`` first."""
        if tr.attempt_start is not None:
            tr.running_s += max(0.0, time.time() - tr.attempt_start)
            tr.attempt_start = None
            self.client.set_tag(tr.run_id, RUNNING_S, f"{tr.running_s:.1f}")
        self.finish(tr.run_id, status)
