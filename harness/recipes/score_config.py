"""The score-based (NCSN, VE SDE) recipe's config: Song's score-SDE tutorial as the MNIST compression report ran it
(Adam 1e-4, batch 32, 50 epochs, sigma 25 in the model), plus the report's compression arms as keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.recipes.base import SAMPLING_REPORT, Recipe, RecipeReport, check_bounds, check_choice
from harness.training.speed import SpeedKeys

SAMPLERS = ("euler_maruyama", "pc", "ode")  # eval.sampler: harness.diffusion.score.SAMPLERS (which imports torch)


@dataclass(frozen=True)
class CompressionKeys(SpeedKeys):
    """Post-training compression and EMA, shared by the compression study's recipes."""

    ema_decay: float | None = None  # None: no EMA; the report's "+ EMA" arms set e.g. 0.995
    prune_method: str | None = None  # random | l1 (harness.eval.compression); None: no pruning
    prune_amount: float = 0.0
    prune_set: str = "global"  # global | middle | extremes
    quantize: str = "none"  # none | int8_dynamic | bnb8 | bnb4

    POST_TRAINING_QUANTIZE = ("none", "int8_dynamic")  # applied to the trained model; bnb arms change training

    @classmethod
    def training_view(cls, train: dict) -> dict:
        """The train section without what is applied after training: pruning and int8 dynamic quantisation. The
        pruning and int8 arms of a study then share their baseline's trained model instead of retraining it."""
        view = {k: v for k, v in train.items() if not k.startswith("prune_")}
        if view.get("quantize", "none") in cls.POST_TRAINING_QUANTIZE:
            view.pop("quantize", None)
        return view

    def _check_compression(self) -> None:
        from harness.eval.compression import MODULE_SETS, PRUNE_METHODS
        from harness.recipes.compression_eval import QUANTIZE

        if self.prune_method is not None:  # None: no pruning
            check_choice(self, "prune_method", PRUNE_METHODS)
        check_choice(self, "prune_set", MODULE_SETS)
        check_choice(self, "quantize", QUANTIZE)
        check_bounds(self, {"prune_amount": "in [0, 1)", "ema_decay": "in (0, 1)"})  # ema_decay None: no EMA


@dataclass(frozen=True)
class ScoreTrain(CompressionKeys):
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    eps: float = 1e-5  # smallest training time (the score is singular at t = 0)
    sample_eps: float = 1e-3  # where the samplers stop
    log_every: int = 1  # epochs
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        check_bounds(self, {("epochs", "batch_size", "log_every"): ">= 1"})
        self._check_compression()


def _model_overrides(model: dict, dataset: str, data: dict, train: dict | None = None) -> dict[str, Any]:
    from harness.training.data import image_meta

    c, h, _w, _k = image_meta(dataset, data)
    return {"in_channels": c, "input_size": h, **model}


RECIPE = Recipe(
    name="score",
    train_config=ScoreTrain,
    trial_fn="harness.recipes.score:train_score",
    calibrate_fn="harness.recipes.compression_eval:calibrate_images",
    model_overrides=_model_overrides,
    training_view=ScoreTrain.training_view,
    eval_samplers=SAMPLERS,
    description="VE-SDE denoising score matching (Song's tutorial) with EM, PC and ODE samplers; compression arms",
    report=RecipeReport(sampling=SAMPLING_REPORT),
)
