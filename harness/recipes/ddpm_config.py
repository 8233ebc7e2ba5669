"""The discrete DDPM recipe's training config (Ho et al. 2020), as the CS 726 homework ran it on 3-D toy data.

Defaults are the homework's fixed hyperparameters (report tables 2, 4, 6; starter `train.py`): T (n_steps) 50,
lbeta 1e-5, ubeta 1.28e-2, linear schedule, batch 1024. The report does not give the optimiser or learning rate;
Adam at 1e-3 is our choice (spec, Paper 3, 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.recipes.base import Recipe, RecipeReport, check_bounds, check_choice
from harness.training.speed import SpeedKeys


@dataclass(frozen=True)
class DDPMTrain(SpeedKeys):
    epochs: int = 500
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    T: int = 50
    schedule: str = "linear"  # linear | scaled_linear | sigmoid | cosine | sech (harness.diffusion.ddpm)
    lbeta: float = 1e-5
    ubeta: float = 1.28e-2
    variance: str = "beta"  # ancestral sampling variance: beta (sigma_t^2 = beta_t, the homework's) | posterior
    log_every: int = 10  # epochs between reported training losses
    checkpoint_every: int = 100  # epochs between checkpoints (metrics are computed once, after the last epoch)
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        from harness.diffusion.ddpm import VARIANCES, beta_schedule

        check_bounds(self, {("epochs", "batch_size", "log_every", "checkpoint_every"): ">= 1"})
        check_choice(self, "variance", VARIANCES)
        beta_schedule(self.schedule, self.T, self.lbeta, self.ubeta)  # T < 1, betas outside (0, 1), unknown name


def _model_overrides(model: dict, dataset: str, data: dict, train: dict | None = None) -> dict[str, Any]:
    """Point clouds are 3-D; the time embedding is scaled by the process's T unless the study sets it."""
    out: dict[str, Any] = {"n_dim": 3, "max_t": int((train or {}).get("T", 1000))}
    out.update(model)
    return out


RECIPE = Recipe(
    name="ddpm",
    train_config=DDPMTrain,
    trial_fn="harness.recipes.ddpm:train_ddpm",
    calibrate_fn="harness.recipes.ddpm:calibrate_points",
    model_overrides=_model_overrides,
    data_loader="harness.training.point_clouds:load_study_points",
    description="discrete DDPM (epsilon-MSE, ancestral sampling) on 3-D point clouds, scored by EMD and NLL",
    report=RecipeReport(
        method=("test-set EMD over {eval.emd_n} random points and Gaussian-kernel NLL (temperature 0.1), each "
                "averaged over {eval.runs} sampling runs; data: {sources}"),
        points_figure=True, defaults={"eval.emd_n": 128, "eval.runs": 3}),
)
