"""Class-conditional DDPM U-Net of dome272/Diffusion-Models-pytorch (``UNet_conditional``, pinned ``be35220``): the
DDPM baseline of Peterson, Himel & Patel, "Optimizing Diffusion Models for MNIST" (UMass CS682;
report sec. 3.1.2), with the report's grouped convolutions (sec. 4.5.5, Table 7).

eps_hat(x, t, y) = U-Net(x, pos_encoding(t) + label_emb(y)): DoubleConv blocks (3x3 conv, GroupNorm(1), GELU), three
Down and three Up levels that add SiLU -> Linear of the embedding, self-attention after each of them and a three
DoubleConv bottleneck (spec 2.2). Module names follow upstream (inc, down1, sa1, ..., bot1..bot3, up1, ..., outc,
label_emb), so its checkpoints load and the report's pruning sets name modules directly.
Written from the implementation notes 2.1-2.3 in docs/papers.md (cited as "spec 2.2" etc.); no upstream code is
copied.

MNIST: 28x28 cannot pass three 2x poolings and come back to the skips, so the model runs at ``input_size`` 32; the
data pipeline pads 28 -> 32 (2 px per side, background value) or resizes (spec 2.2 "MNIST adaptation"), and
normalises to [-1, 1]. Parameters do not depend on the size.

Names: ``ddpm-unet-mnist`` and its grouped variants ``ddpm-unet-mnist-g2``, ``-g4``, ``-gmax``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.registry import Family, decay_param_groups, register, register_family
from zoo.score_net import GROUPS_MAX, check_groups, resolve_groups

FAMILY = "ddpm_unet"
POS_ENCODING_BASE = 10_000  # Vaswani et al. 2017 frequency ladder, as upstream's pos_encoding


@dataclass(frozen=True)
class DDPMUNetConfig:
    """One U-Net. Defaults are upstream's ``UNet_conditional(c_in=1, c_out=1, num_classes=10)`` (23,334,017
    parameters, spec 2.2) at 32x32: widths 64-128-256-512, 256-dim time embedding, 4 attention heads.

    ``channels`` = (c0, c1, c2, c3): inc -> c0, down1 -> c1, down2 -> c2, down3 -> c2, bottleneck c3, up1 -> c1,
    up2 -> c0, up3 -> c0. ``num_classes`` = 0 is the unconditional ``UNet`` (no label embedding). ``groups`` applies
    to every 3x3 conv (all DoubleConv convs; not the 1x1 outc), resolved per layer by
    :func:`zoo.score_net.resolve_groups`: only inc's first conv (c_in = 1) stays ungrouped under 2 and 4.
    """

    in_channels: int = 1
    out_channels: int = 1
    input_size: int = 32
    num_classes: int = 10
    time_dim: int = 256
    channels: tuple[int, ...] = (64, 128, 256, 512)
    heads: int = 4
    groups: int | str = 1

    def __post_init__(self) -> None:
        if isinstance(self.channels, list):
            object.__setattr__(self, "channels", tuple(self.channels))  # keep the config hashable
        checks = [
            (self.in_channels >= 1 and self.out_channels >= 1,
             f"in_channels and out_channels must be >= 1, got {self.in_channels} and {self.out_channels}"),
            (self.input_size >= 8 and self.input_size % 8 == 0,
             f"input_size must be a positive multiple of 8 (three 2x poolings), got {self.input_size}; "
             f"pad or resize MNIST to 32"),
            (self.num_classes >= 0, f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}"),
            (self.time_dim >= 2 and self.time_dim % 2 == 0,
             f"time_dim must be even and >= 2 (sin and cos halves), got {self.time_dim}"),
            (isinstance(self.channels, tuple) and len(self.channels) == 4
             and all(isinstance(c, int) and c >= 1 for c in self.channels),
             f"channels must be a tuple of 4 positive widths, got {self.channels!r}"),
            (self.heads >= 1, f"heads must be >= 1, got {self.heads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if any(c % self.heads for c in self.channels[:3]):
            raise ValueError(f"heads={self.heads} must divide the attention widths {self.channels[:3]}")
        check_groups(self.groups, ((name, ci, co, image) for name, ci, co, _, image in self.convs()))

    def attention_sizes(self) -> list[int]:
        """Spatial sides of sa1..sa6 (upstream hard-codes them): 16, 8, 4, 8, 16, 32 at input_size 32."""
        n = self.input_size
        return [n // 2, n // 4, n // 8, n // 4, n // 2, n]

    def convs(self) -> list[tuple[str, int, int, int, bool]]:
        """Every 3x3 conv in module order as (name, c_in, c_out, spatial side, image_facing)."""
        c0, c1, c2, c3 = self.channels
        n = self.input_size

        def double(name: str, ci: int, co: int, side: int, mid: int | None = None, image: bool = False):
            mid = mid or co
            return [(f"{name}.conv_a", ci, mid, side, image), (f"{name}.conv_b", mid, co, side, False)]

        def down(name: str, ci: int, co: int, side: int):  # residual DoubleConv(ci, ci), then DoubleConv(ci, co)
            return double(f"{name}[0]", ci, ci, side) + double(f"{name}[1]", ci, co, side)

        def up(name: str, ci: int, co: int, side: int):  # residual DoubleConv(ci, ci), then DoubleConv(ci, co, ci/2)
            return double(f"{name}[0]", ci, ci, side) + double(f"{name}[1]", ci, co, side, mid=ci // 2)

        return (double("inc", self.in_channels, c0, n, image=True)
                + down("down1", c0, c1, n // 2) + down("down2", c1, c2, n // 4) + down("down3", c2, c2, n // 8)
                + double("bot1", c2, c3, n // 8) + double("bot2", c3, c3, n // 8) + double("bot3", c3, c2, n // 8)
                + up("up1", 2 * c2, c1, n // 4) + up("up2", 2 * c1, c0, n // 2) + up("up3", 2 * c0, c0, n))


# ---------------------------------------------------------------------------------------------------- components

ConvFactory = Callable[[int, int], nn.Module]


def conv_factory(groups: int | str) -> ConvFactory:
    """Bias-free 3x3 same-padding convs with the report's grouping; the ablation point of :func:`build_model`."""

    def make(c_in: int, c_out: int) -> nn.Module:
        g = resolve_groups(groups, c_in, c_out)
        return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, groups=g)

    return make


def pos_encoding(t: Tensor, dim: int) -> Tensor:
    """[sin(t f_k), cos(t f_k)] of the integer timestep, f_k = 10000^(-2k / dim) (upstream ``pos_encoding``)."""
    inv_freq = POS_ENCODING_BASE ** (-torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) / dim)
    phase = t.float()[:, None] * inv_freq[None, :]  # (N, 1) * (1, dim/2)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)


class DoubleConv(nn.Module):
    """conv -> GroupNorm(1) -> GELU -> conv -> GroupNorm(1); residual blocks return gelu(x + f(x))."""

    def __init__(self, c_in: int, c_out: int, conv: ConvFactory, mid: int | None = None, residual: bool = False):
        super().__init__()
        mid = mid or c_out
        self.residual = residual
        self.double_conv = nn.Sequential(conv(c_in, mid), nn.GroupNorm(1, mid), nn.GELU(),
                                         conv(mid, c_out), nn.GroupNorm(1, c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x + self.double_conv(x)) if self.residual else self.double_conv(x)


class Down(nn.Module):
    """MaxPool 2 -> residual DoubleConv(ci, ci) -> DoubleConv(ci, co), plus SiLU -> Linear(emb) over space."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, conv: ConvFactory):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_in, conv, residual=True),
                                          DoubleConv(c_in, c_out, conv))
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.maxpool_conv(x) + self.emb_layer(emb)[:, :, None, None]  # (N, C) -> (N, C, 1, 1)


class Up(nn.Module):
    """Bilinear x2 (align_corners) -> cat[skip, x] -> residual DoubleConv(ci, ci) -> DoubleConv(ci, co, mid=ci/2),
    plus SiLU -> Linear(emb) over space."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, conv: ConvFactory):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Sequential(DoubleConv(c_in, c_in, conv, residual=True),
                                  DoubleConv(c_in, c_out, conv, mid=c_in // 2))
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))

    def forward(self, x: Tensor, skip: Tensor, emb: Tensor) -> Tensor:
        x = self.conv(torch.cat([skip, self.up(x)], dim=1))
        return x + self.emb_layer(emb)[:, :, None, None]  # (N, C) -> (N, C, 1, 1)


class SelfAttention(nn.Module):
    """Pre-LN multi-head self-attention over the H*W tokens, then a pre-LN GELU MLP, both residual."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.ln = nn.LayerNorm([channels])
        self.ff_self = nn.Sequential(nn.LayerNorm([channels]), nn.Linear(channels, channels), nn.GELU(),
                                     nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = x.reshape(n, c, h * w).transpose(1, 2)  # (N, C, H, W) -> (N, HW, C)
        q = self.ln(tokens)
        tokens = tokens + self.mha(q, q, q, need_weights=False)[0]
        tokens = tokens + self.ff_self(tokens)
        return tokens.transpose(1, 2).reshape(n, c, h, w)  # (N, HW, C) -> (N, C, H, W)


# --------------------------------------------------------------------------------------------------------- model


class DDPMUNet(nn.Module):
    """Noise predictor eps_hat(x, t, y). Component builder: the caller supplies inc, the three Down and Up levels, six
    attention blocks (after each level), the three bottleneck blocks, outc and the label embedding (None for an
    unconditional model); :func:`build_model` wires upstream's."""

    def __init__(self, config: DDPMUNetConfig, inc: nn.Module, downs: Sequence[nn.Module],
                 bottleneck: Sequence[nn.Module], ups: Sequence[nn.Module], attentions: Sequence[nn.Module],
                 outc: nn.Module, label_emb: nn.Module | None):
        super().__init__()
        if (len(downs), len(bottleneck), len(ups), len(attentions)) != (3, 3, 3, 6):
            raise ValueError("need 3 downs, 3 bottleneck blocks, 3 ups and 6 attention blocks")
        self.config = config
        self.inc = inc
        self.down1, self.down2, self.down3 = downs
        self.sa1, self.sa2, self.sa3, self.sa4, self.sa5, self.sa6 = attentions
        self.bot1, self.bot2, self.bot3 = bottleneck
        self.up1, self.up2, self.up3 = ups
        self.outc = outc
        if label_emb is not None:
            self.label_emb = label_emb

    def embedding(self, t: Tensor, y: Tensor | None) -> Tensor:
        """pos_encoding(t), plus label_emb(y) when labels are given (y = None is the CFG unconditional branch)."""
        emb = pos_encoding(t, self.config.time_dim)
        if y is not None:
            if not hasattr(self, "label_emb"):
                raise ValueError("labels y were given to an unconditional model (num_classes=0)")
            if y.shape != t.shape:
                raise ValueError(f"y must have shape {tuple(t.shape)}, got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)
        return emb

    def forward(self, x: Tensor, t: Tensor | int, y: Tensor | None = None) -> Tensor:
        """Predicted noise, of the input's shape; t holds integer timesteps (N,) (or one int), y class labels (N,)."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % 8 or x.shape[3] % 8:
            raise ValueError(f"input must have shape (N, {cfg.in_channels}, H, W) with H and W multiples of 8 "
                             f"(pad MNIST to {cfg.input_size}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be an int or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.embedding(t, y).to(x.dtype)
        x1 = self.inc(x)
        x2 = self.sa1(self.down1(x1, emb))
        x3 = self.sa2(self.down2(x2, emb))
        x4 = self.sa3(self.down3(x3, emb))
        x4 = self.bot3(self.bot2(self.bot1(x4)))
        h = self.sa4(self.up1(x4, x3, emb))
        h = self.sa5(self.up2(h, x2, emb))
        h = self.sa6(self.up3(h, x1, emb))
        return self.outc(h)

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        """Two AdamW groups: conv, Linear, attention-projection and label-embedding weights with ``weight_decay``,
        biases and norm affines without (nanoGPT's rule: decay tensors of dim >= 2). Upstream passes
        ``model.parameters()`` to AdamW(lr 3e-4), decaying everything by the default 0.01."""
        return decay_param_groups(self, base_lr, weight_decay)

    def summary_fields(self) -> dict:
        cfg = self.config
        return {"channels": "-".join(map(str, cfg.channels)), "groups": cfg.groups, "num_classes": cfg.num_classes}

    def compression_sets(self) -> dict[str, list[str]]:
        """Middle = the bottleneck (bot1-3 and the attention between them, sa3); extremes = the first and last
        layers (inc, up3, outc). The report pruned this model only globally; these sets follow the spec."""
        return {"middle": ["bot1", "bot2", "bot3", "sa3"], "extremes": ["inc", "up3", "outc"]}


def build_model(cfg: DDPMUNetConfig, conv: ConvFactory | None = None) -> DDPMUNet:
    """Wire upstream's U-Net (the family's builder); ``conv`` swaps the 3x3 conv factory (default: grouped per
    ``cfg.groups``)."""
    conv = conv or conv_factory(cfg.groups)
    c0, c1, c2, c3 = cfg.channels
    e = cfg.time_dim
    inc = DoubleConv(cfg.in_channels, c0, conv)
    downs = [Down(c0, c1, e, conv), Down(c1, c2, e, conv), Down(c2, c2, e, conv)]
    bottleneck = [DoubleConv(c2, c3, conv), DoubleConv(c3, c3, conv), DoubleConv(c3, c2, conv)]
    ups = [Up(2 * c2, c1, e, conv), Up(2 * c1, c0, e, conv), Up(2 * c0, c0, e, conv)]
    attentions = [SelfAttention(c, cfg.heads) for c in (c1, c2, c2, c1, c0, c0)]
    outc = nn.Conv2d(c0, cfg.out_channels, 1)
    label_emb = nn.Embedding(cfg.num_classes, e) if cfg.num_classes else None
    return DDPMUNet(cfg, inc, downs, bottleneck, ups, attentions, outc, label_emb)


def flops(cfg: DDPMUNetConfig) -> int:
    """Analytic forward FLOPs per sample at ``input_size``: 2 x multiply-adds of the 3x3 convs ((c_in / g) c_out 9
    per pixel), outc, the six time-embedding Linears (one per Down/Up) and attention (q/k/v/out
    projections 4 L C^2, QK^T and AV 2 L^2 C, MLP 2 L C^2 over L tokens). Norms, activations, pooling, upsampling,
    residual adds and the position encoding are elementwise and left out."""
    macs = sum(ci * co // resolve_groups(cfg.groups, ci, co) * 9 * side**2 for _, ci, co, side, _ in cfg.convs())
    c0, c1, c2, _ = cfg.channels
    macs += cfg.input_size**2 * c0 * cfg.out_channels  # outc
    macs += cfg.time_dim * (c1 + c2 + c2 + c1 + c0 + c0)  # emb_layer of down1..3, up1..3
    for c, side in zip((c1, c2, c2, c1, c0, c0), cfg.attention_sizes()):
        length = side * side
        macs += 6 * length * c * c + 2 * length * length * c
    return 2 * macs


register_family(Family(FAMILY, DDPMUNetConfig, build_model, flops))


# Recorded counts: spec 2.2 / 2.3 [verified] (upstream UNet_conditional with c_in = c_out = 1, 10 classes). The report
# prints 23,335,299, the 3-channel count (sec. 3.2.2).
@register("ddpm-unet-mnist", FAMILY, recorded_params=23_334_017)
def ddpm_unet_mnist() -> DDPMUNetConfig:
    """The DDPM baseline: dome272's UNet_conditional, 1 channel at 32x32, 10 classes for classifier-free guidance
    (Peterson et al., CS682 report, sec. 3.1.2 and Table 4; the report's 23,335,299 is the 3-channel count)."""
    return DDPMUNetConfig()


@register("ddpm-unet-mnist-g2", FAMILY, recorded_params=12_311_681)
def ddpm_unet_mnist_g2() -> DDPMUNetConfig:
    """DDPM U-Net with groups=2 in every 3x3 conv but inc's first (Peterson et al., CS682 report, Table 7 "2 Groups";
    with L1 pruning at 10% the report's best DDPM, Tables 8 and 9)."""
    return DDPMUNetConfig(groups=2)


@register("ddpm-unet-mnist-g4", FAMILY, recorded_params=6_800_513)
def ddpm_unet_mnist_g4() -> DDPMUNetConfig:
    """DDPM U-Net with groups=4 in every 3x3 conv but inc's first (Peterson et al., CS682 report, Table 7
    "4 Groups")."""
    return DDPMUNetConfig(groups=4)


@register("ddpm-unet-mnist-gmax", FAMILY, recorded_params=1_363_073)
def ddpm_unet_mnist_gmax() -> DDPMUNetConfig:
    """DDPM U-Net with gcd(c_in, c_out) groups per 3x3 conv (depthwise-like). Peterson et al., CS682 report, ran
    maximum groups only for NCSN (sec. 4.3.5, Table 3); this is the spec's extension to the U-Net (spec 2.3)."""
    return DDPMUNetConfig(groups=GROUPS_MAX)
