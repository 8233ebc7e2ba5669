"""Per-setting tables for studies made of substudies (one per question of a homework or paper section).

Each substudy becomes one table: a row per setting (the value of the substudy's axes, or the variant when the
substudy varies the model), a column pair per dataset (ours as mean ± std over seeds, the paper's beside it), and
optionally a metric-versus-setting plot. A figure of generated against real points shows the best trial per dataset.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.metrics import FEATURE_SPACES, TABLE_METRICS, same_as_paper, table_metric
from harness.reporting.recipe_report import RecipeReport, report_of, template_fields
from harness.reporting.sources import axis_values, paper_table, provenance
from harness.reporting.sources import markdown as _markdown
from harness.study.spec import LoadedStudy, Study, Trial, out_file
from harness.tracking import Tracker


def recipe_report(name: str) -> RecipeReport:
    """The report hook of the recipe registered as ``name`` (see harness.reporting.recipe_report)."""
    from harness.recipes import get_recipe

    return report_of(get_recipe(name))


def _resolved(t: Trial, key: str) -> Any:
    section, _, rest = key.partition(".")
    return {"model": t.model, "train": t.train, "eval": t.eval, "data": t.data}[section][rest]


def _num(v: float) -> str:
    """Counts and byte sizes with thousands separators, everything else to 2 decimals."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}"


def _paper_num(v: float) -> str:
    """A paper's number as printed (all its digits), large ones with thousands separators."""
    return f"{v:,.0f}" if abs(v) >= 10_000 else f"{v:g}"


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def setting_of(t: Trial, sub: Study) -> str:
    """The raw setting of a trial within a substudy: its axis values (as resolved), or its variant."""
    if not sub.axes:
        return t.variant
    items = [(k, _resolved(t, k)) for key in sub.axes for k in key.split("+")]
    raw = _fmt(items[0][1]) if len(items) == 1 else " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in items)
    return f"{t.variant} {raw}" if len(sub.variants) > 1 else raw


def _position(raw: str, sub: Study) -> int:
    """Where a setting stands in its substudy as written (axes values in grid order, or the variants' order)."""
    if not sub.axes:
        return sub.variants.index(raw) if raw in sub.variants else len(sub.variants)
    if len(sub.variants) > 1:
        variant, _, raw = raw.partition(" ")
        offset = sub.variants.index(variant) if variant in sub.variants else len(sub.variants)
        return offset * 10_000 + _position(raw, dataclasses.replace(sub, variants=(variant,)))
    keys = [k for key in sub.axes for k in key.split("+")]
    combos = [sum(([v] if "+" not in key else list(v) for key, v in zip(sub.axes, combo)), [])
              for combo in itertools.product(*sub.axes.values())]
    names = [_fmt(c[0]) if len(keys) == 1 else " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in zip(keys, c))
             for c in combos]
    return names.index(raw) if raw in names else len(names)


def section_name(loaded: LoadedStudy, substudy: str) -> str:
    """The table (and file) name of a substudy's section: the study's name for a study without substudies."""
    return substudy or loaded.study.name


def final_metrics(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker) -> pd.DataFrame:
    """One row per (substudy, trial) with the setting, its paper label, and the trial's last logged metrics."""
    finished = tracker.finished_runs(loaded.study.name) if trials else {}
    labels = loaded.study.table.labels
    rows = []
    for name, sub in loaded.substudies:
        for t in trials:
            if name not in t.substudies and (name or t.substudies):  # "": a study without substudies, every trial
                continue
            run = finished.get(t.config_hash)
            if run is None:
                continue
            raw = setting_of(t, sub)
            label = labels.get(f"{name}/{raw}", labels.get(raw, raw))
            rows.append({"substudy": section_name(loaded, name), "setting_raw": raw, "setting": label,
                         "dataset": t.dataset, "seed": t.seed, "variant": t.variant, "hash": t.config_hash,
                         "run_id": run.info.run_id, "order": _position(raw, sub),
                         "skipped": run.data.tags.get("harness.skipped"), **run.data.metrics})
    return pd.DataFrame(rows)


def substudy_table(df: pd.DataFrame, name: str, datasets: list[str], metrics: list[str],
                   paper: pd.DataFrame | None, extractor: str = "inception") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numeric frame, display frame) for one substudy."""
    sub = df[df.substudy == name]
    settings = list(dict.fromkeys(sub.sort_values("order").setting))
    num_rows, show_rows = [], []
    for setting in settings:
        num: dict[str, Any] = {"setting": setting}
        show: dict[str, Any] = {"Setting": setting}
        for ds in datasets:
            cell = sub[(sub.setting == setting) & (sub.dataset == ds)]
            for m in metrics:
                metric = table_metric(m, extractor)
                label, key = metric.label, metric.key
                vals = cell[key].dropna() if key in cell else pd.Series(dtype=float)
                mean = vals.mean() if len(vals) else float("nan")
                std = vals.std(ddof=1) if len(vals) > 1 else float("nan")
                num[f"{m}_{ds}"], num[f"{m}_{ds}_std"], num[f"{m}_{ds}_seeds"] = mean, std, len(vals)
                skipped = cell["skipped"].dropna().unique() if "skipped" in cell else []
                spread = f" ± {_num(std)}" if len(vals) > 1 and std > 0 else ""  # no "± 0" for equal counts
                show[f"{label} ({ds})"] = (_num(mean) + spread if len(vals) else ("skipped" if len(skipped) else "–"))
                if len(skipped):
                    num[f"skipped_{ds}"] = skipped[0]
                p = None
                if paper is not None:
                    row = paper[(paper.study == name) & (paper.setting.astype(str) == setting)]
                    col = f"{m}_{ds}"
                    if same_as_paper(m, extractor) and not row.empty and col in row and pd.notna(row[col].iloc[0]):
                        p = float(row[col].iloc[0])
                num[f"paper_{m}_{ds}"] = p
                if p is not None:
                    show[f"Paper {label} ({ds})"] = _paper_num(p)
                    if len(vals):  # the same quantity on the same dataset: how far ours is from the paper's
                        d = num[f"diff_{m}_{ds}"] = mean - p
                        show[f"Diff {label} ({ds})"] = f"{d:+,.0f}" if abs(d) >= 1000 else f"{d:+.2f}"
        for ds in _paper_only_datasets(paper, name, datasets, metrics):  # the paper's numbers on its own dataset
            row = paper[(paper.study == name) & (paper.setting.astype(str) == setting)]
            for m in metrics:
                col = f"{m}_{ds}"
                if not row.empty and col in row and pd.notna(row[col].iloc[0]):
                    num[f"paper_{col}"] = float(row[col].iloc[0])
                    # the paper's own metric (its distances are Inception ones)
                    show[f"Paper {TABLE_METRICS[m].label} ({ds})"] = _paper_num(float(row[col].iloc[0]))
        num_rows.append(num)
        show_rows.append(show)
    _first_setting_verdicts(sub, settings, datasets, metrics[:1], extractor, num_rows, show_rows)
    shown = pd.DataFrame(show_rows)
    shown = shown[[c for c in shown.columns if c == "Setting" or shown[c].ne("–").any()]]
    return pd.DataFrame(num_rows), shown.fillna("–")


def _first_setting_verdicts(sub: pd.DataFrame, settings: list[str], datasets: list[str], metrics: list[str],
                            extractor: str, num_rows: list[dict], show_rows: list[dict]) -> None:
    """Each setting's difference from the substudy's first setting on the table metric, paired by seed, with its
    95% t interval and verdict (harness.reporting.verdicts): ``<metric> vs <first> (<dataset>)``."""
    from harness.reporting.verdicts import compare

    if len(settings) < 2:
        return
    for ds in datasets:
        for m in metrics:
            metric = table_metric(m, extractor)
            if metric.key not in sub:
                continue
            base = _by_seed(sub, settings[0], ds, metric.key)
            for setting, num, show in zip(settings[1:], num_rows[1:], show_rows[1:]):
                mine = _by_seed(sub, setting, ds, metric.key)
                seeds = sorted(set(mine) & set(base))
                if not mine:
                    continue
                v = compare([mine[k] for k in seeds], [base[k] for k in seeds], metric.higher_better, paired=True)
                num[f"verdict_{m}_{ds}"] = v.verdict
                num[f"diff_lo_{m}_{ds}"], num[f"diff_hi_{m}_{ds}"] = v.lo, v.hi
                show[f"{metric.label} vs {settings[0]} ({ds})"] = v.label(2)


def noise_section(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker) -> list[str]:
    """The report's "Noise floor" lines: the calibration runs' floors (harness.reporting.calibration) as a table, and
    what the verdict columns mean; a sentence when the study has not been calibrated."""
    from harness.reporting.calibration import floors_table

    verdicts = ("Verdict columns (`<metric> vs <first setting>`): the difference from the substudy's first setting, "
                "paired by seed, with its 95% t interval; better or worse only where the interval excludes 0, within "
                "noise otherwise, undecided with fewer than two common seeds.")
    floors = floors_table(loaded, trials, tracker)
    if not floors:
        return ["## Noise floor", "", "Not calibrated: no calibration run in the store (`calibration_draws` is 0, or "
                "the study has not finished). " + verdicts, ""]
    rows = [{"dataset": f["dataset"], "reference": f["reference"], "metric": f["metric"],
             "mean": _num(f["mean"]), "sd": _num(f["sd"]) if f["sd"] == f["sd"] else "–", "draws": f["draws"],
             "n": f["n"]} for f in floors]
    return ["## Noise floor", "",
            "What the study's metrics give for stand-ins of known quality at its evaluation settings: real images "
            "against the reference (what a generator as good as the data scores at this n), a perfect and a "
            "trivial point generator, chance accuracy. A difference smaller than the floor's sd is within one "
            "evaluation's noise. " + verdicts, "", _markdown(pd.DataFrame(rows)), ""]


def _by_seed(sub: pd.DataFrame, setting: str, dataset: str, key: str) -> dict[int, float]:
    cell = sub[(sub.setting == setting) & (sub.dataset == dataset)].dropna(subset=[key])
    return dict(zip(cell.seed, cell[key]))


def _paper_only_datasets(paper: pd.DataFrame | None, name: str, datasets: list[str], metrics: list[str]) -> list[str]:
    """Datasets the paper reports for this substudy that the run did not use (e.g. CIFAR-100 when a CPU profile
    ran a stand-in): their paper columns are shown as they are, never as a comparison with ours."""
    if paper is None or paper[paper.study == name].empty:
        return []
    rows = paper[paper.study == name]
    found = [c[len(m) + 1:] for m in metrics for c in rows.columns if c.startswith(f"{m}_") and rows[c].notna().any()]
    return [d for d in dict.fromkeys(found) if d not in datasets and "_" not in d]


def _save(fig, path: Path, caption: str) -> Path:
    """A figure with its caption underneath, as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig.text(0.01, -0.02, textwrap.fill(caption, 110), fontsize=6, ha="left", va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_lines(sub: pd.DataFrame, trials: list[Trial]) -> list[str]:
    """The line of each row of a metric-versus-setting plot (rows with ``dataset`` and ``x``, and their trials): its
    dataset, plus every identifying key (the variant, each axis key) that takes several values at one dataset and
    x, so a line's mean ± sd is over seeds only and never over another axis or variant."""
    idents = [{"variant": t.variant, **axis_values(t)} for t in trials]
    keys = list(dict.fromkeys(k for ident in idents for k in ident))
    frame = pd.DataFrame({"dataset": sub.dataset.to_numpy(), "x": [str(x) for x in sub.x],
                          **{k: [str(i.get(k)) for i in idents] for k in keys}})
    varying = [k for k in keys if (frame.groupby(["dataset", "x"])[k].nunique() > 1).any()]
    return [" ".join([ds, *(f"{k}={i.get(k)}" if k != "variant" else str(i[k]) for k in varying)])
            for ds, i in zip(frame.dataset, idents)]


def metric_plot(df: pd.DataFrame, name: str, x_key: str, metric: str, trials: dict[str, Trial],
                paper: pd.DataFrame | None, path: Path, caption: str, extractor: str = "inception") -> Path | None:
    """Metric against the setting (numeric x: epochs, T, depth), one line per dataset, mean ± sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    label, key = (m := table_metric(metric, extractor)).label, m.key
    sub = df[df.substudy == name].copy()
    if sub.empty or key not in sub:
        return None
    if x_key == "depth":
        sub["x"] = [len(trials[h].model.get("hidden", ())) for h in sub.hash]
        xlabel = "hidden layers"
    else:
        sub["x"] = [_resolved(trials[h], x_key) for h in sub.hash]
        xlabel = x_key.split(".")[-1]
    sub["line"] = plot_lines(sub, [trials[h] for h in sub.hash])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.lineplot(data=sub, x="x", y=key, hue="line" if (sub.line != sub.dataset).any() else "dataset", marker="o",
                 errorbar="sd", ax=ax)
    if paper is not None:
        rows = paper[paper.study == name]
        for ds in sub.dataset.unique():
            col = f"{metric}_{ds}"
            if col in rows and rows[col].notna().any():
                xs = sub.drop_duplicates("setting").set_index("setting")["x"]
                pts = [(xs[s], v) for s, v in zip(rows.setting.astype(str), rows[col]) if s in xs and pd.notna(v)]
                if pts:
                    ax.plot(*zip(*sorted(pts)), ls="--", marker="x", label=f"{ds} (paper)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{label} (test)")
    ax.legend(fontsize=7)
    return _save(fig, path, caption)


def curves_plot(df: pd.DataFrame, name: str, keys: tuple[str, ...], tracker: Tracker, path: Path,
                caption: str) -> Path | None:
    """Logged metrics over training steps for one substudy (e.g. train and validation accuracy, the paper's
    Figure 2): one line per metric and setting, mean ± sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sub = df[df.substudy == name]
    rows = [{"step": m.step, "value": m.value, "metric": key, "setting": r.setting, "seed": r.seed}
            for r in sub.itertuples() for key in keys for m in tracker.client.get_metric_history(r.run_id, key)]
    if not rows:
        return None
    data = pd.DataFrame(rows)
    several = data.setting.nunique() > 1
    fig, ax = plt.subplots(figsize=(6, 3.8))
    sns.lineplot(data=data, x="step", y="value", hue="metric", style="setting" if several else None,
                 errorbar="sd", ax=ax)
    ax.set_xlabel("training step")
    ax.set_ylabel(", ".join(keys))
    ax.legend(fontsize=7)
    return _save(fig, path, caption)


def scatter_plot(df: pd.DataFrame, x: str, y: str, extractor: str, paper: pd.DataFrame | None, path: Path,
                 caption: str) -> Path | None:
    """Every measured trial as a point (e.g. compressed size against quality), coloured by substudy, with the
    paper's arms as crosses where it reports both quantities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    xm, ym = table_metric(x, extractor), table_metric(y, extractor)
    (xl, xk), (yl, yk) = (xm.label, xm.key), (ym.label, ym.key)
    if df.empty or xk not in df or yk not in df:
        return None
    data = df.dropna(subset=[xk, yk])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.scatterplot(data=data, x=xk, y=yk, hue="substudy", style="dataset", s=60, ax=ax)
    for _, r in data.drop_duplicates(["substudy", "setting"]).iterrows():
        ax.annotate(r.setting, (r[xk], r[yk]), fontsize=5, alpha=0.7)
    comparable = same_as_paper(y, extractor)
    crosses = False
    if paper is not None and comparable:
        for ds in data.dataset.unique():
            cols = [f"{x}_{ds}", f"{y}_{ds}"]
            if all(c in paper for c in cols):
                p = paper.dropna(subset=cols)
                ax.scatter(p[cols[0]], p[cols[1]], marker="x", color="grey", label=f"paper ({ds})")
                crosses = crosses or not p.empty
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.legend(fontsize=6)
    note = ("crosses: the paper's arms" if crosses else
            "the paper's arms are not drawn: its quality metric is not the one measured here" if not comparable
            else "")
    return _save(fig, path, f"{caption}; {note}" if note else caption)


def points_figure(df: pd.DataFrame, loaded: LoadedStudy, tracker: Tracker, path: Path) -> Path | None:
    """Generated against real test points (normalised space) for the best trial (lowest EMD) of each dataset, when
    the study's recipe asks for it (its report's ``points_figure``)."""
    key = TABLE_METRICS["emd"].key
    if df.empty or key not in df or not recipe_report(loaded.study.recipe).points_figure:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.training.point_clouds import load_points

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    datasets = list(dict.fromkeys(df.dataset))
    fig = plt.figure(figsize=(5 * len(datasets), 4.6))
    for i, ds in enumerate(datasets):
        best = df[df.dataset == ds].sort_values(key).iloc[0]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = tracker.client.download_artifacts(best.run_id, "samples/points_final.npy", tmp)
            except Exception:  # noqa: BLE001 - a run without the artifact simply has no panel
                continue
            gen = np.load(local)
        real = load_points(ds, loaded.data_root(), "test").x.numpy()
        ax = fig.add_subplot(1, len(datasets), i + 1, projection="3d")
        ax.scatter(*real[:2000].T, s=1, alpha=0.3, label="real (test)")
        ax.scatter(*gen[:2000].T, s=1, alpha=0.3, label="generated")
        ax.set_title(f"{ds}: {best.variant}, {best.substudy}={best.setting}\nEMD {best[key]:.1f}", fontsize=8)
        ax.legend(fontsize=7, markerscale=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _method_note(s: Study, sources: list[str]) -> str:
    """How the numbers were measured (and on which data files), for the report's header: the recipe's words."""
    report = recipe_report(s.recipe)
    return report.method.format_map(template_fields(report, s.eval, s.train, sources="; ".join(sources),
                                                    features=FEATURE_SPACES[s.eval.extractor].method))


def _substudy_sampling(sub: Study) -> str:
    """How a substudy's samples were drawn, in its recipe's words ("" when its recipe states none)."""
    report = recipe_report(sub.recipe)
    return report.sampling.format_map(template_fields(report, sub.eval, sub.train)) if report.sampling else ""


def _data_sources(loaded: LoadedStudy) -> list[str]:
    """Where each dataset came from (a file, or generated): the config hash does not cover the data location."""
    from harness.recipes import get_recipe

    load = get_recipe(loaded.study.recipe).load_data_fn()
    data = {**dataclasses.asdict(loaded.study.data), "root": str(loaded.data_root())}
    names = dict.fromkeys(d for _, sub in loaded.substudies for d in sub.datasets)
    return [f"{name} from {load(name, data, 'train').source}" for name in names]


def write_settings_tables(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, out_dir: Path
                          ) -> tuple[list[Path], str]:
    """<substudy>.csv/.tex, plots and points under ``out_dir``; returns them and the report's body (every
    substudy's table with its plots)."""
    return settings_tables(loaded, trials, tracker, out_dir)[:2]


def settings_tables(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, out_dir: Path
                    ) -> tuple[list[Path], str, str]:
    """``write_settings_tables``, also returning the study's main tables as Markdown (its header line and every
    substudy's table under its name) for the console."""
    s = loaded.study
    df = final_metrics(loaded, trials, tracker)
    paper = paper_table(s.table.paper_csv) if s.table.paper_csv else None
    metrics = [m for m in s.eval.metrics if m in TABLE_METRICS]
    seeds = sorted({t.seed for t in trials})
    written: list[Path] = []
    ours = (f"Ours: mean ± std over seeds {', '.join(map(str, seeds))}; {_method_note(s, _data_sources(loaded))}; "
            f"profile `{loaded.profile}`.")
    reference = (f"Paper: {s.paper or s.table.paper_csv}." if s.paper or paper is not None else
                 "No paper reference (the study names no paper and has no paper table).")
    noise = noise_section(loaded, trials, tracker)
    sections = [f"# {s.name} ({loaded.profile} profile)", "", s.description.strip(), "",
                f"{reference} {ours}", "", provenance(trials, tracker), "", *noise]
    main = [f"# {s.name} ({loaded.profile} profile)", "", f"{reference} {ours}", "", *noise]
    for name, sub in loaded.substudies:
        name = section_name(loaded, name)
        if df.empty or name not in set(df.substudy):
            continue
        part = _substudy_section(loaded, trials, tracker, df, paper, metrics, name, sub, out_dir, written)
        sections += part
        main += part[:5]  # its heading, what it varies and its table
    for combo, names in s.table.combine.items():  # e.g. diffusion_vs_gan: the baseline's and the GAN's rows
        sections += _combined_section(loaded, df, paper, metrics, combo, names, out_dir, written)
    if len(s.table.scatter) == 2:
        x, y = s.table.scatter
        fig = scatter_plot(df, x, y, s.eval.extractor, paper, out_file(out_dir, f"{x}_vs_{y}.png"),
                           f"{s.name} [{loaded.profile}]: every trial")
        if fig:
            written.append(fig)
            xl, yl = table_metric(x, s.eval.extractor).label, table_metric(y, s.eval.extractor).label
            sections += [f"## {xl} against {yl}", "", f"![scatter]({fig.name})", ""]
    fig = points_figure(df, loaded, tracker, out_file(out_dir, "points.png"))
    if fig:
        written.append(fig)
        sections += ["## Generated against real points", "", f"![generated vs real]({fig.name})", ""]
    return written, "\n".join(sections), "\n".join(main).rstrip()


def _substudy_section(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, df: pd.DataFrame,
                      paper: pd.DataFrame | None, metrics: list[str], name: str, sub: Study, out_dir: Path,
                      written: list[Path]) -> list[str]:
    """One substudy's table (<name>.csv/.tex, appended to ``written`` with its plots) and its report lines."""
    s = loaded.study
    num, shown = substudy_table(df, name, list(sub.datasets), metrics, paper, s.eval.extractor)
    csv, tex = out_file(out_dir, f"{name}.csv"), out_file(out_dir, f"{name}.tex")
    num.to_csv(csv, index=False)
    tex.write_text(shown.to_latex(index=False, caption=f"{s.name}: {name}", label=f"tab:{s.name}-{name}"))
    written += [csv, tex]
    desc = ", ".join(f"{k}" for k in sub.axes) or "variants " + ", ".join(sub.variants)
    unit, n = ("step", sub.train["steps"]) if "steps" in sub.train else ("epoch", sub.train.get("epochs"))
    length = f"{n:,} {unit}{'s' if n != 1 else ''}" if isinstance(n, int) else f"? {unit}s"
    sampling = _substudy_sampling(sub)
    sections = [f"## {name}", "", f"Varies {desc}; {length} unless varied{'; ' + sampling if sampling else ''}.", "",
                _markdown(shown), ""]
    reasons = sorted({v for c in num.columns if c.startswith("skipped_") for v in num[c].dropna()})
    sections += [f"Skipped: {r}." for r in reasons] + ([""] if reasons else [])
    if name in s.table.plots:
        by_hash = {t.config_hash: t for t in trials}
        for m in metrics:
            fig = metric_plot(df, name, s.table.plots[name], m, by_hash, paper, out_file(out_dir, f"{name}_{m}.png"),
                              f"{s.name} [{loaded.profile}] {name}: mean ± sd over seeds; dashed: paper",
                              s.eval.extractor)
            if fig:
                written.append(fig)
                sections += [f"![{name} {m}]({fig.name})", ""]
    if name in s.table.curves:
        fig = curves_plot(df, name, tuple(s.table.curves[name]), tracker, out_file(out_dir, f"{name}_curves.png"),
                          f"{s.name} [{loaded.profile}] {name}: over training steps, mean ± sd over seeds")
        if fig:
            written.append(fig)
            sections += [f"![{name} curves]({fig.name})", ""]
    return sections


def _combined_section(loaded: LoadedStudy, df: pd.DataFrame, paper: pd.DataFrame | None, metrics: list[str],
                      combo: str, names: tuple[str, ...], out_dir: Path, written: list[Path]) -> list[str]:
    """A table made of other substudies' rows in their order (<combo>.csv, appended to ``written``) and its report
    lines; [] when none of them has a row."""
    rows = df[df.substudy.isin(names)].copy() if not df.empty else df
    if rows.empty:
        return []
    rows["order"] = [list(names).index(n) * 100_000 + o for n, o in zip(rows.substudy, rows.order)]
    rows["substudy"] = combo
    datasets = list(dict.fromkeys(d for n, sub in loaded.substudies if n in names for d in sub.datasets))
    num, shown = substudy_table(rows, combo, datasets, metrics, paper, loaded.study.eval.extractor)
    csv = out_file(out_dir, f"{combo}.csv")
    num.to_csv(csv, index=False)
    written.append(csv)
    return [f"## {combo}", "", f"Rows of {', '.join(names)}.", "", _markdown(shown), ""]
