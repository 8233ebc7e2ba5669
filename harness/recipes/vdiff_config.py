"""The v-diffusion generator recipe's training config ("Modern Methods, Classical Constraints", the generator under
1M parameters and 50k steps; docs/papers.md, implementation note 1.4).

Continuous-time VP diffusion on log-SNR with the paper's schedules (cosine, linear, spliced cosine-linear), Sobol
timesteps, the v-objective, class dropout to the null class for classifier-free guidance (paper Eq. 4 with weight
``cfg_weight``), AdamW with linear warm-up, horizontal flips, EMA; sampling is DDPM-style ancestral (``eval.sampler:
ancestral``, eta = 1) or DDIM (``ddim``), optionally with Imagen's dynamic thresholding.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.recipes.base import (
    MIXED_PRECISION,
    SAMPLING_REPORT,
    Recipe,
    RecipeReport,
    check_bounds,
    check_choice,
    image_model_overrides,
)
from harness.training.speed import SpeedKeys

SAMPLERS = {"ancestral": 1.0, "ddim": 0.0}  # eval.sampler -> eta


@dataclass(frozen=True)
class VDiffTrain(SpeedKeys):
    steps: int = 50_000
    batch_size: int = 128  # global batch, split across workers
    lr: float = 5e-4
    warmup: int = 1000  # steps of linear LR warm-up
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    schedule: str = "cosine"  # cosine | linear | spliced | log_linear (harness.diffusion.vdiff.SCHEDULES)
    weighting: str = "mse"  # mse | sigmoid (Crowson's sigmoid(log-SNR) weighting)
    cond_dropout: float = 0.1  # probability of training on the null class (the unconditional branch of CFG)
    cfg_weight: float = 3.0  # w in Eq. 4: (1 + w) v_cond - w v_uncond; 0 = plain conditional
    dynamic_threshold: float | None = 0.995  # Imagen's percentile at sampling; None disables
    ema_decay: float = 0.999
    flip: bool = True
    interpolations: int = 8  # rows of the slerp interpolation grid at the last evaluation (0: none)
    log_every: int = 100
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        from harness.diffusion.vdiff import LOSS_WEIGHTINGS, schedule

        check_bounds(self, {("steps", "batch_size", "log_every"): ">= 1", ("warmup", "interpolations"): ">= 0",
                            ("cond_dropout", "ema_decay"): "in [0, 1)", "cfg_weight": ">= 0",
                            "dynamic_threshold": "in (0, 1]"})  # dynamic_threshold None: off
        schedule(self.schedule)
        check_choice(self, "weighting", LOSS_WEIGHTINGS)
        check_choice(self, "mixed_precision", MIXED_PRECISION)


RECIPE = Recipe(
    name="vdiff",
    train_config=VDiffTrain,
    trial_fn="harness.recipes.vdiff:train_vdiff",
    calibrate_fn="harness.recipes.generator_eval:calibrate_generator",
    model_overrides=image_model_overrides,
    eval_samplers=tuple(SAMPLERS),
    description="continuous-time v-diffusion (Crowson) with CFG, Sobol timesteps, EMA, ancestral/DDIM sampling",
    sampler_fn="harness.recipes.vdiff:sample_grids",
    report=RecipeReport(sampling=SAMPLING_REPORT, reference="training"),
)
