"""The study report: results/<study>/<profile>/README.md, so the results folder reads well as it stands.

The table writers (harness.reporting.tables for Table-1 studies, harness.reporting.settings for studies of
substudies) write the
report's body: what was run, at which scale and n, on which machine and versions, the tables beside the paper's
numbers and the plots. Below a marker line follows an appendix made from the files the folder holds: the Pareto
plots, the `harness compare` tables and the hand-written NOTES.md. `harness compare` refreshes the appendix only, so
a comparison run after the tables shows up in the report without re-reading the store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from harness.study.spec import out_file

MARKER = "<!-- harness: generated from the files in this folder below this line -->"


def appendix(out_dir: Path) -> str:
    """Pareto plots, comparison tables and notes found in ``out_dir``, as Markdown sections."""
    parts: list[str] = []
    paretos = sorted(out_dir.glob("pareto_*.png"))
    if paretos:
        parts += ["## Pareto fronts", "",
                  "Quality against cost (parameters, estimated training FLOPs, wall time per trial); the front is "
                  "ringed and joined. Every configuration, with its front membership, is in the CSV beside each plot.",
                  ""]
        for png in paretos:
            csv = png.with_suffix(".csv")
            parts += [f"![{png.stem}]({png.name})", ""]
            parts += [f"Data: [{csv.name}]({csv.name})", ""] if csv.exists() else []
    compares = sorted(out_dir.glob("compare_*.md"))
    if compares:
        parts += ["## Comparisons", "", "Written by `harness compare FILE --by KEY`: each arm paired with the "
                  "baseline arm trial by trial (same dataset, other axes and seed).", ""]
        for md in compares:
            text = md.read_text().strip()
            text = re.sub(r"\A# [^\n]*:\s*([^\n]+)", r"### By \1", text)  # "# study: key" -> "### By key"
            parts += [text, "", f"Data: [{md.with_suffix('.csv').name}]({md.with_suffix('.csv').name})", ""]
    notes = out_dir / "NOTES.md"
    if notes.exists():
        body = re.sub(r"\A# [^\n]*\n+", "", notes.read_text().strip())  # its own title gives way to ours
        parts += ["## Notes", "", body, ""]
    return "\n".join(parts)


def write_report(out_dir: Path, body: str) -> Path:
    """README.md = ``body`` + the marker + the appendix of the folder's files."""
    path = out_file(out_dir, "README.md")
    path.write_text(body.rstrip() + "\n\n" + MARKER + "\n\n" + appendix(out_dir))
    return path


def refresh_appendix(out_dir: Path) -> Path | None:
    """Rewrite the appendix of an existing report (after `harness compare`); None when there is no report yet."""
    path = out_dir / "README.md"
    if not path.exists():
        return None
    body = path.read_text().split(MARKER, 1)[0]
    return write_report(out_dir, body)


def beside_paper(ours: pd.DataFrame, paper: pd.DataFrame, key: str, label: str, baseline: str | None,
                 higher_better: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Ours next to the paper per variant, in units that survive a change of dataset and scale: each variant's value
    relative to the baseline variant (percent) and its rank, for our datasets and each of the paper's. Returns the
    display frame and one sentence per (our dataset, paper dataset) pair with Spearman's rank correlation.

    ``ours``: dataset, variant, ``key`` (one row per dataset and variant); ``paper``: dataset, variant, fid."""
    from scipy.stats import spearmanr

    def relative(values: pd.Series) -> tuple[pd.Series, pd.Series]:
        rank = values.rank(ascending=not higher_better, method="min")
        if baseline is None or baseline not in values.index or pd.isna(values.get(baseline)):
            return pd.Series(float("nan"), index=values.index), rank
        return (values / values[baseline] - 1) * 100, rank

    variants = list(dict.fromkeys(ours.variant))
    out = pd.DataFrame({"Variant": variants})
    columns: dict[str, pd.Series] = {}
    for ds, g in ours.groupby("dataset", sort=False):
        columns[f"ours:{ds}"] = g.set_index("variant")[key].reindex(variants)
    for ds, g in paper.groupby("dataset", sort=False):
        columns[f"paper:{ds}"] = g.set_index("variant")["fid"].reindex(variants)
    for name, values in columns.items():
        who, ds = name.split(":", 1)
        rel, rank = relative(values)
        head = f"{'Ours ' + label if who == 'ours' else 'Paper FID'} ({ds})"
        out[head] = values.map(lambda v: f"{v:.2f}" if pd.notna(v) else "–").to_numpy()
        if baseline is not None:
            out[f"vs {baseline} ({ds}{'' if who == 'ours' else ', paper'})"] = rel.map(
                lambda v: f"{v:+.1f}%" if pd.notna(v) else "–").to_numpy()
        out[f"Rank ({ds}{'' if who == 'ours' else ', paper'})"] = rank.map(
            lambda v: f"{v:.0f}" if pd.notna(v) else "–").to_numpy()
    sentences = []
    ours_ds = {n[5:] for n in columns if n.startswith("ours:")}
    paper_ds = {n[6:] for n in columns if n.startswith("paper:")}
    for oname, o in columns.items():
        if not oname.startswith("ours:"):
            continue
        for pname, p in columns.items():
            # on the paper's own datasets, each is compared with itself; on stand-ins, with each of the paper's
            if not pname.startswith("paper:") or (ours_ds & paper_ds and oname[5:] != pname[6:]):
                continue
            both = pd.concat([o, p], axis=1).dropna()
            if len(both) < 3:
                continue
            rho, pval = spearmanr(both.iloc[:, 0], both.iloc[:, 1])
            sentences.append(f"Our ranking on {oname[5:]} against the paper's on {pname[6:]}: Spearman rho = "
                             f"{rho:+.2f} (p = {pval:.2f}, {len(both)} variants).")
    return out, sentences


def sample_gallery(trials: list, tracker, out_dir: Path, per_row: int = 4) -> tuple[list[Path], str]:
    """The last sample grid (and interpolation grid, where the recipe logs one) of every finished configuration's
    first seed, copied from MLflow into ``out_dir``/samples/ and laid out as a Markdown table of images. Returns the
    files and the section ('' when no trial logged a grid)."""
    import shutil
    import tempfile

    finished = tracker.finished_runs(trials[0].study) if trials else {}
    first_seed: dict[tuple, object] = {}
    for t in trials:
        key = (t.dataset, t.variant, json.dumps(t.axes, sort_keys=True, default=str))  # axis values may be lists
        if t.config_hash in finished and (key not in first_seed or t.seed < first_seed[key].seed):
            first_seed[key] = t
    cells: list[tuple[str, str]] = []
    written: list[Path] = []
    samples = out_dir / "samples"
    for old in [*samples.glob("*_step_*.png"), *samples.glob("*_interp_*.png")]:  # an earlier table's copies
        old.unlink()
    for t in first_seed.values():
        run = finished[t.config_hash]
        arts = [a.path for a in tracker.client.list_artifacts(run.info.run_id, "samples")]
        for prefix in ("samples/step_", "samples/interp_"):
            last = sorted(a for a in arts if a.startswith(prefix) and a.endswith(".png"))[-1:]
            if not last:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                got = Path(tracker.client.download_artifacts(run.info.run_id, last[0], tmp))
                samples.mkdir(parents=True, exist_ok=True)
                dest = out_file(samples, f"{t.config_hash}_{Path(last[0]).name}")
                shutil.copyfile(got, dest)
            written.append(dest)
            kind = "interpolations" if "interp_" in prefix else f"step {int(Path(last[0]).stem.split('_')[-1]):,}"
            cells.append((f"{run.info.run_name} ({kind})", f"samples/{dest.name}"))
    if not cells:
        return [], ""
    seed = min(t.seed for t in first_seed.values())
    lines = ["## Samples", "", f"The last evaluation's sample grid per configuration (seed {seed} where there are "
             "several), copied from each run's MLflow artifacts.", ""]
    for i in range(0, len(cells), per_row):
        row = cells[i:i + per_row]
        lines += ["| " + " | ".join(name for name, _ in row) + " |", "|" + "---|" * len(row),
                  "| " + " | ".join(f"![{name}]({path})" for name, path in row) + " |", ""]
    return written, "\n".join(lines)
