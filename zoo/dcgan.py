"""The paper's conditional GAN (sec. 2.1: "depthwise separable convolutions with a classic DCGAN design ... spectral
normalisation"), for the GAN-vs-diffusion row (family ``dcgan_ds``). Our design: the paper gives no numbers.
Names and counts: ``zoo/classical.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from zoo.classical import _check, _positive_ints, matmul_decay_groups
from zoo.registry import Family, register, register_family

GAN_FAMILY = "dcgan_ds"


@dataclass(frozen=True)
class DCGANConfig:
    """The paper's conditional GAN (sec. 2.1), our design: DCGAN layout with depthwise-separable convs.

    Generator: [z, class_emb(y)] -> Linear -> 4x4 x g_channels[0] -> BN, ReLU -> per further width: nearest 2x,
    DS conv (dw 3x3, pw 1x1, no bias), BN, ReLU -> DS conv to ``in_channels`` (with bias), tanh. 4 -> 8 -> 16 -> 32.
    Discriminator: spectrally normalised DS convs with LeakyReLU(``leak``), the first at full size (dw 3x3), then
    one stride-2 (dw 4x4, pad 1) per further width; sum-pool; logit = Linear(h) + <class_emb(y), h> (projection
    discriminator, Miyato & Koyama 2018)."""

    z_dim: int = 128
    emb_dim: int = 128
    num_classes: int = 100
    g_channels: tuple[int, ...] = (128, 128, 64, 32)
    d_channels: tuple[int, ...] = (64, 128, 256, 512)
    leak: float = 0.2
    in_channels: int = 3
    input_size: int = 32

    def __post_init__(self) -> None:
        for key in ("g_channels", "d_channels"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        _check([
            (min(self.z_dim, self.emb_dim, self.num_classes, self.in_channels) >= 1,
             "z_dim, emb_dim, num_classes and in_channels must all be >= 1"),
            (_positive_ints(self.g_channels), f"g_channels must be a non-empty tuple of widths, got {self.g_channels}"),
            (_positive_ints(self.d_channels), f"d_channels must be a non-empty tuple of widths, got {self.d_channels}"),
            (0 <= self.leak < 1, f"leak must be in [0, 1), got {self.leak}"),
        ])
        size = 4 * 2 ** (len(self.g_channels) - 1)
        _check([
            (self.input_size == size, f"input_size must be {size}: the generator doubles 4x4 once per g_channels "
                                      f"entry after the first, got {self.input_size}"),
            (self.input_size % 2 ** (len(self.d_channels) - 1) == 0,
             f"input_size {self.input_size} must be divisible by 2^(len(d_channels) - 1)"),
        ])


class DSGenerator(nn.Module):
    """G(z, y) -> images in [-1, 1], shape (N, in_channels, input_size, input_size)."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        c = cfg.g_channels
        self.class_emb = nn.Embedding(cfg.num_classes, cfg.emb_dim)
        self.fc = nn.Linear(cfg.z_dim + cfg.emb_dim, 16 * c[0], bias=False)
        self.fc_norm = nn.BatchNorm2d(c[0])
        stages = []
        for ci, co in zip(c[:-1], c[1:]):
            stages += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                       nn.Conv2d(ci, ci, 3, padding=1, groups=ci, bias=False), nn.Conv2d(ci, co, 1, bias=False),
                       nn.BatchNorm2d(co), nn.ReLU()]
        stages += [nn.Conv2d(c[-1], c[-1], 3, padding=1, groups=c[-1], bias=False),
                   nn.Conv2d(c[-1], cfg.in_channels, 1), nn.Tanh()]  # the output DS conv keeps its bias: no BN
        self.stages = nn.Sequential(*stages)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.fc(torch.cat([z, self.class_emb(y)], dim=1))
        h = F.relu(self.fc_norm(h.view(z.shape[0], -1, 4, 4)))  # (N, 16 c0) -> (N, c0, 4, 4)
        return self.stages(h)

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        return matmul_decay_groups(self, base_lr, weight_decay)


class DSDiscriminator(nn.Module):
    """D(x, y) -> (N,) logits; every weight is spectrally normalised (Miyato et al. 2018)."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for i, c in enumerate(cfg.d_channels):
            dw = (nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False) if i == 0
                  else nn.Conv2d(c_in, c_in, 4, stride=2, padding=1, groups=c_in, bias=False))
            layers += [spectral_norm(dw), spectral_norm(nn.Conv2d(c_in, c, 1)), nn.LeakyReLU(cfg.leak)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(c_in, 1))
        self.class_emb = spectral_norm(nn.Embedding(cfg.num_classes, c_in))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.features(x).sum(dim=(2, 3))  # (N, C, h, w) -> (N, C)
        return self.linear(h).squeeze(1) + (self.class_emb(y) * h).sum(dim=1)

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        return matmul_decay_groups(self, base_lr, weight_decay)


class DCGAN(nn.Module):
    """Holds both networks (the zoo builds one module per name): ``.generator`` and ``.discriminator``, trained
    with one optimizer each (their own ``param_groups``). ``forward(z, y)`` is the generator."""

    def __init__(self, config: DCGANConfig, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.config = config
        self.generator, self.discriminator = generator, discriminator

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.generator(z, y)

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        """Both networks' groups (for one optimizer over everything); GAN training uses the submodules' own."""
        return matmul_decay_groups(self, base_lr, weight_decay)

    def summary_fields(self) -> dict:
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        return {"generator_params": count(self.generator), "discriminator_params": count(self.discriminator)}


def build_dcgan(cfg: DCGANConfig) -> DCGAN:
    return DCGAN(cfg, DSGenerator(cfg), DSDiscriminator(cfg))


def dcgan_flops(cfg: DCGANConfig) -> int:
    """Analytic FLOPs per sample of one generator forward plus one discriminator forward (a sample made and
    judged; multiply-add = 2): convs, the Linears and the projection. Norms and activations are left out."""
    g, side = cfg.g_channels, 4
    macs = (cfg.z_dim + cfg.emb_dim) * 16 * g[0]
    for ci, co in zip(g[:-1], g[1:]):
        side *= 2
        macs += (9 * ci + ci * co) * side**2
    macs += (9 * g[-1] + g[-1] * cfg.in_channels) * side**2
    side, c_in = cfg.input_size, cfg.in_channels
    for i, c in enumerate(cfg.d_channels):
        side = side if i == 0 else side // 2
        macs += ((9 if i == 0 else 16) * c_in + c_in * c) * side**2
        c_in = c
    macs += 2 * c_in  # linear and projection
    return 2 * macs


register_family(Family(GAN_FAMILY, DCGANConfig, build_dcgan, dcgan_flops))


@register("dcgan-default", GAN_FAMILY, recorded_params=799_775)
def dcgan_default() -> DCGANConfig:
    """The paper's GAN arm (sec. 2.1), our design under the 1M budget (generator and discriminator together)."""
    return DCGANConfig()


@register("dcgan-tiny", GAN_FAMILY, recorded_params=26_575)
def dcgan_tiny() -> DCGANConfig:
    """A narrow dcgan-default for CPU smoke runs (ours)."""
    return DCGANConfig(z_dim=16, emb_dim=16, num_classes=100, g_channels=(32, 32, 16, 8), d_channels=(8, 16, 32, 32))
