"""The null recipe: the zoo's ``null`` model trained through the whole stack with a fixed amount of stand-in compute
per step, so ``harness bench overhead`` can time what the harness itself costs: trial start to first step, last
step to finished, and the cost of each report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.recipes.base import Recipe, check_bounds
from harness.training.speed import SpeedKeys

WORK_SIZE = 256  # side of the square fp32 matmuls a step does ``work`` times


@dataclass(frozen=True)
class NullTrain(SpeedKeys):
    steps: int = 100
    work: int = 0  # 256x256 fp32 matmuls per step, standing in for a real step's compute (0: none)
    report_every: int = 10  # steps between reports
    # > 0: phases of this many steps alternate between reporting (every report_every steps) and quiet (no report),
    # so one trial measures its step time with and without reports, side by side in the same process
    phase_steps: int = 0
    checkpoint_every: int = 0  # steps between checkpoints (0: only with the last report)

    def __post_init__(self) -> None:
        check_bounds(self, {("steps", "report_every"): ">= 1", ("work", "phase_steps", "checkpoint_every"): ">= 0"})


def _model_overrides(model: dict, dataset: str, data: dict, train: dict | None = None) -> dict[str, Any]:
    return dict(model)


RECIPE = Recipe(
    name="null",
    train_config=NullTrain,
    trial_fn="harness.recipes.null:train_null",
    model_overrides=_model_overrides,
    description="the null model with stand-in compute: what the harness costs per trial and per report (bench)",
)
