"""The null model: one scale per feature, nothing else. ``harness bench overhead`` trains it through the whole stack
(Ray Tune, Ray Train, Accelerate, MLflow) so that what it measures is the harness, not a network."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.registry import Family, register, register_family

FAMILY = "null"


@dataclass(frozen=True)
class NullConfig:
    features: int = 1

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ValueError(f"features must be >= 1, got {self.features}")


class NullModel(nn.Module):
    """y = x * scale (elementwise, ``features`` parameters); the smallest module an optimizer and DDP accept."""

    def __init__(self, config: NullConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.ones(config.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def flops(cfg: NullConfig) -> int:
    return cfg.features  # one multiply per feature


register_family(Family(FAMILY, NullConfig, NullModel, flops))


@register("null", FAMILY, recorded_params=1)
def null() -> NullConfig:
    """A model that does nothing (one parameter): the harness's own cost, measured by ``harness bench overhead``."""
    return NullConfig()
