"""`harness plan`: how many seeds (and samples n) a study needs to decide its comparisons at a stated power, and what
that costs here and at the profile's scale.

A question is one arm against its baseline: in a Table-1 study each variant against ``table.baseline``; in a study of
substudies, each setting of a substudy against its first. From the finished trials in the store (the pilot), each
question has the standard deviation of its paired differences over seeds; the effect to detect is ``--effect``, else
the smallest difference the paper's table reports between the study's arms and their baseline, else the difference
the pilot observed. The seeds needed for 80% power at 5% come from the paired t-test's power (noncentral t,
harness.reporting.verdicts). Raising n shrinks only the sampling part of that spread: the calibrated real-vs-real
spread (or the logged sampling spread) at the study's n says how large it is, and it scales as 1/n in variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.calibration import floors_table
from harness.reporting.compare import study_metric, trial_values
from harness.reporting.sources import paper_table
from harness.reporting.verdicts import power, seeds_needed
from harness.run.estimate import estimate_trials
from harness.run.session import StudySession
from harness.study.spec import LoadedStudy, Trial, expand_trials

Echo = Callable[[str], None]
N_FACTORS = (1, 4)  # n as the study has it, and four times as many samples


@dataclass(frozen=True)
class Question:
    substudy: str
    key: str  # what the arms differ in: variant, or a config key
    arm: Any
    baseline: Any
    pairs: int  # seeds the pilot has for both
    diff: float  # the pilot's mean paired difference (arm - baseline)
    sd: float  # standard deviation of the paired differences (nan with fewer than 2 pairs)
    effect: float
    effect_source: str
    needed: dict[int, int | None]  # n factor -> seeds per arm for the target power (None: beyond reach)
    power_now: float  # the power the pilot's seeds have at that effect


def _questions(loaded: LoadedStudy, trials: list[Trial]) -> list[tuple[str, str, list[Trial]]]:
    """(substudy, key, its trials): the variants of a Table-1 study, or each substudy's first axis (its variants when
    it varies them)."""
    out = []
    for name, sub in loaded.substudies:
        mine = [t for t in trials if not name or name in t.substudies]
        if len(sub.variants) > 1:
            key = "variant"
        elif sub.axes:
            key = next(iter(sub.axes)).split("+")[0]
        else:
            continue
        out.append((name, key, mine))
    return out


def _paper_effect(loaded: LoadedStudy, substudy: str, key: str, arms: list[Any], baseline: Any,
                  metric: str) -> float | None:
    """The smallest nonzero difference between an arm and the baseline in the paper's table (None: no paper table,
    or it has no value for them)."""
    s = loaded.study
    if not s.table.paper_csv:
        return None
    paper = paper_table(s.table.paper_csv)
    diffs = []
    if key == "variant" and "variant" in paper and metric in paper:
        for _ds, g in paper.groupby("dataset", sort=False):
            vals = dict(zip(g.variant, g[metric]))
            if baseline in vals:
                diffs += [abs(vals[a] - vals[baseline]) for a in arms if a in vals and a != baseline]
    elif "study" in paper and "setting" in paper:
        rows = paper[paper.study == substudy]
        for col in [c for c in rows.columns if c.startswith(f"{metric}_")]:
            vals = {str(k): v for k, v in zip(rows.setting, rows[col]) if pd.notna(v)}
            if str(baseline) in vals:
                diffs += [abs(vals[str(a)] - vals[str(baseline)]) for a in arms if str(a) in vals and a != baseline]
    diffs = [d for d in diffs if d > 0]
    return min(diffs) if diffs else None


def _sampling_sd(floors: list[dict[str, Any]], metric: str) -> float:
    sds = [f["sd"] for f in floors if f["metric"] == metric and f["reference"] == "real vs real" and f["sd"] == f["sd"]]
    return float(np.mean(sds)) if sds else 0.0


def plan_questions(loaded: LoadedStudy, trials: list[Trial], tracker, effect: float | None,
                   target: float = 0.8) -> list[Question]:
    """Every question of the study with the seeds it needs (harness.reporting.verdicts.seeds_needed)."""
    s = loaded.study
    metric = study_metric(loaded)
    best = s.table.kind == "best_checkpoint"
    floors = floors_table(loaded, trials, tracker) if tracker is not None else []
    s0 = _sampling_sd(floors, metric.key)
    out = []
    for substudy, key, mine in _questions(loaded, trials):
        df = (trial_values(loaded, mine, tracker, metric.key, best, key) if tracker is not None else
              pd.DataFrame(columns=["arm", "context", "seed", "value"]))
        # the arms in the study's own order (its variants, or the axis values as written), as the tables show them
        sub = dict(loaded.substudies)[substudy]
        declared = list(sub.variants) if key == "variant" else [
            v[0] if "+" in k else (tuple(v) if isinstance(v, list) else v)  # a zipped axis: its first key's value
            for k, vals in sub.axes.items() if k.split("+")[0] == key for v in vals]
        seen = set(df.arm)
        arms = [a for a in declared if a in seen] + [a for a in dict.fromkeys(seen) if a not in declared]
        arms = arms or declared
        if key == "variant" and s.table.baseline in arms:
            baseline = s.table.baseline
        else:
            baseline = arms[0] if arms else None
        if baseline is None:
            continue
        paper = _paper_effect(loaded, substudy, key, arms, baseline, s.table.metric)
        base = df[df.arm == baseline].set_index(["context", "seed"]).value
        for arm in arms:
            if arm == baseline:
                continue
            mine_v = df[df.arm == arm].set_index(["context", "seed"]).value
            paired = mine_v.to_frame("a").join(base.rename("b"), how="inner").dropna()
            d = (paired.a - paired.b).to_numpy()
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
            diff = float(d.mean()) if len(d) else math.nan
            if effect is not None:
                eff, source = effect, "--effect"
            elif paper is not None:
                eff, source = paper, "smallest paper difference"
            else:
                eff, source = abs(diff), "pilot difference"
            needed: dict[int, int | None] = {}
            for factor in N_FACTORS:
                # the sampling part of var(d) (two evaluations, 2 s0^2 at n) shrinks as 1/n; the rest is seed noise
                var = max(sd**2 - 2 * s0**2, 0.0) + 2 * s0**2 / factor if sd == sd else math.nan
                needed[factor] = seeds_needed(eff, math.sqrt(var), target) if var == var and eff else None
            now = power(eff, sd, len(d)) if sd == sd and eff else math.nan
            out.append(Question(substudy, key, arm, baseline, len(d), diff, sd, eff, source, needed, now))
    return out


def plan_study(session: StudySession, effect: float | None = None, target: float = 0.8,
               echo: Echo = print) -> list[Question]:
    """`harness plan`: print each question's seeds needed and what running them would cost."""
    from harness.console import format_table

    loaded = session.loaded
    trials = expand_trials(loaded)
    if not _questions(loaded, trials):  # before the store is read and rates are measured
        echo("nothing to compare: every substudy has one variant and no axis, so there is no question to plan for")
        return []
    tracker = session.tracker() if session.has_store() else None
    questions = plan_questions(loaded, trials, tracker, effect, target)
    finished = tracker.finished_runs(loaded.study.name) if tracker is not None else {}
    seeds_now = max(1, len(loaded.study.seeds))
    estimates = estimate_trials(loaded, trials, runs=finished)
    n0 = sorted({int(t.eval.get("n_samples") or 0) for t in trials})
    metric = study_metric(loaded)
    echo(f"{loaded.study.name} [profile {loaded.profile}]: seeds per arm for {target:.0%} power at 5% (two-sided "
         f"paired t-test) on {metric.key}, from {len(finished)} finished trial(s) in the store; n = "
         f"{'/'.join(map(str, n0))} samples per evaluation now")
    if not questions or all(q.pairs < 2 for q in questions):
        pilot = session.command("study") + " --set 'seeds=[0,1,2]'"
        minutes = _cost(estimates, 3 / seeds_now, 1)[0]
        when = f" (about {minutes:.2g} trial-minutes here)" if minutes is not None else ""
        echo(f"no pilot with two or more seeds per arm in the store: run `{pilot}`{when}, then plan again")
    rows = []
    for q in questions:
        rows.append({
            "substudy": q.substudy or "-", "arm": f"{q.key}={q.arm}" if q.key != "variant" else q.arm,
            "baseline": q.baseline, "pairs": q.pairs, "diff": _fmt(q.diff), "sd(diff)": _fmt(q.sd),
            "effect": f"{_fmt(q.effect)} ({q.effect_source})", "power now": _fmt(q.power_now),
            **{f"seeds (n x{f})": _needed(q, f) for f in N_FACTORS}})
    if rows:
        echo(format_table(rows, list(rows[0])))
    worst = {f: max((q.needed[f] or 0 for q in questions if q.pairs >= 2), default=0) for f in N_FACTORS}
    for f in N_FACTORS:
        if worst[f]:
            minutes, gpu = _cost(estimates, worst[f] / seeds_now, f)
            here = f"{minutes:,.0f} trial-minutes here" if minutes is not None else "minutes here not measured"
            echo(f"every question decided at n x{f}: {worst[f]} seeds per arm, an estimated {here}, {gpu:,.3g} "
                 "GPU-hours at the profile's scale")
    return questions


def _cost(estimates, seed_factor: float, n_factor: int) -> tuple[float | None, float]:
    """Trial-minutes here and GPU-hours for the study's trials with ``seed_factor`` times the seeds and n scaled by
    ``n_factor`` (evaluation cost scales with n)."""
    from harness.run.estimate import PEAK_FLOPS, UTILISATION

    minutes, gpu = 0.0, 0.0
    for e in estimates:
        flops = e.train_flops + n_factor * e.eval_flops
        gpu += flops / (PEAK_FLOPS[e.precision] * UTILISATION) / 3600 * seed_factor
        if minutes is not None and flops:
            minutes = minutes + flops / e.rate / 60 * seed_factor if e.rate else None
    return minutes, gpu


def _needed(q: Question, factor: int) -> Any:
    if q.needed[factor] is not None:
        return q.needed[factor]
    return "> 10,000" if q.sd == q.sd and q.effect else "– (pilot)"


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"
