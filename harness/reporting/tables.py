"""`harness table`: MLflow -> pandas -> the paper's tables (Markdown, CSV, LaTeX) and figures (seaborn).

Every table states the profile, the training steps, the sample count n and the feature extractor it was produced
with (airbench-style provenance), and sits beside the paper's own numbers with the difference where they are the
same quantity. Distances in a classifier's feature space are labelled as such and never compared with FID.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from harness.reporting.calibration import floors_table
from harness.reporting.metrics import FEATURE_SPACES, Metric, image_distances, same_as_paper
from harness.reporting.sources import axis_keys, axis_values, paper_table, provenance, trial_histories
from harness.reporting.sources import markdown as _markdown
from harness.study.spec import LoadedStudy, Trial, out_file
from harness.tracking import Tracker

# Dataset names as the paper's tables print them.
PAPER_DATASET = {"cifar10": "CIFAR10", "artbench10": "Artbench10"}
# The papers' distances are Inception distances: their columns are labelled as such whatever we measured.
PAPER_DISTANCE, PAPER_KERNEL = image_distances("inception")


def best_checkpoint_table(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker) -> tuple[pd.DataFrame, str]:
    """Table 1 of the block-sharing paper: Steps (x1e-6), FID and KID (x1e4) of the best checkpoint per variant and
    dataset (the evaluation with the lowest distance), ours beside the paper's. Returns (numeric frame, caption).

    A row is one configuration: dataset, variant and every axis value (a column per axis key), so mean, std and
    ``seeds`` are over seeds only."""
    s = loaded.study
    dist, kern = image_distances(s.eval.extractor)
    dkey, kkey = dist.key, kern.key
    hist = trial_histories(trials, tracker, [dkey, kkey, "n_samples", f"{dkey}_sampling_sd"])
    paper = paper_table(s.table.paper_csv) if s.table.paper_csv else None
    axes = axis_keys(trials)
    matched = _paper_axes(paper, axes)
    floors = floors_table(loaded, trials, tracker)
    rows, by_seed = [], []
    for dataset, variant, values, hashes in configurations(trials, axes):
        sub = hist[hist.hash.isin(hashes)] if not hist.empty else hist
        best = []
        if not sub.empty and dkey in sub:
            for _h, g in sub.dropna(subset=[dkey]).groupby("hash"):
                best.append(g.loc[g[dkey].idxmin()])
        b = pd.DataFrame(best)
        row: dict[str, Any] = {"dataset": PAPER_DATASET.get(dataset, dataset), "variant": variant, **values,
                               "seeds": len(b)}
        by_seed.append(dict(zip(b.seed, b[dkey])) if not b.empty else {})
        row.update(_convergence_cells(sub, dkey, dist.higher_better, floor_sd(floors, dataset, dkey)))
        if s.table.quality_target is not None:
            row.update(_time_to_quality(sub, dkey, dist.higher_better, s.table.quality_target, trials, hashes))
        if not b.empty:
            row["wall_min"] = b.wall_s.mean() / 60
            row["steps_million"] = b.step.mean() / 1e6
            row[dkey] = b[dkey].mean()
            row[f"{dkey}_std"] = b[dkey].std(ddof=1) if len(b) > 1 else float("nan")
            if kkey in b:
                row[f"{kkey}_x1e4"] = b[kkey].mean() * 1e4
                row[f"{kkey}_x1e4_std"] = b[kkey].std(ddof=1) * 1e4 if len(b) > 1 else float("nan")
            row["n"] = int(b["n_samples"].iloc[0]) if "n_samples" in b else None
        if paper is not None:
            p = paper[(paper.dataset == row["dataset"]) & (paper.variant == variant)]
            for key in matched:  # the paper's numbers only beside our rows at the paper's own setting
                p = p[p[key].map(_cell) == _cell(row[key])]
            if not p.empty:
                row["paper_steps_million"] = p.steps_million.iloc[0]
                row["paper_fid"] = p.fid.iloc[0]
                row["paper_kid_x1e4"] = p.kid_x1e4.iloc[0]
                if same_as_paper("fid", s.eval.extractor) and dkey in row:
                    row["fid_diff"] = row["fid"] - row["paper_fid"]
                    row["kid_x1e4_diff"] = row.get("kid_x1e4", float("nan")) - row["paper_kid_x1e4"]
        rows.append(row)
    _verdict_cells(rows, by_seed, s.table.baseline, axes, dist.higher_better)
    df = pd.DataFrame(rows)
    steps = sorted({t.train.get("steps") for t in trials})
    n = sorted({t.eval["n_samples"] for t in trials})
    caption = (f"{s.name}, profile `{loaded.profile}`: best checkpoint (lowest {dist.long}) per variant; "
               f"trained {'/'.join(f'{x:,}' for x in steps)} steps, evaluated every {s.eval.every:,} steps with "
               f"n = {'/'.join(str(x) for x in n)} samples against as many training images; "
               f"features: {FEATURE_SPACES[s.eval.extractor].caption}; "
               f"seeds {', '.join(map(str, s.seeds))}. " + _paper_sentence(s))
    if axes:
        caption += " " + _axes_note(axes, matched, paper is not None)
    caption += " " + evidence_note(dist, s.table.baseline if "verdict" in df else None, floors, n)
    return df, caption


def floor_sd(floors: list[dict[str, Any]], dataset: str, metric: str) -> float:
    """The real-vs-real spread of ``metric`` on ``dataset`` at the study's n (nan when not calibrated)."""
    for f in floors:
        if f["dataset"] == dataset and f["metric"] == metric and f["reference"] == "real vs real":
            return float(f["sd"]) if f["sd"] == f["sd"] else math.nan
    return math.nan


def _convergence_cells(sub: pd.DataFrame, dkey: str, higher_better: bool, floor: float) -> dict[str, Any]:
    """Each seed's curve checked at its end (harness.reporting.convergence): ``converged`` summarises the states
    ("plateau 2/2", "still improving 1/2, plateau 1/2"); the noise of one evaluation is the trial's logged sampling
    spread, else the real-vs-real spread at n (``floor``)."""
    from harness.reporting.convergence import convergence

    if sub.empty or dkey not in sub:
        return {}
    states = []
    for _h, g in sub.dropna(subset=[dkey]).sort_values("step").groupby("hash"):
        col = f"{dkey}_sampling_sd"
        sampling = g[col].dropna() if col in g else pd.Series(dtype=float)
        noise = float(sampling.mean()) if len(sampling) else floor
        states.append(convergence(list(g[dkey]), noise, higher_better).state)
    if not states:
        return {}
    counts = pd.Series(states).value_counts()
    return {"converged": ", ".join(f"{state} {k}/{len(states)}" for state, k in counts.items()),
            "still_improving": int(counts.get("still improving", 0))}


def _time_to_quality(sub: pd.DataFrame, dkey: str, higher_better: bool, target: float, trials: list[Trial],
                     hashes: list[str]) -> dict[str, Any]:
    """Each seed's first evaluation at or past ``target`` (harness.reporting.convergence.time_to_quality): the mean
    steps, training images and minutes of the seeds that reached it, and how many did."""
    from harness.reporting.convergence import time_to_quality

    batch = {t.config_hash: int(t.train.get("batch_size") or 0) for t in trials if t.config_hash in hashes}
    reached, total = [], 0
    if not sub.empty and dkey in sub:
        for h, g in sub.dropna(subset=[dkey]).sort_values("step").groupby("hash"):
            total += 1
            ttq = time_to_quality(list(g.step), list(g[dkey]), target, higher_better, batch.get(h, 0),
                                  list(g.time_s) if "time_s" in g else None)
            if ttq.step is not None:
                reached.append(ttq)
    out: dict[str, Any] = {"reached": f"{len(reached)}/{total}"}
    if reached:
        out["steps_to_target"] = sum(r.step for r in reached) / len(reached)
        out["images_to_target"] = sum(r.images for r in reached) / len(reached)
        secs = [r.seconds for r in reached if r.seconds is not None]
        out["minutes_to_target"] = sum(secs) / len(secs) / 60 if secs else float("nan")
    return out


def _verdict_cells(rows: list[dict[str, Any]], by_seed: list[dict[int, float]], baseline: str | None,
                   axes: list[str], higher_better: bool) -> None:
    """Each row against the baseline variant's row at the same dataset and axis values, paired by seed
    (harness.reporting.verdicts): ``vs_baseline`` (difference, 95% interval, verdict) and ``verdict``."""
    from harness.reporting.verdicts import compare

    if not baseline:
        return
    def ident(r: dict[str, Any]) -> tuple:
        return (r["dataset"], *(_cell(r.get(k)) for k in axes))

    base = {ident(r): i for i, r in enumerate(rows) if r["variant"] == baseline}
    for i, r in enumerate(rows):
        j = base.get(ident(r))
        if j is None or j == i:
            continue
        seeds = sorted(set(by_seed[i]) & set(by_seed[j]))
        v = compare([by_seed[i][k] for k in seeds], [by_seed[j][k] for k in seeds], higher_better, paired=True)
        r["vs_baseline"], r["verdict"] = v.label(2), v.verdict
        r["diff_lo"], r["diff_hi"] = v.lo, v.hi


def evidence_note(dist: Metric, baseline: str | None, floors: list[dict[str, Any]], n: list[int]) -> str:
    """What the verdict, convergence and floor columns mean, and the bias of a best-of-several selection."""
    parts = []
    if baseline:
        parts.append(f"vs {baseline}: the difference of the best {dist.short} from {baseline}'s, paired by seed, with "
                     "its 95% t interval; better or worse only where the interval excludes 0, within noise "
                     "otherwise, undecided with fewer than two seeds.")
    parts.append("Converged: each seed's last change against the 95% spread of a difference of two evaluations "
                 "(the logged sampling spread, else the real-vs-real spread at n); rows still improving rank by "
                 "training speed as much as by architecture, so their ranking is provisional. The best of several "
                 "noisy evaluations is biased towards better values by up to about that noise.")
    real = [f for f in floors if f["reference"] == "real vs real" and f["metric"] == dist.key]
    if real:
        floor_text = "; ".join(
            f"{f['dataset']} {f['mean']:.2f}" + (f" ± {f['sd']:.2f}" if f["sd"] == f["sd"] else "")
            + f" ({f['draws']} draws of n = {f['n']})" for f in real)
        parts.append(f"Floor: {dist.short} of real images against the reference, {floor_text}: what a generator as "
                     "good as the data scores at this n, and differences smaller than its spread are noise.")
    else:
        parts.append(f"Floor: not calibrated ({dist.short} of real against real images at n = "
                     f"{'/'.join(map(str, n))} was not measured).")
    return " ".join(parts)


def configurations(trials: list[Trial], axes: list[str]) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """(dataset, variant, axis values, config hashes) per configuration, in the trials' order: a row of Table 1 or a
    line of its plot averages over these hashes, which differ in their seed only."""
    out: dict[tuple[str, str, str], tuple[str, str, dict[str, Any], list[str]]] = {}
    for t in trials:
        values = {k: axis_values(t).get(k) for k in axes}
        ident = (t.dataset, t.variant, json.dumps(list(values.values()), default=str))  # values may be lists
        out.setdefault(ident, (t.dataset, t.variant, values, []))[3].append(t.config_hash)
    return list(out.values())


def _cell(v: Any) -> str:
    """An axis value as a table cell (and as the paper's table is matched on it)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _paper_axes(paper: pd.DataFrame | None, axes: list[str]) -> list[str]:
    """The axis keys the paper's table records (a column named by the full key, e.g. ``model.width``): its numbers
    were measured at that value, so they sit beside our rows with the same value only."""
    return [k for k in axes if paper is not None and k in paper.columns]


def _paper_sentence(s) -> str:
    """The caption's last sentence: the paper the numbers sit beside, or that there is none (the caption has
    already said how ours were measured)."""
    if s.table.paper_csv:
        return f"Paper: {s.paper or s.table.paper_csv} (n = 2000, Inception)."
    return "No paper reference: this study has no paper table, so every number here is ours alone."


def _axes_note(axes: list[str], matched: list[str], has_paper: bool) -> str:
    """The caption's note on the axes: rows are configurations, and which rows the paper's numbers stand beside."""
    note = (f"Each row is one configuration (variant and {', '.join(axes)}): mean ± std over its seeds only, never "
            "over axis values.")
    if not has_paper:
        return note
    other = [k for k in axes if k not in matched]
    if matched:
        note += (f" The paper's numbers stand only beside rows at the paper's own {', '.join(matched)} (its table "
                 "records it); other rows have none.")
    if other:
        note += (f" The paper's table does not vary {', '.join(other)}: its one number per variant stands beside "
                 f"each of our {', '.join(other)} values, though it was measured at one setting of its own.")
    return note


def _display(df: pd.DataFrame, dist: Metric, kern: Metric, axes: list[str] = ()) -> pd.DataFrame:
    """Human-readable columns: the configuration (dataset, variant, a column per axis key), mean ± std strings,
    paper values and differences."""
    out = pd.DataFrame({"Dataset": df.dataset, "Variant": df.variant})
    for key in axes:
        out[key] = df[key].map(_cell)
    dkey, kkey = dist.key, kern.key
    dlabel, klabel = dist.short, f"{kern.short} x1e4"
    # Ours as raw steps (CPU-scale runs are far below a million); the paper's in its own unit, x1e-6.
    out["Steps"] = df.get("steps_million", pd.Series([float("nan")] * len(df))).map(
        lambda v: f"{v * 1e6:,.0f}" if pd.notna(v) else "–")
    out[dlabel] = [(f"{m:.2f} ± {s:.2f}" if pd.notna(s) else f"{m:.2f}") if pd.notna(m) else "–"
                   for m, s in zip(df.get(dkey, [float("nan")] * len(df)),
                                   df.get(f"{dkey}_std", [float("nan")] * len(df)))]
    kc = f"{kkey}_x1e4"
    out[klabel] = [(f"{m:.2f} ± {s:.2f}" if pd.notna(s) else f"{m:.2f}") if pd.notna(m) else "–"
                   for m, s in zip(df.get(kc, [float("nan")] * len(df)), df.get(f"{kc}_std", [float("nan")] * len(df)))]
    out["n"] = df.get("n", pd.Series([None] * len(df))).map(lambda v: f"{int(v)}" if pd.notna(v) else "–")
    out["Trial wall (min)"] = df.get("wall_min", pd.Series([None] * len(df))).map(
        lambda v: f"{v:.1f}" if pd.notna(v) else "–")
    if "vs_baseline" in df:
        out["vs baseline"] = df["vs_baseline"].map(lambda v: v if isinstance(v, str) else "–")
    if "reached" in df:
        nan = pd.Series([float("nan")] * len(df))
        steps, minutes = df.get("steps_to_target", nan), df.get("minutes_to_target", nan)
        out["To target: steps (min), seeds"] = [
            (f"{st:,.0f} ({mi:.1f}), {r}" if pd.notna(mi) else f"{st:,.0f}, {r}") if pd.notna(st)
            else f"not reached, {r}" for st, mi, r in zip(steps, minutes, df["reached"])]
    if "converged" in df:
        out["Converged"] = df["converged"].map(lambda v: v if isinstance(v, str) else "–")
    pdist, pkern = PAPER_DISTANCE.short, PAPER_KERNEL.short
    for col, name, fmt in (("paper_steps_million", "Paper steps x1e-6", "{:.2f}"),
                           ("paper_fid", f"Paper {pdist}", "{:.2f}"),
                           ("paper_kid_x1e4", f"Paper {pkern} x1e4", "{:.2f}"),
                           ("fid_diff", f"{pdist} diff", "{:+.2f}"),
                           ("kid_x1e4_diff", f"{pkern} x1e4 diff", "{:+.2f}")):
        if col in df:
            out[name] = df[col].map(lambda v, f=fmt: f.format(v) if pd.notna(v) else "–")
    return out


def _config_label(variant: str, values: dict[str, Any]) -> str:
    """A configuration as a plot line's name: ``D8 model.width=32`` (full keys: the short ones can clash)."""
    return " ".join([variant, *(f"{k}={_cell(v)}" for k, v in values.items() if _cell(v) != "–")])


def plot_lines(hist: pd.DataFrame, dkey: str, axes: list[str] = ()) -> pd.DataFrame:
    """Figure 1's data: the evaluations with a distance, ``variant`` naming the line (variant and axis values), so
    seaborn's mean ± sd per line is over seeds only."""
    data = hist.dropna(subset=[dkey]) if not hist.empty and dkey in hist else hist.iloc[0:0]
    if not axes or data.empty:
        return data
    names = [_config_label(r["variant"], {k: r.get(k) for k in axes}) for r in data.to_dict("records")]
    return data.assign(variant=names)


def fid_over_steps_plot(hist: pd.DataFrame, dkey: str, label: str, caption: str, path: Path,
                        axes: list[str] = ()) -> Path | None:
    """Figure 1: the distance over training steps per configuration (variant and axis values), one panel per
    dataset."""
    if hist.empty or dkey not in hist:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = plot_lines(hist, dkey, axes)
    g = sns.relplot(data=data, x="step", y=dkey, hue="variant", col="dataset", kind="line", marker="o",
                    errorbar="sd", facet_kws={"sharey": False}, height=3.6, aspect=1.2)
    g.set_axis_labels("training step", label)
    g.figure.text(0.01, -0.02, textwrap.fill(caption, 140), fontsize=6, ha="left", va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    g.figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(g.figure)
    return path


def write_study_tables(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, results_dir: Path) -> list[Path]:
    """Write results/<study>/<profile>/: the tables and plots of the study's table kind (best_checkpoint:
    table1.{md,csv,tex} and fid_over_steps.png; settings: a table per substudy), the Pareto plot, and the report
    README.md that gathers them. Returns the paths written."""
    return write_study_report(loaded, trials, tracker, results_dir)[0]


def write_study_report(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, results_dir: Path
                       ) -> tuple[list[Path], str]:
    """``write_study_tables``, also returning the study's main tables as Markdown (Table 1 with its caption, or
    every substudy's table) for the console."""
    from harness.reporting.pareto import write_pareto
    from harness.reporting.report import sample_gallery, write_report

    s = loaded.study
    out_dir = results_dir / s.name / loaded.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    if s.table.kind == "settings":
        from harness.reporting.settings import settings_tables

        written, body, main = settings_tables(loaded, trials, tracker, out_dir)
    elif s.table.kind == "best_checkpoint":
        written, body, main = _best_checkpoint(loaded, trials, tracker, out_dir)
    else:  # spec.TABLE_KINDS: refused when the study was loaded
        raise ValueError(f"unknown table kind {s.table.kind!r}")
    written += write_pareto(loaded, trials, tracker, out_dir)
    grids, gallery = sample_gallery(trials, tracker, out_dir)
    body = body.rstrip() + ("\n\n" + gallery if gallery else "")
    return [write_report(out_dir, body), *written, *grids], main


def _write_best_checkpoint(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, out_dir: Path
                           ) -> tuple[list[Path], str]:
    """table1.{md,csv,tex} and fid_over_steps.png; returns them and the report's body (Table 1, the variants beside
    the paper's in relative terms, Figure 1)."""
    return _best_checkpoint(loaded, trials, tracker, out_dir)[:2]


def _best_checkpoint(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, out_dir: Path
                     ) -> tuple[list[Path], str, str]:
    """``_write_best_checkpoint``, also returning Table 1 with its title and caption as Markdown."""
    s = loaded.study
    df, caption = best_checkpoint_table(loaded, trials, tracker)
    dist, kern = image_distances(s.eval.extractor)
    axes = axis_keys(trials)
    shown = _display(df, dist, kern, axes)
    prov = provenance(trials, tracker)
    figure = f"![{dist.long} over training steps](fid_over_steps.png)"
    written = []
    title = f"{s.name}: Table 1 ({loaded.profile} profile)"
    md = out_file(out_dir, "table1.md")
    md.write_text(f"# {title}\n\n{caption}\n\n{prov}\n\n"
                  f"{_markdown(shown)}\n\n{figure}\n")
    written.append(md)
    csv = out_file(out_dir, "table1.csv")
    df.to_csv(csv, index=False)
    written.append(csv)
    tex = out_file(out_dir, "table1.tex")
    tex.write_text(_latex_axes(shown, axes).to_latex(index=False, caption=caption.replace("_", r"\_"),
                                                      label=f"tab:{s.name}"))
    written.append(tex)
    hist = trial_histories(trials, tracker, [dist.key])
    fig = fid_over_steps_plot(hist, dist.key, dist.long, caption, out_file(out_dir, "fid_over_steps.png"), axes)
    if fig:
        written.append(fig)
    body = [f"# {s.name} ({loaded.profile} profile)", "", " ".join(s.description.split()), "", caption, "", prov, "",
            "## Table 1", "", _markdown(shown), ""]
    body += _beside_paper_section(loaded, df, dist, axes)
    if fig:
        body += [f"## {dist.long} over training steps (Figure 1)", "", figure, ""]
    return written, "\n".join(body), f"# {title}\n\n{caption}\n\n{_markdown(shown)}"


def _latex_axes(shown: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """``shown`` with the axis columns' names and values LaTeX-safe (``train.ema_decay``, ``scaled_linear``)."""
    if not axes:
        return shown
    out = shown.copy()
    for key in axes:
        out[key] = out[key].str.replace("_", r"\_", regex=False)
    return out.rename(columns={k: k.replace("_", r"\_") for k in axes})


def _beside_paper_section(loaded: LoadedStudy, df: pd.DataFrame, dist: Metric, axes: list[str] = ()) -> list[str]:
    """The report's "Beside the paper" lines: each variant relative to the baseline and its rank, ours and the
    paper's, with rank correlations; [] without a paper table or measured distances. With axes, one table per
    setting of the axes: variants are ranked against variants at the same setting."""
    from harness.reporting.report import beside_paper

    s = loaded.study
    paper = paper_table(s.table.paper_csv) if s.table.paper_csv else None
    if paper is None or dist.key not in df or not df[dist.key].notna().any():
        return []
    same = set(df.dataset) & set(paper.dataset)
    lines = ["## Beside the paper", ""]
    parts: list[tuple[str, pd.DataFrame, pd.DataFrame]] = [("", df, paper)]
    if axes:
        matched = _paper_axes(paper, axes)
        setting = df[list(axes)].apply(lambda r: " ".join(f"{k}={_cell(r[k])}" for k in axes), axis=1)
        parts = []
        for text in dict.fromkeys(setting):
            rows = df[setting == text]
            p = paper
            for key in matched:
                p = p[p[key].map(_cell) == _cell(rows[key].iloc[0])]
            if not p.empty and rows[dist.key].notna().any():
                parts.append((text, rows, p))
        if not parts:
            return []
    base = s.table.baseline if s.table.baseline in set(df.variant) else None
    lines += [("Table 1 above gives the differences from the paper's numbers on the same dataset. " if same else
               f"The paper's numbers are on {' and '.join(dict.fromkeys(paper.dataset))}, ours on "
               f"{' and '.join(dict.fromkeys(df.dataset))} at {loaded.profile} scale, so absolute values are not "
               "comparable; ") +
              (f"each variant's {dist.long} relative to {base} and its rank (1 = best) compare the ordering."
               if base else "each variant's rank (1 = best) compares the ordering.") +
              (f" One table per setting of {', '.join(axes)}: each variant is compared with the variants at the same "
               "setting." if axes else ""), ""]
    for text, rows, p in parts:
        b = base if base in set(rows.variant) else None
        rel, sentences = beside_paper(rows, p, dist.key, dist.short, b, dist.higher_better)
        lines += ([f"### {text}", ""] if text else []) + [_markdown(rel), "", " ".join(sentences), ""]
    return lines
