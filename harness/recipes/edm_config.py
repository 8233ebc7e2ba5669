"""The EDM (Karras et al. 2022) diffusion recipe's training config, as the block-sharing paper ran it.

Defaults are the reference configs of k-diffusion v0.1.1 used by Osman & Kaplan 2024 (see
shared spec "Training"): AdamW 5e-4, betas (0.9, 0.95), wd 1e-4, constant LR, clip 1.0, inverse-power EMA
(power 2/3, max 0.9999), class dropout 0.1, Karras augmentation p=0.12, batch 64, fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.recipes.base import MIXED_PRECISION, SAMPLING_REPORT, Recipe, RecipeReport, check_bounds, check_choice
from harness.training.speed import SpeedKeys

SAMPLERS = ("dpmpp_2m", "heun", "euler")  # eval.sampler: harness.diffusion.edm.SAMPLERS (which imports torch)


@dataclass(frozen=True)
class EDMTrain(SpeedKeys):
    steps: int = 1_000_000
    batch_size: int = 64  # global batch, split across workers
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_power: float = 0.6667
    ema_max: float = 0.9999
    class_dropout: float = 0.1
    augment_prob: float = 0.12  # 0 disables the Karras augmentation pipeline (and its conditioning)
    loss_weighting: str = "soft-min-snr"
    mixed_precision: str = "no"  # Accelerate: no | fp16 | bf16
    grad_accum: int = 1
    log_every: int = 100  # steps between reported training metrics

    def __post_init__(self) -> None:
        check_bounds(self, {("steps", "batch_size", "grad_accum", "log_every"): ">= 1",
                            "class_dropout": "in [0, 1)", "augment_prob": "in [0, 1]"})
        check_choice(self, "mixed_precision", MIXED_PRECISION)
        check_choice(self, "loss_weighting", ("soft-min-snr", "karras"))


def _model_overrides(model: dict, dataset: str, data: dict, train: dict | None = None) -> dict[str, Any]:
    """Image shape and classes come from the dataset unless the study sets them."""
    from harness.training.data import image_meta

    c, h, _w, classes = image_meta(dataset, data)
    out = {"in_channels": c, "input_size": h, "num_classes": classes}
    out.update(model)
    return out


RECIPE = Recipe(
    name="edm",
    train_config=EDMTrain,
    trial_fn="harness.recipes.edm:train_edm",
    calibrate_fn="harness.recipes.edm:calibrate_edm",
    model_overrides=_model_overrides,
    eval_samplers=SAMPLERS,
    description="EDM/Karras diffusion (k-diffusion v0.1.1 configs): soft-min-SNR loss, DPM-Solver++(2M) sampling",
    report=RecipeReport(sampling=SAMPLING_REPORT),
)
