"""`harness table`: MLflow -> pandas -> the paper's tables (Markdown, CSV, LaTeX) and figures (seaborn).

Every table states the profile, the training steps, the sample count n and the feature extractor it was produced
with (airbench-style provenance), and sits beside the paper's own numbers with the difference where they are the
same quantity. Distances in a classifier's feature space are labelled as such and never compared with FID.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from harness.reporting.metrics import FEATURE_SPACES, Metric, image_distances, same_as_paper
from harness.reporting.sources import markdown as _markdown
from harness.reporting.sources import paper_table, provenance, trial_histories
from harness.study.spec import LoadedStudy, Trial, out_file
from harness.tracking import Tracker

# Dataset names as the paper's tables print them.
PAPER_DATASET = {"cifar10": "CIFAR10", "artbench10": "Artbench10"}
# The papers' distances are Inception distances: their columns are labelled as such whatever we measured.
PAPER_DISTANCE, PAPER_KERNEL = image_distances("inception")


def best_checkpoint_table(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker) -> tuple[pd.DataFrame, str]:
    """Table 1 of the block-sharing paper: Steps (x1e-6), FID and KID (x1e4) of the best checkpoint per variant and
    dataset (the evaluation with the lowest distance), ours beside the paper's. Returns (numeric frame, caption)."""
    s = loaded.study
    dist, kern = image_distances(s.eval.extractor)
    dkey, kkey = dist.key, kern.key
    hist = trial_histories(trials, tracker, [dkey, kkey, "n_samples"])
    paper = paper_table(s.table.paper_csv) if s.table.paper_csv else None
    rows = []
    for (dataset, variant), _ in pd.DataFrame([(t.dataset, t.variant) for t in trials]).groupby([0, 1], sort=False):
        sub = hist[(hist.dataset == dataset) & (hist.variant == variant)] if not hist.empty else hist
        best = []
        if not sub.empty and dkey in sub:
            for _h, g in sub.dropna(subset=[dkey]).groupby("hash"):
                best.append(g.loc[g[dkey].idxmin()])
        b = pd.DataFrame(best)
        row: dict[str, Any] = {"dataset": PAPER_DATASET.get(dataset, dataset), "variant": variant,
                               "seeds": len(b)}
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
            if not p.empty:
                row["paper_steps_million"] = p.steps_million.iloc[0]
                row["paper_fid"] = p.fid.iloc[0]
                row["paper_kid_x1e4"] = p.kid_x1e4.iloc[0]
                if same_as_paper("fid", s.eval.extractor) and dkey in row:
                    row["fid_diff"] = row["fid"] - row["paper_fid"]
                    row["kid_x1e4_diff"] = row.get("kid_x1e4", float("nan")) - row["paper_kid_x1e4"]
        rows.append(row)
    df = pd.DataFrame(rows)
    steps = sorted({t.train.get("steps") for t in trials})
    n = sorted({t.eval["n_samples"] for t in trials})
    caption = (f"{s.name}, profile `{loaded.profile}`: best checkpoint (lowest {dist.long}) per variant; "
               f"trained {'/'.join(f'{x:,}' for x in steps)} steps, evaluated every {s.eval.every:,} steps with "
               f"n = {'/'.join(str(x) for x in n)} samples against as many training images; "
               f"features: {FEATURE_SPACES[s.eval.extractor].caption}; "
               f"seeds {', '.join(map(str, s.seeds))}. Paper: {s.paper or 'n/a'} (n = 2000, Inception).")
    return df, caption


def _display(df: pd.DataFrame, dist: Metric, kern: Metric) -> pd.DataFrame:
    """Human-readable columns: mean ± std strings, paper values and differences."""
    out = pd.DataFrame({"Dataset": df.dataset, "Variant": df.variant})
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
    pdist, pkern = PAPER_DISTANCE.short, PAPER_KERNEL.short
    for col, name, fmt in (("paper_steps_million", "Paper steps x1e-6", "{:.2f}"),
                           ("paper_fid", f"Paper {pdist}", "{:.2f}"),
                           ("paper_kid_x1e4", f"Paper {pkern} x1e4", "{:.2f}"),
                           ("fid_diff", f"{pdist} diff", "{:+.2f}"),
                           ("kid_x1e4_diff", f"{pkern} x1e4 diff", "{:+.2f}")):
        if col in df:
            out[name] = df[col].map(lambda v, f=fmt: f.format(v) if pd.notna(v) else "–")
    return out


def fid_over_steps_plot(hist: pd.DataFrame, dkey: str, label: str, caption: str, path: Path) -> Path | None:
    """Figure 1: the distance over training steps per variant, one panel per dataset."""
    if hist.empty or dkey not in hist:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = hist.dropna(subset=[dkey])
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
    from harness.reporting.pareto import write_pareto
    from harness.reporting.report import sample_gallery, write_report

    s = loaded.study
    out_dir = results_dir / s.name / loaded.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    if s.table.kind == "settings":
        from harness.reporting.settings import write_settings_tables

        written, body = write_settings_tables(loaded, trials, tracker, out_dir)
    elif s.table.kind == "best_checkpoint":
        written, body = _write_best_checkpoint(loaded, trials, tracker, out_dir)
    else:  # spec.TABLE_KINDS: refused when the study was loaded
        raise ValueError(f"unknown table kind {s.table.kind!r}")
    written += write_pareto(loaded, trials, tracker, out_dir)
    grids, gallery = sample_gallery(trials, tracker, out_dir)
    body = body.rstrip() + ("\n\n" + gallery if gallery else "")
    return [write_report(out_dir, body), *written, *grids]


def _write_best_checkpoint(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, out_dir: Path
                           ) -> tuple[list[Path], str]:
    """table1.{md,csv,tex} and fid_over_steps.png; returns them and the report's body (Table 1, the variants beside
    the paper's in relative terms, Figure 1)."""
    s = loaded.study
    df, caption = best_checkpoint_table(loaded, trials, tracker)
    dist, kern = image_distances(s.eval.extractor)
    shown = _display(df, dist, kern)
    prov = provenance(trials, tracker)
    figure = f"![{dist.long} over training steps](fid_over_steps.png)"
    written = []
    md = out_file(out_dir, "table1.md")
    md.write_text(f"# {s.name}: Table 1 ({loaded.profile} profile)\n\n{caption}\n\n{prov}\n\n"
                  f"{_markdown(shown)}\n\n{figure}\n")
    written.append(md)
    csv = out_file(out_dir, "table1.csv")
    df.to_csv(csv, index=False)
    written.append(csv)
    tex = out_file(out_dir, "table1.tex")
    tex.write_text(shown.to_latex(index=False, caption=caption.replace("_", r"\_"), label=f"tab:{s.name}"))
    written.append(tex)
    hist = trial_histories(trials, tracker, [dist.key])
    fig = fid_over_steps_plot(hist, dist.key, dist.long, caption, out_file(out_dir, "fid_over_steps.png"))
    if fig:
        written.append(fig)
    body = [f"# {s.name} ({loaded.profile} profile)", "", " ".join(s.description.split()), "", caption, "", prov, "",
            "## Table 1", "", _markdown(shown), ""]
    body += _beside_paper_section(loaded, df, dist)
    if fig:
        body += [f"## {dist.long} over training steps (Figure 1)", "", figure, ""]
    return written, "\n".join(body)


def _beside_paper_section(loaded: LoadedStudy, df: pd.DataFrame, dist: Metric) -> list[str]:
    """The report's "Beside the paper" lines: each variant relative to the baseline and its rank, ours and the
    paper's, with rank correlations; [] without a paper table or measured distances."""
    from harness.reporting.report import beside_paper

    s = loaded.study
    paper = paper_table(s.table.paper_csv) if s.table.paper_csv else None
    if paper is None or dist.key not in df or not df[dist.key].notna().any():
        return []
    base = s.table.baseline if s.table.baseline in set(df.variant) else None
    rel, sentences = beside_paper(df, paper, dist.key, dist.short, base, dist.higher_better)
    same = set(df.dataset) & set(paper.dataset)
    return ["## Beside the paper", "",
            ("Table 1 above gives the differences from the paper's numbers on the same dataset. " if same else
             f"The paper's numbers are on {' and '.join(dict.fromkeys(paper.dataset))}, ours on "
             f"{' and '.join(dict.fromkeys(df.dataset))} at {loaded.profile} scale, so absolute values are not "
             "comparable; ") +
            (f"each variant's {dist.long} relative to {base} and its rank (1 = best) compare the ordering."
             if base else "each variant's rank (1 = best) compares the ordering."), "",
            _markdown(rel), "", " ".join(sentences), ""]
