"""MLflow tracking: one writer (the driver), a parent run per study invocation, a child run per trial.

Pitfalls handled here (DESIGN "Pitfalls" 3, 4): the SQLite URI and artifact root are absolute; only the driver
writes (SQLite has one writer); runs are found by a config-hash tag, never by name; params are flattened strings
and the resolved config goes in as an artifact; ``MLFLOW_RUN_ID`` is never exported to workers.
"""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError

TAG = "harness."
KIND_PARENT, KIND_TRIAL = "study", "trial"


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


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


def runs_page_urls(tracking_uri: str, base_url: str) -> dict[str, str]:
    """Each experiment's runs table in the MLflow UI at ``base_url``, opened in its model-training view (MLflow 3's
    UI starts in its GenAI view, which shows traces, not runs)."""
    from mlflow.tracking import MlflowClient

    return {e.name: f"{base_url}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning"
            for e in MlflowClient(tracking_uri).search_experiments() if e.name != "Default"}


class Tracker:
    """All MLflow writes of one study invocation."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        # Only the client API: mlflow.set_tracking_uri would export MLFLOW_TRACKING_URI to the whole process, and a
        # second study run in the same process (library use, tests) would then write to this one's store.
        self.uri = tracking_uri
        check_server(tracking_uri)
        try:
            self.client = MlflowClient(tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as e:  # noqa: BLE001 - any backend failure is the same user-facing problem
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"cannot reach the MLflow tracking store {tracking_uri}: {first}") from None
        if exp is None:
            loc = artifact_root.resolve().as_uri() if artifact_root else None
            # the experiment kind tells MLflow 3's UI that these are training runs, not GenAI traces
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=loc, tags={"mlflow.experimentKind": "custom_model_development"})
        else:
            self.experiment_id = exp.experiment_id

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
            run_name=f"{study} [{profile}] {time.strftime('%Y-%m-%d %H:%M')}",
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

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)
