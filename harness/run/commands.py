"""The commands that only read a study's MLflow store: `harness status`, `harness table`, `harness compare` and
`harness study --dry-run`. None of them trains, opens a run or touches Ray."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.console import format_table
from harness.run.plan import Plan, plan_study, trial_table
from harness.run.preflight import _data_hashes_if_available
from harness.run.session import StudySession, no_store
from harness.study.spec import Trial, expand_trials
from harness.tracking import TAG, Tracker

Echo = Callable[[str], None]
STATUS = {"done": "done", "failed": "failed", "new": "missing"}


def show_plan(session: StudySession, n_trials: int, echo: Echo = print) -> Plan:
    """`harness study --dry-run`: the trial table, each trial marked done or not from the store if there is one."""
    loaded = session.loaded
    plan = plan_study(loaded, _existing_tracker(session))
    echo(f"study {loaded.study.name} [profile {loaded.profile}]: {n_trials} trials")
    echo(trial_table(plan))
    return plan


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


def study_status(session: StudySession, echo: Echo = print) -> Plan:
    """`harness status`: every trial of the study with its state from MLflow, the failure reasons, and a summary."""
    loaded = session.loaded
    plan = plan_study(loaded, _existing_tracker(session))
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
    echo(f"study {loaded.study.name} [profile {loaded.profile}], store {session.store_uri}")
    echo(format_table(rows, cols))
    counts = {k: sum(v == k for v in status.values()) for k in ("done", "running", "interrupted", "failed", "missing")}
    echo(f"{len(plan.trials)} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k == "done"))
    return plan


def write_tables(session: StudySession, echo: Echo = print) -> list[Path]:
    """`harness table`: regenerate tables and plots from MLflow without training; prints the study's main table
    (Table 1, or each substudy's) before the files written, so the results are read where the command was run."""
    from harness.reporting.tables import write_study_report

    trials, tracker = _open_store(session)
    written, main = write_study_report(session.loaded, trials, tracker, session.results)
    echo(main)
    echo("")
    for w in written:
        echo(f"wrote {w}")
    return written


def compare_study(session: StudySession, by: str, metric: str | None = None, baseline: str | None = None,
                  substudy: str | None = None, echo: Echo = print, margin: float | None = None):
    """`harness compare`: arms of ``by`` against the baseline arm, written beside the study's tables."""
    from harness.reporting.compare import run_compare

    trials, tracker = _open_store(session)
    out_dir = session.out_dir
    res, text, written = run_compare(session.loaded, trials, tracker, by, metric, baseline, out_dir, substudy,
                                     margin)
    from harness.reporting.report import refresh_appendix

    report = refresh_appendix(out_dir)  # the report lists the comparison too
    written += [report] if report else []
    echo(text)
    for w in written:
        echo(f"wrote {w}")
    return res


def _existing_tracker(session: StudySession) -> Tracker | None:
    """A tracker on the study's store when there is one (None: nothing has run yet), with the data fingerprints
    when the data is there."""
    tracker = session.tracker() if session.has_store() else None
    if tracker is not None:
        tracker.data_hashes = _data_hashes_if_available(session.loaded)
    return tracker


def _open_store(session: StudySession) -> tuple[list[Trial], Tracker]:
    """The study's trials and a tracker on its store, which must exist (for `table` and `compare`)."""
    trials = expand_trials(session.loaded)
    if not session.has_store():
        raise no_store(session.store_uri, f"run `{session.command('study')}` first")
    tracker = session.tracker()
    tracker.data_hashes = _data_hashes_if_available(session.loaded)
    return trials, tracker
