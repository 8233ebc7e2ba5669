"""The class-conditional image DDPM recipe (dome272's Diffusion-Models-pytorch, as the MNIST compression report ran
its DDPM baseline): T = 1000 linear betas 1e-4..0.02, AdamW 3e-4, MSE on the noise, label dropout 0.1 (the whole
batch unconditional, as upstream), classifier-free guidance scale 3 at sampling, optional EMA (0.995 after 2000
warm-up steps), plus the compression study's arms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.recipes.base import Recipe, RecipeReport, check_bounds
from harness.recipes.score_config import CompressionKeys


@dataclass(frozen=True)
class DDPMImageTrain(CompressionKeys):
    epochs: int = 50
    batch_size: int = 14
    lr: float = 3e-4
    T: int = 1000
    schedule: str = "linear"
    lbeta: float = 1e-4
    ubeta: float = 0.02
    label_dropout: float = 0.1
    cfg_scale: float = 3.0
    ema_start: int = 2000  # steps during which the EMA copy just tracks the model (upstream step_start_ema)
    log_every: int = 1  # epochs
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        from harness.diffusion.ddpm import beta_schedule

        check_bounds(self, {("epochs", "batch_size", "log_every"): ">= 1", "label_dropout": "in [0, 1)",
                            "cfg_scale": ">= 0"})
        beta_schedule(self.schedule, self.T, self.lbeta, self.ubeta)
        self._check_compression()


def _model_overrides(model: dict, dataset: str, data: dict, train: dict | None = None) -> dict[str, Any]:
    from harness.training.data import image_meta

    c, h, _w, k = image_meta(dataset, data)
    return {"in_channels": c, "out_channels": c, "input_size": h, "num_classes": k, **model}


RECIPE = Recipe(
    name="ddpm_image",
    train_config=DDPMImageTrain,
    trial_fn="harness.recipes.ddpm_image:train_ddpm_image",
    calibrate_fn="harness.recipes.compression_eval:calibrate_images",
    model_overrides=_model_overrides,
    training_view=DDPMImageTrain.training_view,
    description="class-conditional image DDPM with classifier-free guidance and EMA; compression arms",
    report=RecipeReport(sampling="n = {eval.n_samples} samples, ancestral over T = {train[T]} steps",
                        defaults={"train.T": 1000}),
)
