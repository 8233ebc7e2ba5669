"""What the reports are made from: the finished trial runs in the MLflow store, and the papers' tables shipped with
the package. Every report module reads through here; this module imports no other report module."""

from __future__ import annotations

import importlib.resources
import math
from typing import Any

import pandas as pd

from harness.study.spec import LoadedStudy, Trial
from harness.tracking import Tracker, run_seconds


def paper_table(name: str) -> pd.DataFrame:
    """A paper's table shipped with the package (harness/paper_tables/<name>)."""
    with importlib.resources.files("harness").joinpath("paper_tables", name).open() as f:
        return pd.read_csv(f)


def markdown(df: pd.DataFrame) -> str:
    """A frame as a Markdown table."""
    from harness.console import format_table

    return format_table(df.to_dict("records"), list(df.columns), markdown=True)


def finished_values(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, metric: str,
                    best: bool) -> list[tuple[Trial, Any, float]]:
    """(trial, its finished run, value) for every finished, not skipped trial: the best (lowest) logged value of
    ``metric`` when ``best`` (best-checkpoint studies), else the last."""
    finished = tracker.finished_runs(loaded.study.name)
    out = []
    for t in trials:
        run = finished.get(t.config_hash)
        if run is None or run.data.tags.get("harness.skipped"):
            continue
        if best:
            value = min((m.value for m in tracker.client.get_metric_history(run.info.run_id, metric)),
                        default=math.nan)
        else:
            value = run.data.metrics.get(metric, math.nan)
        out.append((t, run, value))
    return out


def axis_values(t: Trial) -> dict[str, Any]:
    """A trial's axis values by full key, zipped axes (``model.groups+train.ema_decay``) split into their keys."""
    return {kk: vv for k, v in t.axes.items() for kk, vv in (zip(k.split("+"), v) if "+" in k else [(k, v)])}


def axis_keys(trials: list[Trial]) -> list[str]:
    """Every axis key of the trials (zipped axes split), in the order the study writes them: with the variant and
    dataset, what identifies a configuration, so tables and plots must key by them and never pool their values
    as if they were seeds."""
    return list(dict.fromkeys(k for t in trials for k in axis_values(t)))


def trial_histories(trials: list[Trial], tracker: Tracker, keys: list[str]) -> pd.DataFrame:
    """Long table: one row per (trial, step) with the requested metric keys, for the trials' FINISHED runs."""
    finished = tracker.finished_runs(trials[0].study) if trials else {}
    rows: list[dict[str, Any]] = []
    for t in trials:
        run = finished.get(t.config_hash)
        if run is None:
            continue
        per_step: dict[int, dict[str, Any]] = {}
        for key in keys:
            for m in tracker.client.get_metric_history(run.info.run_id, key):
                per_step.setdefault(m.step, {})[key] = m.value
                if key == keys[0]:  # seconds from the run's start to this evaluation's logging (time-to-quality)
                    per_step[m.step]["time_s"] = max(0.0, (m.timestamp - run.info.start_time) / 1000)
        for step, vals in sorted(per_step.items()):
            rows.append({"hash": t.config_hash, "variant": t.variant, "dataset": t.dataset, "seed": t.seed,
                         **axis_values(t), "step": step,
                         "wall_s": run_seconds(run),
                         "diagnostic": t.diagnostic, **vals})
    return pd.DataFrame(rows)


def provenance(trials: list[Trial], tracker: Tracker) -> str:
    """Where and how long: the wall-clock span of the trials' finished runs and the machine they ran on."""
    by_hash = tracker.trial_runs(trials[0].study) if trials else {}
    finished = [r for t in trials for r in by_hash.get(t.config_hash, [])[:1] if r.info.status == "FINISHED"]
    if not finished:
        return "No finished trials yet."
    start = min(r.info.start_time for r in finished) / 1000
    end = max(r.info.end_time or r.info.start_time for r in finished) / 1000
    busy = sum(run_seconds(r) or 0.0 for r in finished)
    tags = finished[0].data.tags
    machine = tags.get("harness.machine", "unknown machine")
    versions = tags.get("harness.versions", "")
    return (f"{len(finished)}/{len(trials)} trials finished; wall clock {(end - start) / 60:.1f} min from the first "
            f"start to the last end ({busy / 60:.1f} trial-minutes), on {machine} ({tags.get('harness.device', '?')});"
            f" {versions}.")
