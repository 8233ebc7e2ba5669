"""The v-diffusion U-Net generator of "Modern Methods, Classical Constraints" (docs/papers.md, spec 1.4; family
``vdiff_unet``): v_hat = net(x_noised, log_snr, y). The conditioning e = sinusoid(log_snr) + class embedding is
added at two points (32x32 after the input conv, 8x8 before the bottleneck), each followed by a regular 3x3 conv;
apart from those and the input/output convs, every conv is depthwise-separable (paper sec. 2.3). Names and counts:
``zoo/classical.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.classical import SINUSOID_BASE, _attention, _attention_macs, _check, _positive_ints, matmul_decay_groups
from zoo.layers import Dropout
from zoo.registry import Family, register, register_family

VDIFF_FAMILY = "vdiff_unet"


@dataclass(frozen=True)
class VDiffUNetConfig:
    """The spec 1.4 generator; defaults are its 976,339-parameter design. ``channels`` = (c0, c1, c2): widths at
    32x32, 16x16 and 8x8 (the bottleneck width c2 sets the budget: the 8x8 injection conv costs 9 c2^2).
    The class embedding has ``num_classes`` + 1 rows; row ``num_classes`` is the null class of classifier-free
    guidance. GroupNorm uses ``groups`` groups everywhere; ``dropout`` is inside every residual block."""

    channels: tuple[int, ...] = (64, 128, 168)
    emb_dim: int = 128
    num_classes: int = 100
    heads: int = 4
    dropout: float = 0.1
    groups: int = 8
    in_channels: int = 3
    input_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.channels, list):
            object.__setattr__(self, "channels", tuple(self.channels))
        _check([
            (_positive_ints(self.channels) and len(self.channels) == 3,
             f"channels must be 3 positive widths (32x32, 16x16, 8x8 levels), got {self.channels!r}"),
            (self.emb_dim >= 2 and self.emb_dim % 2 == 0,
             f"emb_dim must be even and >= 2 (sin and cos halves), got {self.emb_dim}"),
            (self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}"),
            (self.heads >= 1, f"heads must be >= 1, got {self.heads}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.groups >= 1, f"groups must be >= 1, got {self.groups}"),
            (self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}"),
            (self.input_size >= 4 and self.input_size % 4 == 0,
             f"input_size must be a positive multiple of 4 (two 2x poolings), got {self.input_size}"),
        ])
        _check([
            (all(c % self.groups == 0 for c in self.channels),
             f"groups={self.groups} must divide every width in channels {self.channels}"),
            (self.channels[1] % self.heads == 0 and self.channels[2] % self.heads == 0,
             f"heads={self.heads} must divide the attention widths {self.channels[1:]}"),
        ])


def sinusoid(x: Tensor, dim: int) -> Tensor:
    """[sin(x w_k), cos(x w_k)], w_k = 10000^(-k / (dim/2)), k < dim/2; no scaling of x (spec 1.4: log-SNR is in
    [-15, 15]). (N,) -> (N, dim)."""
    half = dim // 2
    omega = SINUSOID_BASE ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    phase = x.float()[:, None] * omega[None]  # (N, 1) * (1, half)
    return torch.cat([phase.sin(), phase.cos()], dim=1)


class DSConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, both with bias: c_in (10 + c_out) + c_out parameters (spec 1.4)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in), nn.Conv2d(c_in, c_out, 1))


class DSRes(nn.Module):
    """GN -> SiLU -> DSConv -> GN -> SiLU -> Dropout -> DSConv, plus a bias-free 1x1 skip if the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float):
        super().__init__()
        self.main = nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(), DSConv(c_in, c_out),
                                  nn.GroupNorm(groups, c_out), nn.SiLU(), Dropout(dropout), DSConv(c_out, c_out))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.skip(x)


class Inject(nn.Module):
    """h + Conv3x3(SiLU(GN(h + Linear(e)))): the conditioning is added, then a *regular* conv mixes it into every
    channel (paper sec. 2.3: depthwise-separable convs here left wave-like artefacts)."""

    def __init__(self, emb_dim: int, channels: int, groups: int):
        super().__init__()
        self.proj = nn.Linear(emb_dim, channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        u = h + self.proj(e)[:, :, None, None]  # (N, C) -> (N, C, 1, 1), broadcast over H, W
        return h + self.conv(F.silu(self.norm(u)))


class Attention2d(nn.Module):
    """Crowson-style residual self-attention: GN, 1x1 qkv conv, heads, 1x1 out conv (4 c^2 + 6 c parameters)."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)  # (N, 3C, H, W) -> (N, H W, 3C)
        y = _attention(qkv, self.heads).transpose(1, 2).reshape(n, c, h, w)  # (N, H W, C) -> (N, C, H, W)
        return x + self.out(y)


class VDiffUNet(nn.Module):
    """v_hat(x, log_snr, y): the spec 1.4 U-Net. Stages (widths c0, c1, c2):

    32: conv_in -> inject1 -> enc1 (DSRes) = skip1; 16: pool -> enc2 (DSRes, DSRes, Attn) = skip2;
    8: pool -> enc3 (DSRes) -> inject2 = skip3 -> mid (Attn, DSRes) -> dec3 (DSRes on [h, skip3]) -> up;
    16: dec2 (DSRes, DSRes on [h, skip2]) -> up; 32: dec1 (DSRes on [h, skip1]) -> out (GN, SiLU, conv).
    """

    def __init__(self, config: VDiffUNetConfig, conv_in: nn.Module, injections: Sequence[nn.Module],
                 encoder: Sequence[nn.Module], mid: nn.Module, decoder: Sequence[nn.Module], out: nn.Module):
        super().__init__()
        self.config = config
        self.class_emb = nn.Embedding(config.num_classes + 1, config.emb_dim)
        self.conv_in, self.mid, self.out = conv_in, mid, out
        self.inject1, self.inject2 = injections
        self.enc1, self.enc2, self.enc3 = encoder
        self.dec3, self.dec2, self.dec1 = decoder

    def condition(self, log_snr: Tensor, y: Tensor | None) -> Tensor:
        """e = sinusoid(log_snr) + class_emb(y); y None means the null class for every sample."""
        if y is None:
            y = torch.full(log_snr.shape, self.config.num_classes, dtype=torch.long, device=log_snr.device)
        return sinusoid(log_snr, self.config.emb_dim) + self.class_emb(y)

    def forward(self, x: Tensor, log_snr: Tensor, y: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        log_snr = torch.as_tensor(log_snr, device=x.device)
        log_snr = log_snr.expand(n) if log_snr.dim() == 0 else log_snr
        if log_snr.shape != (n,) or (y is not None and y.shape != (n,)):
            raise ValueError(f"log_snr and y must have shape ({n},), got {tuple(log_snr.shape)} and "
                             f"{None if y is None else tuple(y.shape)}")
        e = self.condition(log_snr, y).to(x.dtype)
        skip1 = self.enc1(self.inject1(self.conv_in(x), e))
        skip2 = self.enc2(F.avg_pool2d(skip1, 2))
        skip3 = self.inject2(self.enc3(F.avg_pool2d(skip2, 2)), e)
        h = self.mid(skip3)
        h = F.interpolate(self.dec3(torch.cat([h, skip3], dim=1)), scale_factor=2.0, mode="nearest")
        h = F.interpolate(self.dec2(torch.cat([h, skip2], dim=1)), scale_factor=2.0, mode="nearest")
        return self.out(self.dec1(torch.cat([h, skip1], dim=1)))

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        """Decay conv and Linear weights only (not GroupNorm, biases or the class embedding)."""
        return matmul_decay_groups(self, base_lr, weight_decay)

    def summary_fields(self) -> dict:
        return {"channels": "-".join(map(str, self.config.channels))}


def build_vdiff(cfg: VDiffUNetConfig) -> VDiffUNet:
    """Wire the spec 1.4 stage table (the family's builder)."""
    c0, c1, c2 = cfg.channels
    g, p = cfg.groups, cfg.dropout

    def res(ci: int, co: int) -> DSRes:
        return DSRes(ci, co, g, p)

    conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
    injections = [Inject(cfg.emb_dim, c0, g), Inject(cfg.emb_dim, c2, g)]
    encoder = [res(c0, c0), nn.Sequential(res(c0, c1), res(c1, c1), Attention2d(c1, cfg.heads, g)), res(c1, c2)]
    mid = nn.Sequential(Attention2d(c2, cfg.heads, g), res(c2, c2))
    decoder = [res(2 * c2, c1), nn.Sequential(res(2 * c1, c1), res(c1, c0)), res(2 * c0, c0)]
    out = nn.Sequential(nn.GroupNorm(g, c0), nn.SiLU(), nn.Conv2d(c0, cfg.in_channels, 3, padding=1))
    return VDiffUNet(cfg, conv_in, injections, encoder, mid, decoder, out)


def _ds_res_macs(ci: int, co: int, pixels: int) -> int:
    return (9 * ci + ci * co + 9 * co + co * co + (ci * co if ci != co else 0)) * pixels


def vdiff_flops(cfg: VDiffUNetConfig) -> int:
    """Analytic forward FLOPs per sample (multiply-add = 2): every conv, the two injection Linears and attention
    (1x1 projections, QK^T and AV). Norms, activations, pooling, upsampling and adds are left out."""
    c0, c1, c2 = cfg.channels
    p0, e = cfg.input_size**2, cfg.emb_dim
    p1, p2 = p0 // 4, p0 // 16
    macs = 9 * cfg.in_channels * c0 * p0 + 9 * c0 * cfg.in_channels * p0  # conv_in, output conv
    macs += e * c0 + 9 * c0 * c0 * p0 + e * c2 + 9 * c2 * c2 * p2  # the two injections
    macs += _ds_res_macs(c0, c0, p0) + _ds_res_macs(2 * c0, c0, p0)  # enc1, dec1
    macs += _ds_res_macs(c0, c1, p1) + _ds_res_macs(c1, c1, p1)  # enc2
    macs += _ds_res_macs(2 * c1, c1, p1) + _ds_res_macs(c1, c0, p1)  # dec2
    macs += _ds_res_macs(c1, c2, p2) + _ds_res_macs(c2, c2, p2) + _ds_res_macs(2 * c2, c1, p2)  # enc3, mid, dec3
    macs += 4 * c1 * c1 * p1 + _attention_macs(p1, c1) + 4 * c2 * c2 * p2 + _attention_macs(p2, c2)
    return 2 * macs


register_family(Family(VDIFF_FAMILY, VDiffUNetConfig, build_vdiff, vdiff_flops))


@register("vdiff-default", VDIFF_FAMILY, recorded_params=976_339)
def vdiff_default() -> VDiffUNetConfig:
    """The generator (spec 1.4 stage table; paper sec. 2.2, whose own model has 982,371): channels 64-128-168."""
    return VDiffUNetConfig()


@register("vdiff-c160", VDIFF_FAMILY, recorded_params=926_595)
def vdiff_c160() -> VDiffUNetConfig:
    """Bottleneck width 160 (spec 1.4: "c3 = 160 gives 926,595")."""
    return VDiffUNetConfig(channels=(64, 128, 160))


@register("vdiff-tiny", VDIFF_FAMILY, recorded_params=54_675)
def vdiff_tiny() -> VDiffUNetConfig:
    """The spec 1.4 layout at channels 16-32-32 and emb_dim 32, for CPU smoke runs (count ours)."""
    return VDiffUNetConfig(channels=(16, 32, 32), emb_dim=32)
