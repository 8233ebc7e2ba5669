"""A study's trials against what its MLflow store already holds: which are done, failed, to resume or new."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.console import format_table
from harness.study.spec import LoadedStudy, Trial, expand_trials
from harness.tracking import Tracker


@dataclass
class Plan:
    loaded: LoadedStudy
    trials: list[Trial]
    state: dict[str, str]  # config hash -> done | failed | resume | new
    runs: dict[str, Any] = field(default_factory=dict)  # config hash -> newest MLflow run


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
    has_substudies = any(name for name, _ in plan.loaded.substudies)
    for t in plan.trials:
        rows.append({
            "variant": t.variant, "dataset": t.dataset, "substudies": ",".join(t.substudies),
            "axes": t.axes_text(),
            "seed": t.seed, "params": t.params, "gflops": t.gflops,
            "steps": t.train.get("steps") or t.train.get("epochs"),
            "hash": t.config_hash, "trained_in": t.train_hash,
            "done": {"done": "yes", "failed": "FAILED", "resume": "partial"}.get(plan.state[t.config_hash], "no"),
        })
    cols = ["variant", "dataset", *(["substudies"] if has_substudies else []), "axes", "seed", "params", "gflops",
            "steps" if not any("epochs" in t.train for t in plan.trials) else "epochs", "hash",
            *(["trained_in"] if any(t.train_hash for t in plan.trials) else []), "done"]
    for r in rows:
        r["epochs"] = r["steps"]
    return format_table(rows, cols)
