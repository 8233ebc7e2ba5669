"""Noise calibration: the floor of each metric at the study's evaluation settings (harness.eval.calibration),
measured once per group of trials (harness.reporting.calibration) after the trials and kept as a calibration run in
MLflow beside them. A group with a finished calibration run is not measured again, so a rerun of a finished study
calibrates nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import UserError, one_line
from harness.reporting.calibration import EVAL_KEYS, calibration_groups, calibration_name
from harness.study.spec import LoadedStudy, Trial
from harness.tracking import Tracker

Echo = Callable[[str], None]


def run_calibrations(loaded: LoadedStudy, trials: list[Trial], tracker: Tracker, rdir: Path,
                     echo: Echo = print) -> list[str]:
    """Measure and log every group's floors not yet in the store; returns the new runs' ids."""
    from harness.recipes import get_recipe
    from harness.training.context import TrialContext

    draws = loaded.study.calibration_draws
    if not draws or not trials:
        return []
    fn = get_recipe(trials[0].recipe).load_calibrate_fn()
    if fn is None:
        return []
    done = tracker.calibration_runs(loaded.study.name)
    new = []
    for key, t in calibration_groups(trials, draws).items():
        if key in done:
            continue
        payload = t.payload()
        ctx = TrialContext(payload, {"run_dir": str(rdir / "runs" / t.study / "calibration" / key),
                                     "cache_dir": str(rdir / "cache"), "data_root": str(loaded.data_root())},
                           report_fn=lambda _payload: None)
        name = calibration_name(t)
        echo(f"{name}: measuring the metric floors ({draws} draws) ...")
        t0 = time.perf_counter()
        try:
            floors = [f.as_dict() for f in fn(payload, ctx, draws)]
        except (ValueError, UserError) as e:  # e.g. too few real images for two disjoint samples of n
            echo(f"  not calibrated: {one_line(e)}")
            continue
        seconds = time.perf_counter() - t0
        tags = {"harness.dataset": t.dataset, "harness.profile": loaded.profile, "harness.recipe": t.recipe,
                "harness.seconds": f"{seconds:.1f}",
                **{f"harness.eval.{k}": str(t.eval.get(k)) for k in EVAL_KEYS if t.eval.get(k) is not None}}
        new.append(tracker.log_calibration(t.study, key, name, tags, floors))
        for f in floors:
            sd = "" if f["sd"] != f["sd"] else f" ± {f['sd']:.4g}"
            echo(f"  {f['reference']}: {f['metric']} {f['mean']:.4g}{sd} ({f['draws']} draws of n = {f['n']})")
    return new
