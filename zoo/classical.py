"""The models of "Modern Methods, Classical Constraints" (anonymous coursework paper; see docs/papers.md): a
CIFAR-100 classifier under 100,000 parameters and class-conditional generators under 1,000,000, both on CIFAR-100.

The paper's code is not public (spec 1.0), so these are the spec's concrete designs that land under each budget
(implementation notes 1.0-1.4 in docs/papers.md, cited as "spec 1.1" etc.). Written from that description; no
upstream code is copied.
Three families, one per file (this one, ``zoo/vdiff_unet.py`` and ``zoo/dcgan.py``, which import the helpers
below); the names and counts of all three are listed here:

- ``classical_disc``: the discriminator of spec 1.1. Depthwise-separable conv stem (BN, activation, 2x2 max pools),
  64 tokens of width 64 plus a positional encoding, transformer encoder blocks whose weights are tied, RMSNorm and
  mean-pool, then two Linears. Every ablation axis of the paper (sec. 1.2.2) is a config key: ``style``,
  ``activation``, ``layers``, ``shared``, ``pos_enc``, ``reduction``.
- ``vdiff_unet``: the v-diffusion U-Net generator of spec 1.4, v_hat = net(x_noised, log_snr, y). The conditioning
  e = sinusoid(log_snr) + class embedding is added at two points (32x32 after the input conv, 8x8 before the
  bottleneck), each followed by a regular 3x3 conv; apart from those and the input/output convs, every conv is
  depthwise-separable (paper sec. 2.3).
- ``dcgan_ds``: the paper's conditional GAN (sec. 2.1: "depthwise separable convolutions with a classic DCGAN
  design ... spectral normalisation"), for the GAN-vs-diffusion row. Our design: the paper gives no numbers.

Names (parameter counts are the spec's [verified] numbers unless marked "ours"):

=========================  =========  ==========================================================================
name                       params     model
=========================  =========  ==========================================================================
disc-default               98,495     LLaMA blocks, SiLU/SwiGLU, 4 tied layers, learned PE, max-pool (spec 1.1)
disc-fourier               94,399     fixed 2-D sinusoidal positions instead of the learned table
disc-gpt2                  99,391     GPT-2 blocks (LayerNorm, biases, GELU MLP 64-384-64); the stem is GELU too
disc-gpt2-silu             99,391     GPT-2 blocks with SiLU: only the style differs from disc-default
disc-gpt2-mlp256           82,879     disc-gpt2 with a 256-wide MLP (not parameter-matched)
disc-gelu, disc-relu       98,495     activation in the stem and the gated FFN: GeGLU / ReGLU (SiLU is default)
disc-l0 ... disc-l6        32,831 /   0 ... 6 tied layers (98,495 for every L >= 1; disc-l4 is disc-default)
                           98,495
disc-unshared              295,487    4 untied blocks: over the 100k budget, a diagnostic arm
disc-unshared-small        75,647     budget-matched untied: d 32, FFN 96, stem 32-32-32, 4 untied blocks
disc-conv-reduce           100,031    depthwise 4x4 stride-2 conv instead of each max pool (just over budget)
disc-conv-reduce-h120      98,711     the same with head width 120 (under budget)
disc-h120                  97,175     max-pool twin of disc-conv-reduce-h120 (head width 120)
disc-ffn260, disc-h136     99,263 /   closer to the paper's 99,546: FFN 260, or head width 136 (spec 1.1 notes)
                           99,815
vdiff-default              976,339    channels 64-128-168 (spec 1.4)
vdiff-c160                 926,595    bottleneck width 160
vdiff-tiny                 54,675     channels 16-32-32, emb 32: for CPU tests (ours)
dcgan-default              799,775    generator 567,683 + discriminator 232,092 (ours)
dcgan-tiny                 26,575     for CPU tests (ours)
=========================  =========  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.registry import Family, ZooError, register, register_family

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}
GATES: dict[str, Callable[[Tensor], Tensor]] = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}  # SwiGLU/GeGLU/ReGLU
STYLES = ("llama", "gpt2")
POS_ENCS = ("learned", "fourier")
REDUCTIONS = ("maxpool", "conv")
SINUSOID_BASE = 10_000  # Vaswani et al. 2017 frequency ladder (spec 1.4: 10000^(-k/64) at emb_dim 128)
NORM_EPS = 1e-6


def _check(checks: Sequence[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ZooError(message)


def _positive_ints(value: object) -> bool:
    return isinstance(value, tuple) and len(value) >= 1 and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in value)


def _one_of(key: str, value: object, options: Sequence[str], meaning: str = "") -> tuple[bool, str]:
    return value in options, f"{key} must be one of {', '.join(map(repr, options))}{meaning}, got {value!r}"


def matmul_decay_groups(model: nn.Module, base_lr: float, weight_decay: float) -> list[dict]:
    """Two AdamW groups: the weights of Conv2d and Linear layers (spectrally normalised ones included) decay; norm
    affines, biases, embeddings and positional tables do not. Shared (tied) parameters appear once."""
    decayed: set[int] = set()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            for name, p in m.named_parameters():
                if name in ("weight", "parametrizations.weight.original"):
                    decayed.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) in decayed], "lr": base_lr, "weight_decay": weight_decay,
               "name": "decay"},
              {"params": [p for p in params if id(p) not in decayed], "lr": base_lr, "weight_decay": 0.0,
               "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def _attention(qkv: Tensor, heads: int) -> Tensor:
    """Multi-head attention of a fused (N, L, 3 C) projection laid out (3, heads, head_dim); returns (N, L, C)."""
    n, length, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.view(n, length, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # -> (3, N, heads, L, head_dim)
    y = F.scaled_dot_product_attention(q, k, v)
    return y.transpose(1, 2).reshape(n, length, c)  # (N, heads, L, head_dim) -> (N, L, C)


def _attention_macs(tokens: int, width: int) -> int:
    """Multiply-adds of QK^T and AV over all heads (projections not included)."""
    return 2 * tokens * tokens * width


# ============================================================================================ classical_disc

DISC_FAMILY = "classical_disc"


@dataclass(frozen=True)
class ClassicalDiscConfig:
    """The spec 1.1 discriminator; defaults are its 98,495-parameter design. Ablation axes (paper sec. 1.2.2):

    - ``style``: "llama" (RMSNorm, gated FFN of width ``ffn``, no biases) or "gpt2" (LayerNorm with bias, qkv/out with
      bias, plain MLP of width ``mlp_width``: 384 matches the SwiGLU's parameters). No dropout in either.
    - ``activation``: "silu" | "gelu" | "relu", applied in the conv stem and as the FFN gate (SwiGLU / GeGLU /
      ReGLU) or the GPT-2 MLP activation. The classifier head keeps SiLU (not an ablation site in spec 1.1).
    - ``layers`` (paper: 0-6) block applications; ``shared``: one tied block applied ``layers`` times, or
      ``layers`` separate blocks.
    - ``pos_enc``: "learned" table (tokens x dim) or "fourier": fixed 2-D sinusoids, dim/4 frequencies each for
      sin and cos of x and of y, no parameters.
    - ``reduction``: "maxpool" (2x2) or "conv" (depthwise 4x4 stride 2 pad 1, 16 c parameters) after every stem
      conv but the last.
    """

    style: str = "llama"
    activation: str = "silu"
    layers: int = 4
    shared: bool = True
    pos_enc: str = "learned"
    reduction: str = "maxpool"
    stem: tuple[int, ...] = (32, 64, 64)
    dim: int = 64
    heads: int = 4
    ffn: int = 256  # LLaMA's rule at d = 64: int(2 * 4d / 3) = 170 rounded up to a multiple of 256
    mlp_width: int = 384
    head_width: int = 128
    num_classes: int = 100
    in_channels: int = 3
    input_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.stem, list):
            object.__setattr__(self, "stem", tuple(self.stem))  # keep the config hashable
        _check([
            _one_of("style", self.style, STYLES),
            _one_of("activation", self.activation, tuple(ACTIVATIONS)),
            _one_of("pos_enc", self.pos_enc, POS_ENCS, " (fixed 2-D sinusoids)"),
            _one_of("reduction", self.reduction, REDUCTIONS, " (depthwise 4x4 stride-2 conv)"),
            (isinstance(self.shared, bool), f"shared must be true or false, got {self.shared!r}"),
            (self.layers >= 0, f"layers must be >= 0 (the paper tries 0-6), got {self.layers}"),
            (_positive_ints(self.stem), f"stem must be a non-empty tuple of positive widths, got {self.stem!r}"),
            (self.dim >= 1 and self.heads >= 1, f"dim and heads must be >= 1, got {self.dim} and {self.heads}"),
        ])
        _check([
            (self.stem[-1] == self.dim, f"the last stem width {self.stem[-1]} must equal dim {self.dim} (the stem's "
                                        f"output channels are the token width)"),
            (self.dim % self.heads == 0, f"heads={self.heads} must divide dim={self.dim}"),
            (self.pos_enc != "fourier" or self.dim % 4 == 0,
             f"dim must be a multiple of 4 for the fourier pos_enc (sin/cos of x and y), got {self.dim}"),
            (min(self.ffn, self.mlp_width, self.head_width, self.num_classes, self.in_channels) >= 1,
             "ffn, mlp_width, head_width, num_classes and in_channels must all be >= 1"),
            (self.input_size % self.stride == 0 and self.input_size >= self.stride,
             f"input_size must be a positive multiple of {self.stride} ({len(self.stem) - 1} 2x reductions), "
             f"got {self.input_size}"),
        ])

    @property
    def stride(self) -> int:
        return 2 ** (len(self.stem) - 1)

    @property
    def side(self) -> int:
        """Side of the token grid: 8 at the defaults (32 / 4)."""
        return self.input_size // self.stride

    @property
    def tokens(self) -> int:
        return self.side**2

    @property
    def unique_blocks(self) -> int:
        return min(self.layers, 1) if self.shared else self.layers


class DSConvBN(nn.Sequential):
    """Depthwise 3x3 -> pointwise 1x1 (both without bias: BN follows) -> BatchNorm -> activation (spec 1.1)."""

    def __init__(self, c_in: int, c_out: int, act: type[nn.Module]):
        super().__init__(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), act())


def reduction_layer(kind: str, channels: int) -> nn.Module:
    if kind == "maxpool":
        return nn.MaxPool2d(2)
    return nn.Conv2d(channels, channels, 4, stride=2, padding=1, groups=channels, bias=False)  # spec: depthwise


def fourier_positions(side: int, dim: int, device=None, dtype=None) -> Tensor:
    """Fixed 2-D sinusoidal positions (side^2, dim), row-major tokens: [sin(x w), cos(x w), sin(y w), cos(y w)] with
    w_k = 10000^(-k / (dim/4)), k < dim/4, x the column and y the row index."""
    quarter = dim // 4
    omega = SINUSOID_BASE ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    coords = torch.arange(side, device=device, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    px = x.reshape(-1, 1) * omega  # (side^2, 1) * (quarter,)
    py = y.reshape(-1, 1) * omega
    return torch.cat([px.sin(), px.cos(), py.sin(), py.cos()], dim=1).to(dtype)


class LearnedPositions(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(tokens, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:  # (N, T, D)
        return x + self.table


class FourierPositions(nn.Module):
    """Computed on the fly: no parameters and nothing in the state dict."""

    def __init__(self, side: int, dim: int):
        super().__init__()
        self.side, self.dim = side, dim

    def forward(self, x: Tensor) -> Tensor:  # (N, T, D)
        return x + fourier_positions(self.side, self.dim, x.device, x.dtype)


class SelfAttention(nn.Module):
    """Fused qkv and out projections around ``F.scaled_dot_product_attention``; no dropout."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(_attention(self.qkv(x), self.heads))


class GatedFFN(nn.Module):
    """w2(gate(w1 x) * w3 x), no biases: SwiGLU / GeGLU / ReGLU (Shazeer 2020) as in LLaMA."""

    def __init__(self, dim: int, hidden: int, gate: Callable[[Tensor], Tensor]):
        super().__init__()
        self.gate = gate
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.gate(self.w1(x)) * self.w3(x))


class EncoderBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm1 x), then x + ffn(norm2 x). Component builder: parts are arguments."""

    def __init__(self, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, ffn: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.ffn = norm1, attn, norm2, ffn

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ClassicalDisc(nn.Module):
    """logits = head(mean_tokens(norm(blocks(pos_enc(tokens(stem(x))))))); x (N, C, H, W) normalised by the caller.

    ``blocks`` holds the unique blocks; :meth:`block_schedule` says which one each of the ``layers`` applications
    uses (all block 0 when ``shared``)."""

    def __init__(self, config: ClassicalDiscConfig, stem: nn.Module, pos_enc: nn.Module, blocks: Sequence[nn.Module],
                 norm: nn.Module, head: nn.Module):
        super().__init__()
        if len(blocks) != config.unique_blocks:
            raise ValueError(f"got {len(blocks)} blocks, the config needs {config.unique_blocks}")
        self.config = config
        self.stem, self.pos_enc, self.blocks, self.norm, self.head = stem, pos_enc, nn.ModuleList(blocks), norm, head

    def block_schedule(self) -> list[int]:
        cfg = self.config
        return [0] * cfg.layers if cfg.shared else list(range(cfg.layers))

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.dim() != 4 or x.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(f"input must have shape (N, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}), "
                             f"got {tuple(x.shape)}")
        h = self.stem(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, h w, D), row-major tokens
        h = self.pos_enc(h)
        for i in self.block_schedule():
            h = self.blocks[i](h)
        return self.head(self.norm(h).mean(dim=1))

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        """Decay conv and Linear weights only (not BN/RMSNorm/LayerNorm, biases or the positional table)."""
        return matmul_decay_groups(self, base_lr, weight_decay)

    def summary_fields(self) -> dict:
        cfg = self.config
        return {"applications": cfg.layers, "style": cfg.style, "shared": cfg.shared, "pos_enc": cfg.pos_enc}


def build_disc(cfg: ClassicalDiscConfig) -> ClassicalDisc:
    """Wire the stem, positional encoding, blocks and head of the config (the family's builder)."""
    act = ACTIVATIONS[cfg.activation]
    stem: list[nn.Module] = []
    c_in = cfg.in_channels
    for i, c in enumerate(cfg.stem):
        stem.append(DSConvBN(c_in, c, act))
        if i < len(cfg.stem) - 1:  # paper: reduce "after the first two layers"
            stem.append(reduction_layer(cfg.reduction, c))
        c_in = c
    d = cfg.dim
    pos: nn.Module = LearnedPositions(cfg.tokens, d) if cfg.pos_enc == "learned" else FourierPositions(cfg.side, d)

    def norm() -> nn.Module:
        return nn.RMSNorm(d, eps=NORM_EPS) if cfg.style == "llama" else nn.LayerNorm(d)

    def block() -> EncoderBlock:
        if cfg.style == "llama":
            return EncoderBlock(norm(), SelfAttention(d, cfg.heads, bias=False), norm(),
                                GatedFFN(d, cfg.ffn, GATES[cfg.activation]))
        mlp = nn.Sequential(nn.Linear(d, cfg.mlp_width), act(), nn.Linear(cfg.mlp_width, d))
        return EncoderBlock(norm(), SelfAttention(d, cfg.heads, bias=True), norm(), mlp)

    head = nn.Sequential(nn.Linear(d, cfg.head_width), nn.SiLU(), nn.Linear(cfg.head_width, cfg.num_classes))
    blocks = [block() for _ in range(cfg.unique_blocks)]
    return ClassicalDisc(cfg, nn.Sequential(*stem), pos, blocks, norm(), head)


def disc_flops(cfg: ClassicalDiscConfig) -> int:
    """Analytic forward FLOPs per sample (multiply-add = 2): stem convs, conv reductions, every block application
    (qkv, out, QK^T and AV, FFN) and the head. Norms, pooling, activations and residual adds are left out."""
    macs, side, c_in = 0, cfg.input_size, cfg.in_channels
    for i, c in enumerate(cfg.stem):
        macs += (9 * c_in + c_in * c) * side**2
        if i < len(cfg.stem) - 1:
            side //= 2
            macs += 16 * c * side**2 if cfg.reduction == "conv" else 0
        c_in = c
    t, d = cfg.tokens, cfg.dim
    ffn = 3 * d * cfg.ffn if cfg.style == "llama" else 2 * d * cfg.mlp_width
    macs += cfg.layers * (t * (4 * d * d + ffn) + _attention_macs(t, d))
    macs += d * cfg.head_width + cfg.head_width * cfg.num_classes
    return 2 * macs


register_family(Family(DISC_FAMILY, ClassicalDiscConfig, build_disc, disc_flops))


@register("disc-default", DISC_FAMILY, recorded_params=98_495)
def disc_default() -> ClassicalDiscConfig:
    """The discriminator (spec 1.1 table; paper sec. 1.2.1, Figure 1): DS-conv stem 3-32-64-64 with max pools,
    learned positions, one LLaMA block (RMSNorm, SwiGLU 256) applied 4 times, head 64-128-100."""
    return ClassicalDiscConfig()


@register("disc-fourier", DISC_FAMILY, recorded_params=94_399)
def disc_fourier() -> ClassicalDiscConfig:
    """Positional encoding ablation, Fourier arm (spec 1.1 ablation table): fixed 2-D sinusoids, no parameters."""
    return ClassicalDiscConfig(pos_enc="fourier")


@register("disc-gpt2", DISC_FAMILY, recorded_params=99_391)
def disc_gpt2() -> ClassicalDiscConfig:
    """Transformer-variant ablation, GPT-2 arm (spec 1.1 ablation table): LayerNorm with bias, biased qkv/out, GELU
    MLP 64-384-64. ``activation`` also sets the stem, so the stem is GELU too (see disc-gpt2-silu)."""
    return ClassicalDiscConfig(style="gpt2", activation="gelu")


@register("disc-gpt2-silu", DISC_FAMILY, recorded_params=99_391)
def disc_gpt2_silu() -> ClassicalDiscConfig:
    """GPT-2 blocks with a SiLU MLP and SiLU stem: only the block style differs from disc-default (spec 1.1)."""
    return ClassicalDiscConfig(style="gpt2")


@register("disc-gpt2-mlp256", DISC_FAMILY, recorded_params=82_879)
def disc_gpt2_mlp256() -> ClassicalDiscConfig:
    """disc-gpt2 with a 256-wide MLP, not parameter-matched (spec 1.1 ablation table note)."""
    return ClassicalDiscConfig(style="gpt2", activation="gelu", mlp_width=256)


@register("disc-gelu", DISC_FAMILY, recorded_params=98_495)
def disc_gelu() -> ClassicalDiscConfig:
    """Activation ablation, GeLU arm (spec 1.1 ablation table): GELU in the stem, GeGLU in the FFN."""
    return ClassicalDiscConfig(activation="gelu")


@register("disc-relu", DISC_FAMILY, recorded_params=98_495)
def disc_relu() -> ClassicalDiscConfig:
    """Activation ablation, ReLU arm (spec 1.1 ablation table): ReLU in the stem, ReGLU in the FFN."""
    return ClassicalDiscConfig(activation="relu")


def _register_layers(layers: int) -> None:
    def preset() -> ClassicalDiscConfig:
        return ClassicalDiscConfig(layers=layers)

    preset.__doc__ = (f"Depth ablation (spec 1.1 ablation table, layers 0-6): {layers} application(s) of the tied "
                      f"block{'; the same model as disc-default' if layers == 4 else ''}.")
    register(f"disc-l{layers}", DISC_FAMILY, recorded_params=32_831 if layers == 0 else 98_495)(preset)


for _layers in range(7):
    _register_layers(_layers)


@register("disc-unshared", DISC_FAMILY, recorded_params=295_487)
def disc_unshared() -> ClassicalDiscConfig:
    """Sharing ablation, unshared arm (spec 1.1 ablation table): 4 separate blocks. Over the 100k budget: studies
    list it under budget.diagnostic."""
    return ClassicalDiscConfig(shared=False)


@register("disc-unshared-small", DISC_FAMILY, recorded_params=75_647)
def disc_unshared_small() -> ClassicalDiscConfig:
    """Sharing ablation, budget-matched unshared arm (spec 1.1 ablation table): d 32, FFN 96, stem 32-32-32, 4
    untied blocks."""
    return ClassicalDiscConfig(shared=False, stem=(32, 32, 32), dim=32, ffn=96)


@register("disc-conv-reduce", DISC_FAMILY, recorded_params=100_031)
def disc_conv_reduce() -> ClassicalDiscConfig:
    """Spatial-reduction ablation, conv(4,2,1) arm (spec 1.1 ablation table): depthwise 4x4 stride-2 convs instead
    of the max pools. 31 parameters over the 100k budget (see disc-conv-reduce-h120)."""
    return ClassicalDiscConfig(reduction="conv")


@register("disc-conv-reduce-h120", DISC_FAMILY, recorded_params=98_711)
def disc_conv_reduce_h120() -> ClassicalDiscConfig:
    """Spatial-reduction ablation under budget (spec 1.1 ablation table): conv reductions, head width 120."""
    return ClassicalDiscConfig(reduction="conv", head_width=120)


@register("disc-h120", DISC_FAMILY, recorded_params=97_175)
def disc_h120() -> ClassicalDiscConfig:
    """Max-pool twin of disc-conv-reduce-h120 (spec 1.1 ablation table: "default then 97,175")."""
    return ClassicalDiscConfig(head_width=120)


@register("disc-ffn260", DISC_FAMILY, recorded_params=99_263)
def disc_ffn260() -> ClassicalDiscConfig:
    """FFN width 260, closer to the paper's 99,546 parameters (spec 1.1 notes)."""
    return ClassicalDiscConfig(ffn=260)


@register("disc-h136", DISC_FAMILY, recorded_params=99_815)
def disc_h136() -> ClassicalDiscConfig:
    """Head width 136, closer to the paper's 99,546 parameters (spec 1.1 notes)."""
    return ClassicalDiscConfig(head_width=136)
