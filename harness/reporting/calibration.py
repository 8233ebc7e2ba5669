"""The metric floors a study's calibration runs hold (harness.run.calibrate measures them): which group of trials
a floor serves, and the floors of a study's groups for its reports.

A group is what determines a floor: the recipe, the dataset (its data section, not where it lives), and the
evaluation keys the recipe's measurement reads (n, extractor and weights, metrics, the point-cloud EMD settings),
with the number of draws.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness.study.spec import LoadedStudy, Trial
from harness.tracking import Tracker

# the evaluation keys a floor depends on (sampling keys do not matter: the floor has no sampler)
EVAL_KEYS = ("n_samples", "extractor", "inception_weights", "metrics", "emd_n", "runs")


def calibration_key(t: Trial, draws: int) -> str:
    data = {k: v for k, v in t.data.items() if k not in ("root", "download")}
    ev = {k: t.eval.get(k) for k in EVAL_KEYS if t.eval.get(k) is not None}
    blob = json.dumps({"recipe": t.recipe, "dataset": t.dataset, "data": data, "eval": ev, "draws": draws},
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def calibration_groups(trials: list[Trial], draws: int) -> dict[str, Trial]:
    """Calibration key -> the first trial of the group (its payload carries the settings)."""
    out: dict[str, Trial] = {}
    for t in trials:
        out.setdefault(calibration_key(t, draws), t)
    return out


def calibration_name(t: Trial) -> str:
    ev = t.eval
    what = f"emd_n={ev['emd_n']}" if ev.get("emd_n") else f"n={ev.get('n_samples')}"
    return f"calibration {t.dataset} {what} {ev.get('extractor', '')}".strip()


def floors_table(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker) -> list[dict[str, Any]]:
    """The logged floors of the study's groups, one row per (dataset, reference, metric), for the reports."""
    draws = loaded.study.calibration_draws
    if not draws:
        return []
    runs = tracker.calibration_runs(loaded.study.name)
    rows = []
    for key, t in calibration_groups(trials, draws).items():
        run = runs.get(key)
        if run is None:
            continue
        for f in _floors(tracker, run):
            rows.append({"dataset": t.dataset, **f})
    return rows


def _floors(tracker: Tracker, run: Any) -> list[dict[str, Any]]:
    """A calibration run's floors, from its ``harness.floors`` tag (NaN spreads come back as NaN)."""
    try:
        return json.loads(run.data.tags.get("harness.floors", "[]"))
    except ValueError:  # a tag cut at the store's length limit: the run's floors.json artifact has them all
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(tracker.client.download_artifacts(run.info.run_id, "floors.json", tmp)).read_text())
