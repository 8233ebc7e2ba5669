"""A study's trials against what its MLflow store already holds: which are done, failed, to resume or new."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.console import format_table
from harness.run.estimate import TrialEstimate
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


def estimate_table(plan: Plan, estimates: list[TrialEstimate]) -> str:
    """The compute estimate of each trial (harness.run.estimate), in the trial table's order: samples trained on,
    training + evaluation TFLOP, GPU-hours at the profile's scale, minutes on this machine and where their rate came
    from."""
    rows = []
    for t, e in zip(plan.trials, estimates):
        minutes = e.minutes
        rows.append({
            "variant": t.variant, "dataset": t.dataset, "axes": t.axes_text(), "seed": t.seed, "hash": t.config_hash,
            "train samples": e.train_samples, "TFLOP": round(e.flops / 1e12, 3), "GPU-h": round(e.gpu_hours, 4),
            "min here": round(minutes, 2) if minutes is not None else None,
            "rate here": e.note or e.rate_source,
        })
    return "estimate per trial:\n" + format_table(rows, ["variant", "dataset", "axes", "seed", "hash", "train samples",
                                                          "TFLOP", "GPU-h", "min here", "rate here"])
