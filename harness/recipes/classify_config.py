"""The image-classification recipe's training config: "Modern Methods, Classical Constraints", discriminator part
(docs/papers.md, "Modern Methods, Classical Constraints").

AdamW with OneCycleLR whose peak comes from a learning-rate range test (``lr: null``; exponential sweep
``lr_find_min`` -> ``lr_find_max`` over ``lr_find_steps`` steps, not counted against ``steps``), label smoothing,
weight decay on conv/linear weights, gradient-norm clipping, RandAugment (torchvision defaults: 2 ops, magnitude 9)
plus random crop (pad 4) and horizontal flip, batch 1024, at most ``steps`` optimiser steps.
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

LR_RULES = ("steepest", "min_tenth")  # range test -> peak LR: steepest descent of the loss, or a tenth of the minimum


@dataclass(frozen=True)
class ClassifyTrain(SpeedKeys):
    steps: int = 10_000
    batch_size: int = 1024  # global batch, split across workers
    lr: float | None = None  # OneCycle peak LR; None: from the range test
    lr_find_steps: int = 200
    lr_find_min: float = 1e-7
    lr_find_max: float = 1.0
    lr_find_rule: str = "steepest"
    weight_decay: float = 5e-2
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    pct_start: float = 0.3  # OneCycleLR (torch defaults below): warm-up fraction, cosine annealing
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    randaugment: bool = True
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    # Images that share one RandAugment draw (torchvision draws one op sequence per call): 1 = per image, as
    # intended; larger groups trade augmentation diversity for speed on CPUs.
    augment_group: int = 1
    crop_pad: int = 4  # random crop after zero-padding by this many pixels; 0 disables
    flip: bool = True
    log_every: int = 50  # steps between reported training loss/accuracy (validation: eval.every, eval.batch_size)
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        check_bounds(self, {("steps", "batch_size", "log_every", "augment_group", "lr_find_steps"): ">= 1",
                            ("lr", "lr_find_min"): "> 0",  # lr None: from the range test
                            "label_smoothing": "in [0, 1)", ("weight_decay", "grad_clip", "crop_pad"): ">= 0",
                            "pct_start": "in (0, 1)"})
        if not self.lr_find_min < self.lr_find_max:
            raise ValueError(f"train.lr_find_min must be below train.lr_find_max, got {self.lr_find_min!r} and "
                             f"{self.lr_find_max!r}")
        check_choice(self, "lr_find_rule", LR_RULES)
        check_choice(self, "mixed_precision", MIXED_PRECISION)


RECIPE = Recipe(
    name="classify",
    train_config=ClassifyTrain,
    trial_fn="harness.recipes.classify:train_classify",
    calibrate_fn="harness.recipes.classify:calibrate_classifier",
    model_overrides=image_model_overrides,
    description="image classifier: AdamW + OneCycleLR from an LR range test, label smoothing, RandAugment",
    report=RecipeReport(
        method=("top-1 accuracy and cross-entropy on the whole test split, {train[steps]} steps of batch "
                "{train[batch_size]}; training accuracy on augmented batches; data: {sources}")),
)
