"""The exponential moving average of a model's weights, shared by every recipe that keeps one (each recipe
chooses its own decay schedule: EDM's inverse power, the GAN and v-diffusion warm-up, a constant)."""

from __future__ import annotations

import torch
from torch import nn


def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param for every parameter; buffers are copied (k-diffusion)."""
    ema_params, params = dict(ema_model.named_parameters()), dict(model.named_parameters())
    if ema_params.keys() != params.keys():
        raise ValueError("ema_update: the EMA model and the model have different parameters")
    # one multi-tensor kernel over all parameters (torch's optimizers use the same _foreach ops): a Python loop of
    # per-tensor lerps is several times slower at D8 width 128 (``harness bench zoo``)
    targets = [ema_params[name] for name in params]
    with torch.no_grad():
        torch._foreach_lerp_(targets, [p.detach().to(t.dtype) for p, t in zip(params.values(), targets)], 1.0 - decay)
    ema_bufs, bufs = dict(ema_model.named_buffers()), dict(model.named_buffers())
    if ema_bufs.keys() != bufs.keys():
        raise ValueError("ema_update: the EMA model and the model have different buffers")
    for name, b in bufs.items():
        ema_bufs[name].copy_(b)


# ------------------------------------------------------------------------------------------- sampling
