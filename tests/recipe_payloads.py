"""A recipe's trial payload from a study file at smoke size, for tests that run a recipe in-process (the training
skeleton's resume test, the two-worker test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.study.spec import expand_trials, load_study

REPO = Path(__file__).resolve().parents[1]


def smoke_payload(recipe: str, study: str, substudy: str | None, sets: dict[str, Any]) -> dict:
    """The first ``recipe`` trial of ``studies/<study>`` (smoke profile, with ``sets``) in ``substudy`` whose train
    section has every ``train.*`` value of ``sets`` (not an arm whose own axis overrides them)."""
    trials = expand_trials(load_study(REPO / "studies" / study, "smoke", dict(sets)))
    wanted = {k.split(".", 1)[1]: v for k, v in sets.items() if k.startswith("train.")}
    mine = [t for t in trials if t.recipe == recipe and (substudy is None or substudy in t.substudies)
            and all(t.train.get(k) == v for k, v in wanted.items())]
    assert mine, f"no {recipe} trial in {study} (smoke)"
    return mine[0].payload()
