"""Time-conditional U-Net score model of Yang Song's score-SDE tutorial ("ScoreNet"): the NCSN baseline of Peterson,
Himel & Patel, "Optimizing Diffusion Models for MNIST" (UMass CS682 report sec. 3.1.1; see docs/papers.md),
with the report's grouped ("depthwise") convolutions (sec. 4.2.3 and Table 3).

s(x, t) = U-Net(x, swish(Linear(GaussianFourier(t)))) / marginal_prob_std(t) for the VE SDE dx = sigma^t dw (spec 2.1).
Module names follow the tutorial (conv1..conv4, tconv4..tconv1, dense1..dense7 with ``.dense``, gnorm1..gnorm4,
tgnorm4..tgnorm2, embed), so its checkpoints load and the report's pruning sets ("middle" = conv4/tconv4/dense4/5)
name modules directly. Written from the implementation notes 2.1-2.3 in docs/papers.md (cited as "spec 2.1" etc.);
no upstream code is copied.

Names: ``ncsn-mnist`` and its grouped variants ``ncsn-mnist-g2``, ``ncsn-mnist-g4``, ``ncsn-mnist-gmax``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from zoo.registry import Family, decay_param_groups, register, register_family

FAMILY = "score_net"
GROUPS_MAX = "max"
MIN_INPUT_SIZE = 17  # smallest side for which the three stride-2 convs still leave a 1x1 map


def resolve_groups(groups: int | str, c_in: int, c_out: int) -> int:
    """Groups of one 3x3 conv under the report's rule (spec 2.3): ``"max"`` is gcd(c_in, c_out), depthwise-like (the
    report's "min(in_channel, out_channel)", identical for its power-of-two widths); an integer that does not divide
    both channel counts leaves the layer at 1 (ScoreNet conv1/tconv1 and the UNet's inc with one image channel).
    Configs reject integers that fail at a hidden layer, so that fallback only happens at image-facing layers."""
    if groups == GROUPS_MAX:
        return math.gcd(c_in, c_out)
    return groups if c_in % groups == 0 and c_out % groups == 0 else 1


def check_groups(groups: object, convs: Iterable[tuple[str, int, int, bool]]) -> None:
    """ValueError (one sentence) unless ``groups`` is ``"max"`` or a positive integer dividing the channels of every
    hidden conv; ``convs`` yields (name, c_in, c_out, image_facing)."""
    if groups == GROUPS_MAX:
        return
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive integer (1, 2, 4, ...) or 'max', got {groups!r}")
    for name, c_in, c_out, image_facing in convs:
        if not image_facing and (c_in % groups or c_out % groups):
            raise ValueError(f"groups={groups} does not divide the channels of {name} ({c_in} -> {c_out}); "
                             f"use a common divisor of the hidden widths or 'max'")


def marginal_prob_std(t: Tensor, sigma: float) -> Tensor:
    """Std of x(t) given x(0) under dx = sigma^t dw: sqrt((sigma^(2t) - 1) / (2 ln sigma)) (Song et al. 2021, VE)."""
    log_sigma = math.log(sigma)
    return torch.sqrt(torch.expm1(2 * t * log_sigma) / (2 * log_sigma))


def diffusion_coeff(t: Tensor, sigma: float) -> Tensor:
    """g(t) = sigma^t, the diffusion coefficient of the VE SDE."""
    return torch.exp(t * math.log(sigma))


class ConvSpec(NamedTuple):
    """One 3x3 (transposed) conv of the U-Net, with the spatial sides it maps between (for FLOPs)."""

    name: str
    c_in: int
    c_out: int
    stride: int
    transposed: bool
    output_padding: int
    in_size: int
    out_size: int
    bias: bool
    image_facing: bool


@dataclass(frozen=True)
class ScoreNetConfig:
    """One ScoreNet. Defaults are the tutorial's MNIST model (spec 2.1): widths 32-64-128-256, a 256-dim Fourier time
    embedding with scale 30, one 28x28 channel (no padding), VE SDE sigma 25, ungrouped convs.

    ``groups`` applies to all eight 3x3 convs, transposed ones included (report 4.2.3: "any Conv2d or
    TransposeConv2d"), resolved per layer by :func:`resolve_groups`. Decoder output paddings are derived from the
    encoder sides so each transposed conv meets its skip: (0, 1, 1) at 28x28, the tutorial's values.
    """

    channels: tuple[int, ...] = (32, 64, 128, 256)
    embed_dim: int = 256
    fourier_scale: float = 30.0
    in_channels: int = 1
    input_size: int = 28
    sigma: float = 25.0
    groups: int | str = 1

    def __post_init__(self) -> None:
        if isinstance(self.channels, list):
            object.__setattr__(self, "channels", tuple(self.channels))  # keep the config hashable
        checks = [
            (isinstance(self.channels, tuple) and len(self.channels) == 4,
             f"channels must be a tuple of 4 widths (one per U-Net level), got {self.channels!r}"),
            (all(isinstance(c, int) and c >= 32 and c % 32 == 0 for c in self.channels),
             f"every width in channels must be a positive multiple of 32 (GroupNorm(32, c)), got {self.channels!r}"),
            (self.embed_dim >= 2 and self.embed_dim % 2 == 0,
             f"embed_dim must be even and >= 2 (sin and cos halves), got {self.embed_dim}"),
            (self.fourier_scale > 0, f"fourier_scale must be positive, got {self.fourier_scale}"),
            (self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}"),
            (self.input_size >= MIN_INPUT_SIZE, f"input_size must be >= {MIN_INPUT_SIZE}, got {self.input_size}"),
            (self.sigma > 1, f"sigma must be > 1 for the VE SDE, got {self.sigma}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_groups(self.groups, ((c.name, c.c_in, c.c_out, c.image_facing) for c in self.convs()))

    def encoder_sizes(self) -> list[int]:
        """Spatial sides after conv1..conv4 (no padding; stride 1 then 2, 2, 2): 26, 12, 5, 2 at 28."""
        sizes = [self.input_size - 2]
        for _ in range(3):
            sizes.append((sizes[-1] - 3) // 2 + 1)
        return sizes

    def convs(self) -> list[ConvSpec]:
        """The eight 3x3 convs in forward order: conv1..conv4, then tconv4, tconv3, tconv2 and the output tconv1."""
        c0, c1, c2, c3 = self.channels
        n, (s1, s2, s3, s4) = self.input_size, self.encoder_sizes()
        ci = self.in_channels
        return [
            ConvSpec("conv1", ci, c0, 1, False, 0, n, s1, False, True),
            ConvSpec("conv2", c0, c1, 2, False, 0, s1, s2, False, False),
            ConvSpec("conv3", c1, c2, 2, False, 0, s2, s3, False, False),
            ConvSpec("conv4", c2, c3, 2, False, 0, s3, s4, False, False),
            ConvSpec("tconv4", c3, c2, 2, True, s3 - (2 * s4 + 1), s4, s3, False, False),
            ConvSpec("tconv3", 2 * c2, c1, 2, True, s2 - (2 * s3 + 1), s3, s2, False, False),  # cat[h, h3]
            ConvSpec("tconv2", 2 * c1, c0, 2, True, s1 - (2 * s2 + 1), s2, s1, False, False),  # cat[h, h2]
            ConvSpec("tconv1", 2 * c0, ci, 1, True, 0, s1, n, True, True),  # cat[h, h1]; the only conv with a bias
        ]


# ---------------------------------------------------------------------------------------------------- components


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class GaussianFourierProjection(nn.Module):
    """[sin(2 pi t W), cos(2 pi t W)] with a fixed W ~ N(0, scale^2) of embed_dim / 2 entries (Tancik et al. 2020).

    W is a persistent buffer named as the tutorial's frozen parameter (``embed.0.W``): it is saved and loaded, and it
    is not counted, matching the tutorial's 1,115,297 *trainable* parameters (1,115,425 with W)."""

    def __init__(self, embed_dim: int, scale: float):
        super().__init__()
        self.register_buffer("W", torch.randn(embed_dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:  # (N,) -> (N, embed_dim)
        proj = t[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class Dense(nn.Module):
    """Linear projection of the time embedding, reshaped to broadcast over the feature map: (N, E) -> (N, C, 1, 1)."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.dense = nn.Linear(embed_dim, channels)

    def forward(self, emb: Tensor) -> Tensor:
        return self.dense(emb)[..., None, None]


ConvFactory = Callable[[ConvSpec], nn.Module]


def conv_factory(groups: int | str) -> ConvFactory:
    """3x3 convs (transposed in the decoder) with the report's grouping; the ablation point of :func:`build_model`."""

    def make(spec: ConvSpec) -> nn.Module:
        g = resolve_groups(groups, spec.c_in, spec.c_out)
        if spec.transposed:
            return nn.ConvTranspose2d(spec.c_in, spec.c_out, 3, stride=spec.stride, bias=spec.bias, groups=g,
                                      output_padding=spec.output_padding)
        return nn.Conv2d(spec.c_in, spec.c_out, 3, stride=spec.stride, bias=spec.bias, groups=g)

    return make


# --------------------------------------------------------------------------------------------------------- model

_CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "tconv4", "tconv3", "tconv2", "tconv1")
_DENSE_NAMES = tuple(f"dense{i}" for i in range(1, 8))
_NORM_NAMES = ("gnorm1", "gnorm2", "gnorm3", "gnorm4", "tgnorm4", "tgnorm3", "tgnorm2")


class ScoreNet(nn.Module):
    """s(x, t) for the VE SDE. Component builder: the caller supplies the embedding, the eight convs, seven Dense
    projections and seven norms in forward order; :func:`build_model` wires the tutorial's. Each hidden level is
    h = swish(norm(conv(h) + dense(emb))); decoder levels after the first take cat[h, skip]."""

    def __init__(self, config: ScoreNetConfig, embed: nn.Module, convs: Sequence[nn.Module],
                 denses: Sequence[nn.Module], norms: Sequence[nn.Module]):
        super().__init__()
        if (len(convs), len(denses), len(norms)) != (8, 7, 7):
            raise ValueError(f"need 8 convs, 7 denses and 7 norms, got {len(convs)}, {len(denses)}, {len(norms)}")
        self.config = config
        self.embed = embed
        for names, modules in ((_CONV_NAMES, convs), (_DENSE_NAMES, denses), (_NORM_NAMES, norms)):
            for name, module in zip(names, modules):
                self.add_module(name, module)  # the tutorial's attribute names (state-dict compatible)

    def marginal_prob_std(self, t: Tensor) -> Tensor:
        return marginal_prob_std(t, self.config.sigma)

    def diffusion_coeff(self, t: Tensor) -> Tensor:
        return diffusion_coeff(t, self.config.sigma)

    def _level(self, i: int, h: Tensor, emb: Tensor) -> Tensor:
        conv, dense, norm = (getattr(self, names[i]) for names in (_CONV_NAMES, _DENSE_NAMES, _NORM_NAMES))
        return swish(norm(conv(h) + dense(emb)))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The score of the perturbed data at time t in (0, 1], of the input's shape."""
        cfg = self.config
        n = cfg.input_size
        if x.dim() != 4 or x.shape[1:] != (cfg.in_channels, n, n):
            raise ValueError(f"input must have shape (N, {cfg.in_channels}, {n}, {n}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a float or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = swish(self.embed(t))
        h1 = self._level(0, x, emb)
        h2 = self._level(1, h1, emb)
        h3 = self._level(2, h2, emb)
        h = self._level(3, h3, emb)
        h = self._level(4, h, emb)
        h = self._level(5, torch.cat([h, h3], dim=1), emb)
        h = self._level(6, torch.cat([h, h2], dim=1), emb)
        h = self.tconv1(torch.cat([h, h1], dim=1))
        return h / self.marginal_prob_std(t)[:, None, None, None]  # (N,) -> (N, 1, 1, 1)

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        """Two groups: conv and Linear weights with ``weight_decay``, biases and GroupNorm affines without
        (nanoGPT's rule: decay tensors of dim >= 2). The tutorial trains with Adam at lr 1e-4 and no decay."""
        return decay_param_groups(self, base_lr, weight_decay)

    def summary_fields(self) -> dict:
        cfg = self.config
        return {"channels": "-".join(map(str, cfg.channels)), "groups": cfg.groups, "sigma": cfg.sigma}

    def compression_sets(self) -> dict[str, list[str]]:
        """The report's "middle" and "end" modules (sec. 4.2.2): its module list 7-16 (conv3 .. tconv3) hold the
        942,592 middle elements it states, the rest the 105,505 end elements; ``extremes`` is the end set."""
        return {"middle": ["conv3", "dense3", "conv4", "dense4", "tconv4", "dense5", "tconv3"],
                "extremes": ["conv1", "dense1", "conv2", "dense2", "dense6", "tconv2", "dense7", "tconv1"]}


def build_model(cfg: ScoreNetConfig, conv: ConvFactory | None = None) -> ScoreNet:
    """Wire the tutorial's ScoreNet (the family's builder); ``conv`` swaps the conv factory (default: grouped per
    ``cfg.groups``)."""
    conv = conv or conv_factory(cfg.groups)
    specs = cfg.convs()
    e = cfg.embed_dim
    embed = nn.Sequential(GaussianFourierProjection(e, cfg.fourier_scale), nn.Linear(e, e))
    hidden = specs[:7]  # every conv but the output tconv1 is followed by Dense + GroupNorm + swish
    denses = [Dense(e, s.c_out) for s in hidden]
    norms = [nn.GroupNorm(4 if i == 0 else 32, s.c_out) for i, s in enumerate(hidden)]  # tutorial: gnorm1 has 4
    return ScoreNet(cfg, embed, [conv(s) for s in specs], denses, norms)


def flops(cfg: ScoreNetConfig) -> int:
    """Analytic forward FLOPs per sample: 2 x multiply-adds of the convs and Linears. A conv costs
    (c_in / g) c_out 9 per output pixel; a transposed conv c_in (c_out / g) 9 per input pixel. Fourier features,
    GroupNorm, swish, the bias and time-embedding adds and the final division are elementwise and left out."""
    macs = 0
    for s in cfg.convs():
        g = resolve_groups(cfg.groups, s.c_in, s.c_out)
        pixels = s.in_size**2 if s.transposed else s.out_size**2
        macs += s.c_in * s.c_out // g * 9 * pixels
    e = cfg.embed_dim
    macs += e * e + sum(e * s.c_out for s in cfg.convs()[:7])  # embed Linear; dense1..dense7
    return 2 * macs


register_family(Family(FAMILY, ScoreNetConfig, build_model, flops))


# Recorded counts: spec 2.1 / 2.3 [verified]; the report prints 1,115,297 for the baseline (sec. 3.2.1) and 682k for
# two groups (sec. 4.3.6).
@register("ncsn-mnist", FAMILY, recorded_params=1_115_297)
def ncsn_mnist() -> ScoreNetConfig:
    """The NCSN baseline: Song's tutorial ScoreNet on 28x28 MNIST, VE SDE sigma 25 (Peterson et al., CS682 report,
    sec. 3.1.1 and 3.2.1: 1,115,297 parameters)."""
    return ScoreNetConfig()


@register("ncsn-mnist-g2", FAMILY, recorded_params=682_145)
def ncsn_mnist_g2() -> ScoreNetConfig:
    """NCSN with groups=2 in every 3x3 (transposed) conv but the image-facing conv1/tconv1 (Peterson et al., CS682
    report, Table 3 "2 Groups"; the report's best NCSN, ~682k parameters, sec. 4.3.6)."""
    return ScoreNetConfig(groups=2)


@register("ncsn-mnist-g4", FAMILY, recorded_params=465_569)
def ncsn_mnist_g4() -> ScoreNetConfig:
    """NCSN with groups=4 in every 3x3 (transposed) conv but conv1/tconv1 (Peterson et al., CS682 report, Table 3
    "4 Groups")."""
    return ScoreNetConfig(groups=4)


@register("ncsn-mnist-gmax", FAMILY, recorded_params=258_785)
def ncsn_mnist_gmax() -> ScoreNetConfig:
    """NCSN with the largest valid group count per conv, gcd(c_in, c_out) (Peterson et al., CS682 report, Table 3
    "Maximum Groups"; sec. 4.2.3 "min(in_channel, out_channel)")."""
    return ScoreNetConfig(groups=GROUPS_MAX)
