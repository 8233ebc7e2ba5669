"""Diffusion maths: EDM loss, noise sampling, the EMA decay schedule, samplers, generation (``edm``) and Karras
augmentation (``augment``), following k-diffusion v0.1.1 as used by the block-sharing paper."""

from harness.diffusion.augment import KarrasAugment, params_to_cond, params_to_matrix, warp_affine
from harness.diffusion.edm import (
    EVAL_SIGMAS,
    SAMPLERS,
    denoising_loss_at,
    dropout_classes,
    ema_decay,
    generate,
    karras_loss,
    karras_sigmas,
    loss_weighting,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_sigmas_train,
)

__all__ = [
    "EVAL_SIGMAS",
    "SAMPLERS",
    "KarrasAugment",
    "denoising_loss_at",
    "dropout_classes",
    "ema_decay",
    "generate",
    "karras_loss",
    "karras_sigmas",
    "loss_weighting",
    "params_to_cond",
    "params_to_matrix",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sample_sigmas_train",
    "warp_affine",
]
