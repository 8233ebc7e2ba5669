"""`harness sample`: sample and interpolation grids from finished trials' checkpoints, without training.

A recipe opts in with ``Recipe.sampler_fn``; the grids go to ``results/<study>/<profile>/samples/<hash>/`` unless
``--out`` says otherwise. Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.spec import expand_trials, load_study


def sample_study(path: str | Path, profile: str | None, sets: dict[str, Any] | None, trial: str | None, n: int,
                 seed: int, out: str | Path | None = None, results_dir: str | Path | None = None,
                 steps: int | None = None, w: float | None = None, sampler: str | None = None,
                 echo=print) -> list[Path]:
    import torch

    from harness.recipes import get_recipe
    from harness.runner import results_dir_for

    loaded = load_study(path, profile, sets)
    trials = expand_trials(loaded)
    rdir = results_dir_for(loaded, results_dir)
    chosen = [t for t in trials if not trial or t.config_hash.startswith(trial)]
    if trial and not chosen:
        raise UserError(f"no trial of {loaded.study.name} [{loaded.profile}] has a hash starting with {trial!r}; "
                        f"`harness study {path} --dry-run` lists them")
    written: list[Path] = []
    for t in chosen:
        fn = get_recipe(t.recipe).load_sampler_fn()
        ckpts = sorted((rdir / "runs" / t.study / t.config_hash / "checkpoints").glob("step_*.pt"))
        if fn is None or not ckpts:
            if trial:
                why = f"recipe {t.recipe!r} has no sampler" if fn is None else "it has no checkpoint yet"
                raise UserError(f"cannot sample trial {t.config_hash} ({t.run_name}): {why}")
            continue
        state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
        where = Path(out) if out else rdir / t.study / loaded.profile / "samples" / t.config_hash
        for p in fn(t.payload(), state, where, n, seed, steps=steps, w=w, sampler=sampler):
            echo(f"wrote {p} ({t.run_name}, {ckpts[-1].stem})")
            written.append(Path(p))
    if not written:
        raise UserError(f"no finished trial of {loaded.study.name} [{loaded.profile}] with a sampler has a checkpoint "
                        f"under {rdir / 'runs'}; run `harness study {path}` first")
    return written
