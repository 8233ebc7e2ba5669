"""`harness compare`: the arms of one study key side by side, each against the study's baseline with its uncertainty.

An arm is the set of finished trials sharing one value of ``--by`` (a variant, a dataset, or any resolved config
key such as ``train.lr``). Its value per trial is the study's table metric: the best evaluation for best-checkpoint
studies (Table 1 style), the last one otherwise. Each arm is paired with the baseline arm trial by trial on
everything else that identifies a trial (dataset, variant, every swept key, seed), so seed-to-seed variation
cancels; the difference comes with a paired t-test and its 95% confidence interval (scipy) when there are at least
two pairs, and is labelled as a single pair otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError
from harness.reporting.metrics import Metric, resolve
from harness.reporting.sources import finished_values
from harness.study.spec import LoadedStudy, Trial, out_file, safe_component
from harness.tracking import Tracker

IDENTITY = ("dataset", "variant")


def resolve_key(trials: list[Trial], by: str) -> str:
    """``variant``, ``dataset``, a full config key (``train.lr``) or the unique key ending in ``.<by>``."""
    if by in IDENTITY or "." in by:
        return _safe_key(by)
    keys = {f"{section}.{k}" for t in trials for section in ("model", "train", "eval", "data")
            for k in getattr(t, section)}
    matches = sorted(k for k in keys if k.endswith(f".{by}"))
    if len(matches) != 1:
        raise UserError(f"--by {by!r} is {'ambiguous: ' + ', '.join(matches) if matches else 'not a config key'}; "
                        "use variant, dataset or a full key such as train.lr")
    return _safe_key(matches[0])


def _safe_key(key: str) -> str:
    """The key names compare_<key>.{md,csv}: the rule of study names, so `--by ../x` cannot write elsewhere."""
    return safe_component(key, "--by key", "harness compare")


def _value(t: Trial, key: str) -> Any:
    if key in IDENTITY:
        return getattr(t, key)
    section, _, rest = key.partition(".")
    conf = {"model": t.model, "train": t.train, "eval": t.eval, "data": t.data}.get(section)
    if conf is None or rest not in conf:
        raise UserError(f"--by {key!r} is not a key of this study's trials")
    v = conf[rest]
    return tuple(v) if isinstance(v, list) else v


def study_metric(loaded: LoadedStudy, name: str | None = None) -> Metric:
    """The catalogue's metric for a metric name or logged key (default: the study's table metric) under the study's
    extractor: classifier-feature distances keep their own names, never FID/KID; an uncatalogued key is
    lower-better."""
    s = loaded.study
    return resolve(name or s.table.metric, s.eval.extractor)


def trial_values(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, metric: str, best: bool,
                 by: str) -> pd.DataFrame:
    """One row per finished trial: its ``by`` value, the context it is paired on, its seed and metric value."""
    swept = sorted({k for t in trials for k in t.axes for k in k.split("+")} - {by})
    rows = []
    for t, _run, value in finished_values(loaded, trials, tracker, metric, best):
        context = tuple((k, str(_value(t, k))) for k in (*IDENTITY, *swept) if k != by)
        rows.append({"arm": _value(t, by), "context": context, "seed": t.seed, "value": value,
                     "diagnostic": t.diagnostic})
    return pd.DataFrame(rows, columns=["arm", "context", "seed", "value", "diagnostic"])


def compare_arms(df: pd.DataFrame, baseline: Any, higher_better: bool, margin: float | None = None) -> pd.DataFrame:
    """Per arm: n, mean, std, and against the baseline the paired mean difference with its 95% t interval, the
    paired t-test's p and the verdict of harness.reporting.verdicts (better/worse when the interval excludes 0;
    equivalent when asked with a ``margin`` and shown by two one-sided tests; within noise; undecided with fewer
    than two pairs). A t interval rather than a bootstrap: with 2-5 pairs a percentile bootstrap is far too
    narrow."""
    from harness.reporting.verdicts import compare

    base = df[df.arm == baseline].set_index(["context", "seed"]).value
    out = []
    for arm, g in df.groupby("arm", sort=False):
        row: dict[str, Any] = {"arm": arm, "n": int(g.value.notna().sum()), "mean": g.value.mean(),
                               "std": g.value.std(ddof=1) if g.value.notna().sum() > 1 else math.nan}
        if arm == baseline:
            row["vs_baseline"] = "baseline"
            out.append(row)
            continue
        paired = g.set_index(["context", "seed"]).value.to_frame("arm").join(base.rename("base"), how="inner").dropna()
        row["pairs"] = len(paired)
        if not len(paired):
            row["vs_baseline"] = "undecided (no paired trial)"
            out.append(row)
            continue
        v = compare(paired["arm"], paired["base"], higher_better, paired=True, margin=margin)
        row["diff"] = v.diff
        if not math.isnan(v.lo):
            row["ci_low"], row["ci_high"], row["p_paired_t"] = v.lo, v.hi, v.p
        row["vs_baseline"] = v.verdict if not math.isnan(v.lo) else f"{v.verdict} ({v.method}: add seeds)"
        if margin is not None:
            row["p_equivalence"] = v.p_equivalence
        out.append(row)
    return pd.DataFrame(out)


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def markdown(res: pd.DataFrame, caption: str) -> str:
    cols = ["arm", "n", "mean ± std", "pairs", "diff vs baseline", "95% CI (paired t)", "p (paired t)", "verdict"]
    lines = [caption, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res.to_dict("records"):
        low = r.get("ci_low", math.nan)
        ci = f"[{_fmt(low)}, {_fmt(r['ci_high'])}]" if isinstance(low, float) and not math.isnan(low) else "–"
        cells = [str(r["arm"]), str(r["n"]), f"{_fmt(float(r['mean']))} ± {_fmt(float(r['std']))}",
                 _fmt(r.get("pairs", math.nan)) if r["vs_baseline"] != "baseline" else "–",
                 _fmt(r.get("diff", math.nan)), ci, _fmt(r.get("p_paired_t", math.nan), 3), r["vs_baseline"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _question_trials(loaded: LoadedStudy, trials: list[Trial], key: str, substudy: str | None) -> list[Trial]:
    """In a study made of substudies, the trials of the substudies that vary ``key`` (or of ``substudy``): the
    baseline arm is then the baseline of that question, not every trial that happens to share its value."""
    names = [name for name, _ in loaded.substudies if name]
    if not names:
        return trials
    if substudy is not None:
        if substudy not in names:
            raise UserError(f"--substudy {substudy!r} is not one of {', '.join(names)}")
        chosen = {substudy}
    else:
        chosen = {n for n in names if len({_value(t, key) for t in trials if n in t.substudies}) > 1}
        if not chosen:
            raise UserError(f"no substudy of {loaded.study.name} varies {key}; pick one with --substudy")
    return [t for t in trials if chosen & set(t.substudies)]


def run_compare(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, by: str, metric: str | None,
                baseline: str | None, out_dir: Path, substudy: str | None = None, margin: float | None = None
                ) -> tuple[pd.DataFrame, str, list[Path]]:
    """Compare the study's arms along ``by``; writes compare_<by>.{md,csv} under ``out_dir``."""
    s = loaded.study
    key = resolve_key(trials, by)
    chosen = study_metric(loaded, metric)
    metric_key = chosen.key
    trials = _question_trials(loaded, trials, key, substudy)
    df = trial_values(loaded, trials, tracker, metric_key, s.table.kind == "best_checkpoint", key)
    if df.empty or df.value.isna().all():
        raise UserError(f"no finished trial of {s.name} (profile {loaded.profile}) has metric {metric_key!r}")
    arms = list(dict.fromkeys(df.arm))
    if baseline is None and key == "variant" and s.table.baseline in arms:
        base = s.table.baseline  # the study's reference variant
    elif baseline is None:
        base = arms[0]
    else:
        found = [a for a in arms if str(a) == baseline]
        if not found:
            raise UserError(f"--baseline {baseline!r} is not one of the arms of {key}: {', '.join(map(str, arms))}")
        base = found[0]
    higher = chosen.higher_better
    if margin is not None and not margin > 0:
        raise UserError(f"--margin must be a positive difference in {metric_key}'s units, got {margin:g}")
    res = compare_arms(df, base, higher, margin)
    seeds = sorted(set(df.seed))
    caption = (f"{s.name}, profile `{loaded.profile}`: arms of `{key}` on `{metric_key}` "
               f"({'higher' if higher else 'lower'} is better; {'best evaluation' if s.table.kind == 'best_checkpoint' else 'final value'} "  # noqa: E501
               f"per trial), each paired with baseline `{base}` on everything else that identifies a trial "
               f"(seeds {', '.join(map(str, seeds))}). diff: mean paired difference (arm - baseline), with its 95% "
               "t interval and the paired t-test's p; verdict: better/worse when the interval excludes 0, "
               + (f"equivalent when two one-sided tests place the difference within ±{margin:g}, " if margin else "")
               + "within noise otherwise, undecided with fewer than two pairs.")
    pooled = sorted({k for t in trials for k in t.axes for k in k.split("+")} - {key})
    if pooled:  # an arm's own mean spans the other axes' values; only the pairs keep them apart
        caption += (f" Each arm's mean ± std pools its trials across {', '.join(pooled)} (n counts them); the "
                    "paired difference compares trials at the same values.")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "compare_" + key.replace(".", "_")
    md, csv = out_file(out_dir, f"{stem}.md"), out_file(out_dir, f"{stem}.csv")
    text = markdown(res, caption)
    md.write_text(f"# {s.name}: {key}\n\n{text}")
    res.to_csv(csv, index=False)
    return res, text, [md, csv]
