"""The conditional GAN recipe's training config: the paper's alternative to its diffusion generator ("Modern
Methods, Classical Constraints", section 2.1: "a classic DCGAN design ... enhanced with techniques like spectral
normalisation and label smoothing", under the same 1M-parameter, 50k-step budget).

Non-saturating BCE losses with one-sided label smoothing (real targets ``1 - label_smoothing``), Adam with the
DCGAN betas (0.5, 0.999) for both networks, one discriminator step per generator step, horizontal flips, and an
EMA of the generator that the evaluations sample from.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.recipes.base import (
    MIXED_PRECISION,
    Recipe,
    RecipeReport,
    check_bounds,
    check_choice,
    image_model_overrides,
)
from harness.training.speed import SpeedKeys


@dataclass(frozen=True)
class GANTrain(SpeedKeys):
    steps: int = 50_000
    batch_size: int = 128  # global batch, split across workers
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    label_smoothing: float = 0.1  # one-sided: real targets 0.9
    ema_decay: float = 0.999
    flip: bool = True
    log_every: int = 100
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        check_bounds(self, {("steps", "batch_size", "log_every"): ">= 1", ("lr_g", "lr_d"): "> 0",
                            ("label_smoothing", "ema_decay"): "in [0, 1)"})
        check_choice(self, "mixed_precision", MIXED_PRECISION)


RECIPE = Recipe(
    name="gan",
    train_config=GANTrain,
    trial_fn="harness.recipes.gan:train_gan",
    calibrate_fn="harness.recipes.generator_eval:calibrate_generator",
    model_overrides=image_model_overrides,
    description="class-conditional DCGAN (depthwise-separable, spectral norm, label smoothing), generator EMA",
    sampler_fn="harness.recipes.gan:sample_grids",
    report=RecipeReport(sampling="n = {eval.n_samples} samples", reference="training"),
)
