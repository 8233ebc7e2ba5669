"""The driver's Tune callback: the single MLflow writer, and a live progress line on the terminal."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from harness.errors import infrastructure_reason, one_line
from harness.study.spec import Trial
from harness.tracking import TAG, Tracker, TrialRun


def _fmt_s(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Trials done/running/failed, the current step of each running trial, and an ETA from observed speed."""

    def __init__(self, todo: list[Trial], state: dict[str, str], echo, every_s: float = 10.0) -> None:
        self.todo = {t.config_hash: t for t in todo}
        # Progress is counted in what the recipe reports as its step: steps, or epochs for epoch-based recipes.
        self.total_steps = {h: int(t.train.get("steps") or t.train.get("epochs") or 0) for h, t in self.todo.items()}
        self.step: dict[str, int] = {}
        self.first: dict[str, tuple[float, int]] = {}
        self.done_before = sum(v == "done" for v in state.values())
        self.n_all = len(state)
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.interrupted: set[str] = set()  # stopped by Ray or the machine (closed KILLED, resumed by a rerun)
        self.echo = echo
        self.every_s = every_s
        self._last = 0.0
        self.started = time.time()

    def update(self, h: str, step: int) -> None:
        now = time.time()
        self.first.setdefault(h, (now, step))
        self.step[h] = step
        if now - self._last >= self.every_s:
            self._last = now
            self.echo(self.line())

    def end(self, h: str, ok: bool) -> None:
        (self.finished if ok else self.failed).add(h)
        self.echo(self.line())

    def interrupt(self, h: str, reason: str) -> None:
        self.interrupted.add(h)
        self.echo(f"interrupted {self.todo[h].run_name}: {reason}")

    def eta(self) -> float | None:
        rates = []
        for h, (t0, s0) in self.first.items():
            dt, ds = time.time() - t0, self.step.get(h, s0) - s0
            if dt > 0 and ds > 0:
                rates.append(ds / dt)
        if not rates:
            return None
        running = max(1, len(self.running()))
        remaining = sum(max(0, self.total_steps[h] - self.step.get(h, 0))
                        for h in self.todo if h not in self.finished | self.failed | self.interrupted)
        return remaining / (sum(rates) / len(rates) * running)

    def running(self) -> list[str]:
        return [h for h in self.step if h not in self.finished | self.failed | self.interrupted]

    def line(self) -> str:
        run = ", ".join(f"{self.todo[h].variant} {self.step[h]}/{self.total_steps[h]}" for h in self.running())
        eta = self.eta()
        return (f"[{time.strftime('%H:%M:%S')}] done {self.done_before + len(self.finished)}/{self.n_all}  "
                f"running {len(self.running())}{f' ({run})' if run else ''}  failed {len(self.failed)}  "
                + (f"interrupted {len(self.interrupted)}  " if self.interrupted else "") +
                f"elapsed {_fmt_s(time.time() - self.started)}" + (f"  ETA {_fmt_s(eta)}" if eta is not None else ""))

    def summary(self) -> None:
        cut = f", interrupted {len(self.interrupted)}" if self.interrupted else ""
        self.echo(f"finished {len(self.finished)} trial(s), failed {len(self.failed)}{cut}, in "
                  f"{_fmt_s(time.time() - self.started)}")


class StudyCallback(Callback):
    """Runs in the driver: logs every trial report to its MLflow child run and closes runs with their status."""

    def __init__(self, tracker: Tracker, runs: dict[str, TrialRun], progress: Progress) -> None:
        self.tracker = tracker
        self.runs = runs
        self.progress = progress
        self.final_state: dict[str, str] = {}
        self.saw_done: set[str] = set()
        self.interruptions: dict[str, str] = {}  # config hash -> why Ray or the machine stopped the trial

    @staticmethod
    def _hash(trial) -> str:
        return trial.config["cfg"]["trial_hash"]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        tr = self.runs[self._hash(trial)]
        tr.ensure(self.tracker)
        if tr.attempt_start is None:  # a Tune restart (max_failures) continues the same attempt's clock
            tr.attempt_start = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info) -> None:
        h = self._hash(trial)
        tr = self.runs[h]
        tr.ensure(self.tracker)
        step = int(result.get("step", 0))
        metrics = result.get("metrics") or {}
        self.tracker.log_metrics(tr, step, metrics)
        for path in (result.get("artifacts") or "").splitlines():
            p = Path(path)
            if p.exists():
                self.tracker.log_artifact(tr.run_id, p, p.parent.name)
        if result.get("tags"):
            self.tracker.set_tags(tr.run_id, result["tags"])
        if result.get("final"):  # not "done": Tune stops a trial whose result says done
            self.saw_done.add(h)
        self.progress.update(h, step)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        h = self._hash(trial)
        if h in self.saw_done:
            self._close(h, "FINISHED")
        else:
            self._close(h, "FAILED", "trial ended without its final report")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """A recipe's own failure (it wrote failure.txt, or raised) closes the run FAILED; Ray or the machine
        stopping the trial (a lost node or worker process, Ray's memory monitor, a full disk) closes it KILLED, so
        the same command resumes it without ``--retry-failed``."""
        h = self._hash(trial)
        own, text = _failure_reason(trial)
        infra = None if own else infrastructure_reason(text)
        if infra:
            self.interruptions[h] = infra
            self._close(h, "KILLED")
            self.progress.interrupt(h, infra)
        else:
            self._close(h, "FAILED", " ".join(own.split()) or exception_line(text))

    def _close(self, h: str, status: str, reason: str | None = None) -> None:
        tr = self.runs[h]
        if tr.status != "RUNNING":
            return
        if not tr.run_id and status == "KILLED":
            return  # never started: nothing to record, the rerun starts it fresh
        tr.ensure(self.tracker)
        if reason:
            self.tracker.set_tags(tr.run_id, {f"{TAG}failure_reason": reason[:5000]})
        self.tracker.finish_trial(tr, status)
        tr.status = status
        self.final_state[h] = {"FINISHED": "done", "FAILED": "failed"}.get(status, "resume")
        if status in ("FINISHED", "FAILED"):
            self.progress.end(h, status == "FINISHED")

    def close_all(self, status: str) -> list[str]:
        """Close every run still open (interrupt: KILLED, resumable; otherwise FAILED). Best effort: a run that
        cannot be closed (the store cannot be written, e.g. a full disk) is left for the next invocation, which
        closes runs no live driver owns; returns why closing failed, if it did."""
        problems = []
        for h, tr in self.runs.items():
            if tr.status == "RUNNING":
                try:
                    self._close(h, status, None if status == "KILLED" else "trial did not complete")
                except Exception as e:  # noqa: BLE001 - reported in the driver's one sentence
                    problems.append(one_line(e, 120))
        return problems


def _failure_reason(trial) -> tuple[str, str]:
    """(the recipe's own reason from failure.txt in the trial's run dir, or ""; the text of Tune's error trace).
    The trace is read from the trial's local error file (``trial.get_error`` reads the synced copy in the storage
    path, which may not be there yet when the callback runs)."""
    run_dir = Path(trial.config["cfg"]["paths"]["run_dir"])
    f = run_dir / "failure.txt"
    own = ""
    try:
        own = f.read_text().strip() if f.exists() else ""
    except OSError:
        pass
    text = ""
    try:
        local = getattr(trial, "error_file", None)
        text = Path(local).read_text() if local and Path(local).exists() else str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - best effort: the trial already failed
        pass
    return own, text


NO_REASON = "trial raised an error"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the "ray::ImplicitFunc.train()" header
_FAILURE_HEADER = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)$", re.M)  # Tune appends one per failure
_FRAME = re.compile(r'^\s+File "')  # a traceback frame; its source and caret lines follow, indented
# "ValueError: boom", "harness.training.data.DataError: ...", "ray.exceptions.RayTaskError(ValueError): ...", or a
# bare "KeyboardInterrupt"; not Ray's "ray::ImplicitFunc.train() (pid=...)" header
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?:\((?P<inner>[A-Za-z_]\w*)\))?(?::(?!:)\s?(?P<message>.*))?$")


def exception_line(text: str) -> str:
    """``ExceptionType: message`` of the exception a trial raised, on one line, from the text Tune keeps for the trial
    (its error file: one "Failure # N" block per failure, each the str() of Ray's wrapper: a RayTaskError's traceback
    whose last frames are the recipe's, or a Ray Train WorkerGroupError whose message holds each rank's traceback).
    The exception is the line after the last traceback frame, continued by the message's further lines; the type
    loses its module and Ray's wrapper (``ray.exceptions.RayTaskError(ValueError)`` -> ``ValueError``), as the
    recipe's own failure.txt names it. ``NO_REASON`` when the text holds nothing to show."""
    text = _ANSI.sub("", text or "")
    blocks = _FAILURE_HEADER.split(text)
    lines = [ln.rstrip() for ln in blocks[-1].splitlines()]
    frames = [i for i, ln in enumerate(lines) if _FRAME.match(ln)]
    if frames:
        i = frames[-1] + 1
        while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
            i += 1  # the frame's source line and carets
        found = lines[i:]
    else:  # no traceback (a TuneError, say): the last line that reads as an exception, else the last line
        found = [ln for ln in lines if ln.strip()]
        starts = [i for i, ln in enumerate(found) if _EXCEPTION.match(ln) and ":" in ln]
        found = found[starts[-1]:] if starts else found[-1:]
    message = []
    for ln in found:
        if not ln.strip() or re.match(r"^(\[Rank \d+ Error Snippet\]|ray::)", ln):  # Ray's next traceback
            break
        message.append(ln)
    if not message:
        return NO_REASON
    first = message[0].strip()
    m = _EXCEPTION.match(first)
    if m and (m["message"] is not None or len(message) == 1):
        kind = m["inner"] or m["type"].rpartition(".")[2]
        first = f"{kind}: {m['message'].strip()}" if m["message"] is not None and m["message"].strip() else kind
    return " ".join(" ".join([first, *message[1:]]).split())[:5000]
