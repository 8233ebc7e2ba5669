"""The image-classification recipe's training config: "Modern Methods, Classical Constraints", discriminator part
(docs/papers.md, "Modern Methods, Classical Constraints").

AdamW with OneCycleLR whose peak comes from a learning-rate range test (``lr: null``; exponential sweep
``lr_find_min`` -> ``lr_find_max`` over ``lr_find_steps`` steps, not counted against ``steps``), label smoothing,
weight decay on conv/linear weights, gradient-norm clipping, RandAugment (torchvision defaults: 2 ops, magnitude 9)
plus random crop (pad 4) and horizontal flip, batch 1024, at most ``steps`` optimiser steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.recipes.base import Recipe, RecipeReport, image_model_overrides
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
        if min(self.steps, self.batch_size, self.log_every, self.augment_group, self.lr_find_steps) < 1:
            raise ValueError("steps, batch_size, log_every, augment_group and lr_find_steps must be >= 1")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive (or null for the range test), got {self.lr}")
        if not 0 < self.lr_find_min < self.lr_find_max:
            raise ValueError("the range test needs 0 < lr_find_min < lr_find_max")
        if self.lr_find_rule not in LR_RULES:
            raise ValueError(f"lr_find_rule must be one of {', '.join(LR_RULES)}, got {self.lr_find_rule!r}")
        if not 0 <= self.label_smoothing < 1 or self.weight_decay < 0 or self.grad_clip < 0 or self.crop_pad < 0:
            raise ValueError("label_smoothing must be in [0, 1); weight_decay, grad_clip and crop_pad >= 0")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


RECIPE = Recipe(
    name="classify",
    train_config=ClassifyTrain,
    trial_fn="harness.recipes.classify:train_classify",
    model_overrides=image_model_overrides,
    description="image classifier: AdamW + OneCycleLR from an LR range test, label smoothing, RandAugment",
    report=RecipeReport(
        method=("top-1 accuracy and cross-entropy on the whole test split, {train[steps]} steps of batch "
                "{train[batch_size]}; training accuracy on augmented batches; data: {sources}")),
)
