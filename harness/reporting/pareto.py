"""Pareto plots: a study's quality metric against parameters, training FLOPs and wall time, with the front marked.

One point per trial configuration (mean over seeds), one row of panels per dataset (qualities of different datasets
are not comparable). Training FLOPs are estimated as 3 x the zoo's analytic forward FLOPs per sample x the samples
seen (steps x global batch; forward + backward ~ 3 forwards), so they exist only for step-based recipes. The front
holds the configurations no other one beats on both axes (lower cost, better quality).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from harness.reporting.metrics import resolve
from harness.reporting.sources import finished_values
from harness.study.spec import LoadedStudy, Trial, out_file
from harness.tracking import Tracker, run_seconds

COSTS = (("params", "parameters", True), ("train_pflops", "training PFLOPs (estimate)", True),
         ("wall_min", "wall time per trial (min)", False))


def pareto_mask(cost: np.ndarray, quality: np.ndarray, higher_better: bool) -> np.ndarray:
    """True where no other point has cost <= and quality at least as good, with one of them strictly better."""
    q = quality if higher_better else -quality
    keep = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        if math.isnan(cost[i]) or math.isnan(q[i]):
            keep[i] = False
            continue
        dominated = (cost <= cost[i]) & (q >= q[i]) & ((cost < cost[i]) | (q > q[i]))
        keep[i] = not dominated.any()
    return keep


def pareto_frame(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, metric_key: str,
                 best: bool) -> pd.DataFrame:
    """One row per finished trial: dataset, label (variant + axes), seed, quality, params, training PFLOPs, wall."""
    rows = []
    for t, run, value in finished_values(loaded, trials, tracker, metric_key, best):
        steps, batch = t.train.get("steps"), t.train.get("batch_size")
        flops = 3 * t.gflops * 1e9 * steps * batch / 1e15 if steps and batch and "epochs" not in t.train else math.nan
        seconds = run_seconds(run)  # the attempts' running time, without the gaps between them
        wall = seconds / 60 if seconds is not None else math.nan
        label = " ".join(x for x in (t.variant, t.axes_text()) if x)
        rows.append({"dataset": t.dataset, "label": label, "seed": t.seed, "quality": value, "params": t.params,
                     "train_pflops": flops, "wall_min": wall, "diagnostic": t.diagnostic})
    return pd.DataFrame(rows)


def configurations(df: pd.DataFrame, higher_better: bool) -> pd.DataFrame:
    """One row per (dataset, configuration): quality and wall time averaged over seeds, its costs, and for each
    cost whether it is on that dataset's Pareto front (``front_<cost>``)."""
    agg = (df.groupby(["dataset", "label"], sort=False)
           .agg(quality=("quality", "mean"), params=("params", "first"), train_pflops=("train_pflops", "first"),
                wall_min=("wall_min", "mean"), seeds=("seed", "nunique")).reset_index())
    for key, _, _ in COSTS:
        agg[f"front_{key}"] = False
        for idx in agg.groupby("dataset").groups.values():
            sub = agg.loc[idx]
            agg.loc[idx, f"front_{key}"] = pareto_mask(sub[key].to_numpy(float), sub.quality.to_numpy(float),
                                                       higher_better)
    return agg


def pareto_plot(agg: pd.DataFrame, quality_label: str, higher_better: bool, caption: str, path: Path) -> Path:
    """Rows: datasets; columns: the costs that are known. Front points are ringed, joined and named."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    costs = [c for c in COSTS if agg[c[0]].notna().any()]
    datasets = list(dict.fromkeys(agg.dataset))
    fig, axes = plt.subplots(len(datasets), len(costs), figsize=(4.6 * len(costs), 3.8 * len(datasets)),
                             squeeze=False)
    palette = dict(zip(agg.label.unique(), sns.color_palette("husl", agg.label.nunique())))
    for r, dataset in enumerate(datasets):
        sub = agg[agg.dataset == dataset]
        for c, (key, xlabel, log) in enumerate(costs):
            ax = axes[r][c]
            sns.scatterplot(data=sub, x=key, y="quality", hue="label", palette=palette, ax=ax, s=45, legend=False)
            front = sub[sub[f"front_{key}"]].sort_values(key)
            ax.plot(front[key], front.quality, drawstyle="steps-post", color="black", lw=1, zorder=1)
            ax.scatter(front[key], front.quality, s=140, facecolors="none", edgecolors="black", zorder=3)
            for _, p in front.iterrows():
                ax.annotate(p.label, (p[key], p.quality), fontsize=6, xytext=(4, 4), textcoords="offset points")
            if log and (sub[key] > 0).all() and sub[key].max() > 3 * sub[key].min():
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{quality_label} ({dataset})" if c == 0 else "")
            ax.set_title(f"{dataset}: Pareto front ({'higher' if higher_better else 'lower'} is better)", fontsize=8)
    handles = [plt.Line2D([], [], marker="o", ls="", color=palette[k], label=k) for k in palette]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    fig.text(0.01, -0.01, textwrap.fill(caption, 150), fontsize=6, ha="left", va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def write_pareto(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, out_dir: Path) -> list[Path]:
    """pareto_<metric>.png and .csv (every configuration with its costs and whether it is on a front)."""
    s = loaded.study
    metric = resolve(s.table.metric, s.eval.extractor)
    label, key = metric.label, metric.key
    df = pareto_frame(loaded, trials, tracker, key, s.table.kind == "best_checkpoint")
    if df.empty or df.quality.isna().all():
        return []
    higher = metric.higher_better
    steps = sorted({t.train.get("steps") or t.train.get("epochs") for t in trials})
    caption = (f"{s.name}, profile `{loaded.profile}`: {label} ({'best evaluation' if s.table.kind == 'best_checkpoint' else 'final value'}, "  # noqa: E501
               f"mean over seeds) against parameters, estimated training FLOPs (3 x forward FLOPs x steps x batch; "
               f"step-based recipes only) and wall time per trial; {'/'.join(map(str, steps))} "
               f"{'steps' if any('steps' in t.train for t in trials) else 'epochs'}. Ringed and joined: the Pareto "
               "front (no other configuration is cheaper and at least as good). Wall times are CPU-scale and depend "
               "on what ran beside each trial.")
    stem = f"pareto_{key}"
    agg = configurations(df, higher)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_file(out_dir, f"{stem}.csv")
    agg.rename(columns={"quality": key}).to_csv(csv, index=False)
    return [pareto_plot(agg, label, higher, caption, out_file(out_dir, f"{stem}.png")), csv]
