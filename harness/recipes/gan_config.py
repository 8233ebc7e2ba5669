"""The conditional GAN recipe's training config: the paper's alternative to its diffusion generator ("Modern
Methods, Classical Constraints", section 2.1: "a classic DCGAN design ... enhanced with techniques like spectral
normalisation and label smoothing", under the same 1M-parameter, 50k-step budget).

Non-saturating BCE losses with one-sided label smoothing (real targets ``1 - label_smoothing``), Adam with the
DCGAN betas (0.5, 0.999) for both networks, one discriminator step per generator step, horizontal flips, and an
EMA of the generator that the evaluations sample from.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.recipes.base import Recipe, RecipeReport, image_model_overrides
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
        if min(self.steps, self.batch_size, self.log_every) < 1 or min(self.lr_g, self.lr_d) <= 0:
            raise ValueError("steps, batch_size and log_every must be >= 1 and the learning rates positive")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("label_smoothing and ema_decay must be in [0, 1)")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


RECIPE = Recipe(
    name="gan",
    train_config=GANTrain,
    trial_fn="harness.recipes.gan:train_gan",
    model_overrides=image_model_overrides,
    description="class-conditional DCGAN (depthwise-separable, spectral norm, label smoothing), generator EMA",
    sampler_fn="harness.recipes.gan:sample_grids",
    report=RecipeReport(sampling="n = {eval.n_samples} samples", reference="training"),
)
