"""`harness sample`: sample and interpolation grids from finished trials' checkpoints, without training.

A recipe opts in with ``Recipe.sampler_fn``; the grids go to ``results/<study>/<profile>/samples/<hash>/`` unless
``--out`` says otherwise. The newest usable checkpoint is loaded with ``weights_only=True``, checked as a resuming
trial checks it (``harness.training.checkpoints.load_newest_checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError
from harness.run.session import StudySession
from harness.study.spec import expand_trials
from harness.training.checkpoints import list_checkpoints, load_newest_checkpoint


def sample_study(session: StudySession, trial: str | None, n: int, seed: int, out: str | Path | None = None,
                 steps: int | None = None, w: float | None = None, sampler: str | None = None,
                 echo=print) -> list[Path]:
    from harness.recipes import get_recipe

    loaded = session.loaded
    trials = expand_trials(loaded)
    rdir = session.results
    chosen = [t for t in trials if not trial or t.config_hash.startswith(trial)]
    if trial and not chosen:
        raise UserError(f"no trial of {loaded.study.name} [{loaded.profile}] has a hash starting with {trial!r}; "
                        f"`{session.command('study', '--dry-run')}` lists them")
    written: list[Path] = []
    for t in chosen:
        fn = get_recipe(t.recipe).load_sampler_fn()
        # where the trial's checkpoints are (harness.run.driver._trial_config): its own, or its shared trained model's
        owner = ("trained", t.train_hash) if t.train_hash else (t.config_hash,)
        ckpt_dir = rdir / "runs" / t.study / Path(*owner) / "checkpoints"
        if fn is None or not list_checkpoints(ckpt_dir):
            if trial:
                why = f"recipe {t.recipe!r} has no sampler" if fn is None else "it has no checkpoint yet"
                raise UserError(f"cannot sample trial {t.config_hash} ({t.run_name}): {why}")
            continue
        # the same checks as a resuming trial (files are only read here: moving them aside is the trial's job)
        found = load_newest_checkpoint(ckpt_dir, owner[-1], move_aside=False)
        if found.state is None:
            msg = (f"cannot sample trial {t.config_hash} ({t.run_name}): no checkpoint under {ckpt_dir} can be "
                   f"loaded ({found.describe()})")
            if trial:
                raise UserError(msg)
            echo(msg)
            continue
        where = Path(out) if out else rdir / t.study / loaded.profile / "samples" / t.config_hash
        for p in fn(t.payload(), found.state, where, n, seed, steps=steps, w=w, sampler=sampler):
            echo(f"wrote {p} ({t.run_name}, {found.path.stem})")
            written.append(Path(p))
    if not written:
        raise UserError(f"no finished trial of {loaded.study.name} [{loaded.profile}] with a sampler has a checkpoint "
                        f"under {rdir / 'runs'}; run `{session.command('study')}` first")
    return written
