"""Block-sharing diffusion transformer: Osman & Kaplan 2024, "Small Transformers, Big Results: Efficient Diffusion
with Parameter Sharing" (ICLR 2024 Tiny Papers).

The model is k-diffusion's ``image_transformer_v1`` (Crowson, k-diffusion v0.1.1) plus the two knobs of the paper's
code (spaghettiSystems/tiny_diffusion): ``substeps`` applies every block k times and ``interleaved`` picks the visit
order (1 2 1 2 ... or 1 1 ... 2 2 ...); the k-th visit of a block sees the conditioning multiplied by k.
Written from the paper and the implementation notes in docs/papers.md; no code is copied from either repository.

Names: ``D<n>`` (n unique blocks), ``D<n>S<k>I`` / ``D<n>S<k>UI`` (each applied k times, interleaved or not).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import Dropout
from zoo.registry import Family, ZooError, closest_hint, register, register_family

FAMILY = "block_sharing"
NAME_HELP = "D<n>, D<n>S<k>I, D<n>S<k>UI (block-sharing transformer)"
MAPPING_LR_SCALE = 1 / 3  # reference param_groups: mapping network and AdaRMSNorm linears train at lr/3
_EPS = 1e-6
_MAX_LOG_SCALE = math.log(100.0)  # QK-norm log-scale ceiling (reference QKNorm max_scale=100)


def _round_to_power_of_two(x: float, tol: float = 0.05) -> int:
    """The coarsest multiple of a power of two within ``tol`` (relative) of ``x``; k-diffusion's d_ff rule."""
    mult = 2 ** max(0, math.floor(math.log2(x)))
    while mult >= 1:
        approx = round(x / mult) * mult
        if approx > 0 and abs(approx - x) <= tol * x:
            return approx
        mult //= 2
    return max(1, round(x))


@dataclass(frozen=True)
class BlockSharingConfig:
    """One block-sharing transformer. Defaults are the paper's CIFAR-10 setting (spec "image_transformer_v1 at
    32x32x3"): width 512, head dim 64, patch 4, 10 classes (+1 null class), dropout 0.05, sigma_data 0.5."""

    depth: int = 8  # unique transformer blocks (D)
    substeps: int = 1  # applications of each block (S)
    interleaved: bool = True  # visit order 1 2 1 2 ... (I) rather than 1 1 ... 2 2 ... (UI)
    width: int = 512
    head_dim: int = 64
    patch_size: int = 4
    input_size: int = 32
    in_channels: int = 3
    num_classes: int = 10  # 0 = unconditional (no class embedding)
    dropout: float = 0.05
    mapping_depth: int = 2
    aug_dim: int = 9  # Karras augmentation conditioning vector
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            (self.depth >= 1, f"depth must be >= 1, got {self.depth}"),
            (self.substeps >= 1, f"substeps must be >= 1, got {self.substeps}"),
            (self.width >= 1 and self.head_dim >= 1, "width and head_dim must be positive"),
            (self.width % self.head_dim == 0, f"width {self.width} must be a multiple of head_dim {self.head_dim}"),
            (self.head_dim % 4 == 0, f"head_dim must be a multiple of 4 for axial RoPE, got {self.head_dim}"),
            (self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}"),
            (self.input_size % self.patch_size == 0,
             f"input_size {self.input_size} must be a multiple of patch_size {self.patch_size}"),
            (self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}"),
            (self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.mapping_depth >= 0, f"mapping_depth must be >= 0, got {self.mapping_depth}"),
            (self.aug_dim >= 1, f"aug_dim must be >= 1, got {self.aug_dim}"),
            (self.sigma_data > 0, f"sigma_data must be positive, got {self.sigma_data}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def d_ff(self) -> int:
        """Feed-forward width: width*8/3 rounded as k-diffusion does (512 -> 1408 = 11*128)."""
        return _round_to_power_of_two(self.width * 8 / 3)

    @property
    def tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def applications(self) -> int:
        """Block applications per forward pass (the simulated depth D x S)."""
        return self.depth * self.substeps

    @property
    def order(self) -> str:
        """"I", "UI", or "-" when the order cannot matter (one block, or one visit per block)."""
        if self.depth == 1 or self.substeps == 1:
            return "-"
        return "I" if self.interleaved else "UI"


# ---------------------------------------------------------------------------------------------------- components


def _zero_init(layer: nn.Linear) -> nn.Linear:
    # Residual branches and the output start at zero so the untrained network is the identity (k-diffusion).
    nn.init.zeros_(layer.weight)
    return layer


def _rms_norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * scale over the last axis, in at least fp32 (stable under mixed precision)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dtype)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + _EPS) * scale.to(dtype)
    return y.to(x.dtype)


class FourierFeatures(nn.Module):
    """Random Fourier features [cos(2 pi x W^T), sin(2 pi x W^T)] with a fixed W ~ N(0, 1) (Tancik et al. 2020)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        # Persistent buffer: the random projection is part of the model and must survive a checkpoint.
        self.register_buffer("weight", torch.randn(out_features // 2, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, out)
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable scale (Zhang & Sennrich 2019)."""

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, self.scale)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose scale is 1 + Linear(cond) (scale only, no shift); zero-init so it starts as plain RMSNorm."""

    def __init__(self, features: int, cond_features: int):
        super().__init__()
        self.linear = _zero_init(nn.Linear(cond_features, features, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, 1 + self.linear(cond))


class GEGLU(nn.Module):
    """a * gelu(b) over the two halves of the last axis (Shazeer 2020), exact GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return a * F.gelu(b)

    @staticmethod
    def project(x: torch.Tensor, up: nn.Linear) -> torch.Tensor:
        """GEGLU(up(x)) with the two halves of ``up``'s weight applied as two products: the halves come out
        contiguous, which makes forward + backward faster on CPU than chunking one product (results/bench/README.md,
        "What changed to get there"). Same parameters, same result up to float rounding."""
        half = up.out_features // 2
        a = F.linear(x, up.weight[:half], None if up.bias is None else up.bias[:half])
        b = F.linear(x, up.weight[half:], None if up.bias is None else up.bias[half:])
        return a * F.gelu(b)


class ResidualMLP(nn.Module):
    """x + Linear(d_ff -> w, zero-init)(Dropout(GEGLU(Linear(w -> 2 d_ff)(norm(x, *cond))))): the feed-forward
    sub-block of the transformer (``norm`` an AdaRMSNorm) and of the mapping network (``norm`` an RMSNorm)."""

    def __init__(self, norm: nn.Module, width: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm = norm
        self.up = nn.Linear(width, 2 * d_ff, bias=False)
        self.act = GEGLU()
        self.dropout = Dropout(dropout)
        self.down = _zero_init(nn.Linear(d_ff, width, bias=False))

    def forward(self, x: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.dropout(self.act.project(self.norm(x, *cond), self.up)))


class MappingNetwork(nn.Module):
    """RMSNorm -> ``depth`` residual GEGLU MLPs -> RMSNorm: turns the summed embeddings into ``cond``."""

    def __init__(self, width: int, d_ff: int, depth: int, dropout: float):
        super().__init__()
        self.in_norm = RMSNorm(width)
        self.blocks = nn.ModuleList(ResidualMLP(RMSNorm(width), width, d_ff, dropout) for _ in range(depth))
        self.out_norm = RMSNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)


def axial_positions(h: int, w: int, device=None) -> torch.Tensor:
    """(h*w, 2) token positions (y, x), row-major: bin centres of [-1, 1] along the longer side, the shorter side
    shrunk to keep the aspect ratio (k-diffusion ``make_axial_pos`` with square pixels)."""

    def centres(n: int, extent: float) -> torch.Tensor:
        edges = torch.linspace(-extent, extent, n + 1, device=device)
        return (edges[:-1] + edges[1:]) / 2

    ys, xs = centres(h, min(1.0, h / w)), centres(w, min(1.0, w / h))
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)  # (h, w, 2) -> (h*w, 2)


class AxialRoPE(nn.Module):
    """Axial rotary position embedding (Su et al. 2021; 2-D form of k-diffusion) with learnable log-frequencies:
    head_dim/4 per head per axis, init linspace(ln pi, ln 5 pi); rotates adjacent pairs of the whole head."""

    def __init__(self, head_dim: int, n_heads: int):
        super().__init__()
        init = torch.linspace(math.log(math.pi), math.log(5 * math.pi), head_dim // 4).expand(n_heads, -1)
        self.freqs_h = nn.Parameter(init.clone())
        self.freqs_w = nn.Parameter(init.clone())

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x (..., H, L, E), pos (L, 2)
        ang_h = pos[:, 0, None, None] * self.freqs_h.exp()  # (L, H, E/4)
        ang_w = pos[:, 1, None, None] * self.freqs_w.exp()  # (L, H, E/4)
        ang = torch.cat([ang_h, ang_w], dim=-1).transpose(0, 1)  # (L, H, E/2) -> (H, L, E/2)
        if x.dtype in (torch.float32, torch.float64):
            # A pair (a, b) as the complex a + ib times e^(i angle) is the rotation below in one kernel: faster
            # forward + backward on CPU (results/bench/README.md); complex half precision is not supported everywhere.
            rot = torch.polar(torch.ones_like(ang), ang).to(torch.complex128 if x.dtype == torch.float64 else
                                                            torch.complex64)
            pairs = torch.view_as_complex(x.contiguous().unflatten(-1, (-1, 2)))  # (..., E) -> (..., E/2) complex
            return torch.view_as_real(pairs * rot).flatten(-2)
        ang = ang.repeat_interleave(2, dim=-1)  # (H, L, E/2) -> (H, L, E): each angle drives one adjacent pair
        # A pair (a, b) rotates to (a cos - b sin, b cos + a sin); ``swapped`` holds (-b, a).
        swapped = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)  # (N, H, L, E/2, 2) -> (N, H, L, E)
        return x * ang.cos().to(x.dtype) + swapped * ang.sin().to(x.dtype)


class SelfAttention(nn.Module):
    """Pre-norm self-attention with cosine (QK-normalised) logits exp(s) * cos(q, k) (Henry et al. 2020;
    Dehghani et al. 2023), a learnable per-head log-scale s (init ln 10, at most ln 100), and axial RoPE."""

    def __init__(self, width: int, head_dim: int, dropout: float):
        super().__init__()
        self.head_dim, self.n_heads = head_dim, width // head_dim
        self.norm = AdaRMSNorm(width, width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.qk_scale = nn.Parameter(torch.full((self.n_heads,), math.log(10.0)))
        self.rope = AxialRoPE(head_dim, self.n_heads)
        self.dropout = Dropout(dropout)
        self.out = _zero_init(nn.Linear(width, width, bias=False))

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp s to ln 100 in place, at every visit (reference QKNorm.proj_). Why not torch.clamp in forward:
        above the ceiling its gradient would be zero for good (s has no weight decay); projecting the stored value
        keeps it trainable. Safe with sharing: autograd saves exp(...) of s, never s itself (tested)."""
        self.qk_scale.clamp_(max=_MAX_LOG_SCALE)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        self.project_()
        qkv = self.qkv(self.norm(x, cond))
        # (N, L, 3W) -> (N, L, 3, H, E) -> (3, N, H, L, E)
        qkv = qkv.view(n, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # RMS-normalised q and k have squared norm E; scaling each by exp(s/2) E^(-1/4) makes SDPA's default
        # 1/sqrt(E) produce logits exp(s) * cos(q, k).
        gain = torch.exp(0.5 * self.qk_scale - 0.25 * math.log(self.head_dim))
        gain = gain[:, None, None]  # (H,) -> (H, 1, 1), broadcast over (2, N, H, L, E)
        # q and k are normalised and rotated together: half the elementwise kernel launches (bench zoo, width 128)
        q, k = self.rope(_rms_norm(qkv[:2], gain), pos).unbind(0)
        y = F.scaled_dot_product_attention(q, k, qkv[2])
        y = y.transpose(1, 2).reshape(n, length, width)  # (N, H, L, E) -> (N, L, H*E)
        return x + self.out(self.dropout(y))


class TransformerBlock(nn.Module):
    """Attention then feed-forward, both pre-norm residual; ``cond`` enters only through the two AdaRMSNorms."""

    def __init__(self, width: int, head_dim: int, d_ff: int, dropout: float):
        super().__init__()
        self.attn = SelfAttention(width, head_dim, dropout)
        self.ff = ResidualMLP(AdaRMSNorm(width, width), width, d_ff, dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.ff(self.attn(x, pos, cond), cond)


# --------------------------------------------------------------------------------------------------------- model


class ImageTransformerV1(nn.Module):
    """The EDM-preconditioned denoiser D(x; sigma) around a patch transformer whose ``blocks`` are visited
    ``substeps`` times each (Osman & Kaplan 2024, sec. 2.2). Component builder: the caller supplies the blocks
    (any module with ``forward(x, pos, cond)``) and the mapping network; :func:`build_model` wires the paper's."""

    def __init__(self, config: BlockSharingConfig, blocks: Sequence[nn.Module], mapping: nn.Module):
        super().__init__()
        if len(blocks) != config.depth:
            raise ValueError(f"got {len(blocks)} blocks for depth {config.depth}")
        self.config = config
        self.sigma_data = config.sigma_data
        w, patch_dim = config.width, config.in_channels * config.patch_size**2
        self.time_emb = FourierFeatures(1, w)
        self.time_in_proj = nn.Linear(w, w, bias=False)
        self.aug_emb = FourierFeatures(config.aug_dim, w)
        self.aug_in_proj = nn.Linear(w, w, bias=False)
        # Index num_classes is the null class used for conditioning dropout and unconditional sampling.
        self.class_emb = nn.Embedding(config.num_classes + 1, w) if config.num_classes else None
        self.mapping = mapping
        self.in_proj = nn.Linear(patch_dim, w, bias=False)
        self.blocks = nn.ModuleList(blocks)
        self.out_norm = RMSNorm(w)
        self.out_proj = _zero_init(nn.Linear(w, patch_dim, bias=False))

    def visit_order(self) -> list[tuple[int, int]]:
        """Block applications in order as (block index, k), k the 1-based visit number of that block."""
        d, s = self.config.depth, self.config.substeps
        if self.config.interleaved:
            return [(b, k + 1) for k in range(s) for b in range(d)]
        return [(b, k + 1) for b in range(d) for k in range(s)]

    def _sigma(self, sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
        return sigma

    def precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EDM scalings (Karras et al. 2022, Table 1), each shaped (N, 1, 1, 1): c_skip, c_out, c_in."""
        sigma, sd = sigma.reshape(-1, 1, 1, 1), self.sigma_data
        total = sigma**2 + sd**2
        return sd**2 / total, sigma * sd / total.sqrt(), 1 / total.sqrt()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                aug_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The denoised image D(x; sigma) = c_skip x + c_out F(c_in x, sigma)."""
        sigma = self._sigma(sigma, x)
        c_skip, c_out, c_in = self.precondition(sigma)
        return c_skip * x + c_out * self.inner(x * c_in, sigma, class_labels, aug_cond)

    def _cond(self, sigma: torch.Tensor, class_labels: torch.Tensor | None, aug_cond: torch.Tensor | None):
        n = sigma.shape[0]
        c_noise = torch.log(sigma) / 4  # EDM noise conditioning
        emb = self.time_in_proj(self.time_emb(c_noise[:, None]))  # (N,) -> (N, 1) -> (N, W)
        if aug_cond is None:
            aug_cond = sigma.new_zeros(n, self.config.aug_dim)
        emb = emb + self.aug_in_proj(self.aug_emb(aug_cond.to(sigma.dtype)))
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((n,), self.config.num_classes, dtype=torch.long, device=sigma.device)
            emb = emb + self.class_emb(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels were given to an unconditional model (num_classes=0)")
        return self.mapping(emb).unsqueeze(1)  # (N, W) -> (N, 1, W): one conditioning token per sample

    def inner(self, x_in: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
              aug_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The raw network F(c_in x, sigma), of the input's shape."""
        cfg, p = self.config, self.config.patch_size
        n, c, height, width = x_in.shape
        if c != cfg.in_channels or height % p or width % p:
            raise ValueError(f"input of shape {tuple(x_in.shape)} needs {cfg.in_channels} channels and a size "
                             f"divisible by patch_size {p}")
        h, w = height // p, width // p
        sigma = self._sigma(sigma, x_in)
        # (N, C, h p, w p) -> (N, C, h, p, w, p) -> (N, h, w, C, p, p) -> (N, h w, C p p)
        tokens = x_in.reshape(n, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, c * p * p)
        x = self.in_proj(tokens)
        pos = axial_positions(h, w, device=x.device)
        cond = self._cond(sigma, class_labels, aug_cond)
        for b, k in self.visit_order():
            x = self.blocks[b](x, pos, cond * k)  # repeat-index conditioning: visit k sees k * cond
        x = self.out_proj(self.out_norm(x))
        # (N, h w, C p p) -> (N, h, w, C, p, p) -> (N, C, h, p, w, p) -> (N, C, H, W)
        return x.reshape(n, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups as in the reference ``param_groups``: the mapping network (all of it, norms included) and
        the AdaRMSNorm linears train at lr/3; weight decay applies only to the Linear weights inside the
        transformer blocks and the mapping network. Everything else (norm scales, QK scales, RoPE frequencies,
        time/aug input projections, class embedding, in/out projections) is at base lr without decay: the
        reference tags the time/aug projections and class embedding neither "mapping" nor "wd"."""
        mapping = {id(p) for p in self.mapping.parameters()}
        mapping |= {id(m.linear.weight) for m in self.modules() if isinstance(m, AdaRMSNorm)}
        decayed = {
            id(m.weight) for part in (self.blocks, self.mapping) for m in part.modules() if isinstance(m, nn.Linear)
        }
        buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for p in self.parameters():  # parameters() yields shared tensors once
            if p.requires_grad:
                buckets.setdefault((id(p) in mapping, id(p) in decayed), []).append(p)
        groups = []
        for is_mapping, is_decayed in [(False, True), (False, False), (True, True), (True, False)]:
            if params := buckets.get((is_mapping, is_decayed)):
                groups.append({
                    "params": params,
                    "lr": base_lr * (MAPPING_LR_SCALE if is_mapping else 1.0),
                    "weight_decay": weight_decay if is_decayed else 0.0,
                    "name": ("mapping" if is_mapping else "main") + ("_wd" if is_decayed else "_no_wd"),
                })
        return groups

    def summary_fields(self) -> dict:
        cfg = self.config
        return {"depth": cfg.depth, "substeps": cfg.substeps, "order": cfg.order, "applications": cfg.applications}


def build_model(cfg: BlockSharingConfig) -> ImageTransformerV1:
    """Wire the paper's blocks and mapping network into the model (the family's builder)."""
    blocks = [TransformerBlock(cfg.width, cfg.head_dim, cfg.d_ff, cfg.dropout) for _ in range(cfg.depth)]
    mapping = MappingNetwork(cfg.width, cfg.d_ff, cfg.mapping_depth, cfg.dropout)
    return ImageTransformerV1(cfg, blocks, mapping)


def flops(cfg: BlockSharingConfig) -> int:
    """Analytic forward FLOPs per sample, counting matrix products only (multiply-add = 2); norms, RoPE, softmax,
    GEGLU and the residual adds are elementwise and left out (< 1% here). At the paper config one block application
    is ~0.42 GFLOP and D8 ~3.4 GFLOP (spec "Compute")."""
    w, f, t = cfg.width, cfg.d_ff, cfg.tokens
    patch_dim = cfg.in_channels * cfg.patch_size**2
    attention = 2 * t * w * 3 * w + 2 * (2 * t * t * w) + 2 * t * w * w  # qkv; QK^T and AV over all heads; out
    feed_forward = 2 * t * w * 2 * f + 2 * t * f * w  # up to 2 d_ff (GEGLU halves); down
    ada_norms = 2 * (2 * w * w)  # two AdaRMSNorm linears on the single cond token, recomputed at every visit
    per_application = attention + feed_forward + ada_norms
    in_out = 2 * (2 * t * patch_dim * w)
    embeddings = 2 * (w // 2) * (1 + cfg.aug_dim) + 2 * (2 * w * w)  # Fourier features; time/aug projections
    mapping = cfg.mapping_depth * (2 * w * 2 * f + 2 * f * w)
    return cfg.applications * per_application + in_out + embeddings + mapping


# --------------------------------------------------------------------------------------------------------- names

_NAME = re.compile(r"D(\d+)(?:S(\d+)([A-Za-z]*))?")


def _bad_name(name: str, why: str) -> ZooError:
    return ZooError(f"bad block-sharing name {name!r}: {why}{closest_hint(name)}")


def name_candidates(name: str) -> list[str]:
    """The D-names a mistyped ``name`` may mean: its first two numbers as D<n> and S<k>, with each order suffix
    (none where the order cannot matter, as the presets D1S8 and D4S1 are written). Case and the look-alikes l/I
    and O/0 are read as the grammar's (``d2s2l`` -> ``D2S2I``), so a typo finds the parametric names that build,
    not only the presets."""
    folded = name.upper().replace("O", "0")
    if not folded.startswith("D"):
        return []
    numbers = [int(d) for d in re.findall(r"\d+", folded)[:2] if len(d) <= 4]
    if not numbers or min(numbers) < 1:
        return []
    if len(numbers) == 1:
        return [f"D{numbers[0]}"]
    depth, substeps = numbers
    if depth == 1 or substeps == 1:
        return [f"D{depth}S{substeps}"]
    return [f"D{depth}S{substeps}I", f"D{depth}S{substeps}UI"]


def parse_name(name: str) -> BlockSharingConfig | None:
    """``D<n>``, ``D<n>S<k>I`` or ``D<n>S<k>UI`` -> config (paper settings); None if not a D-name at all.

    The suffix may be left out, and is ignored, where the order cannot matter (``D<n>S1``, ``D1S<k>``): such names
    resolve to interleaved=True so that each model has one config (and one config hash)."""
    if not re.match(r"D\d", name):
        return None
    m = _NAME.fullmatch(name)
    if m is None:
        raise _bad_name(name, f"malformed, expected {NAME_HELP}")
    depth, substeps, suffix = int(m[1]), int(m[2] or 1), m[3] or ""
    if depth < 1:
        raise _bad_name(name, "depth D must be >= 1")
    if substeps < 1:
        raise _bad_name(name, "substeps S must be >= 1")
    if suffix not in ("", "I", "UI"):
        raise _bad_name(name, f"the order suffix must be I (interleaved) or UI, not {suffix!r}")
    if not suffix and depth > 1 and substeps > 1:
        raise _bad_name(name, f"it needs an order suffix, {name}I (interleaved) or {name}UI")
    interleaved = suffix != "UI" or depth == 1 or substeps == 1
    return BlockSharingConfig(depth=depth, substeps=substeps, interleaved=interleaved)


register_family(Family(FAMILY, BlockSharingConfig, build_model, flops, parse=parse_name, name_help=NAME_HELP,
                       candidates=name_candidates, example="D3S3I"))


def _paper_params(depth: int) -> int:
    # Counted from the reference code at the paper config (spec "Parameter count"); the paper prints no counts.
    return 4_907_008 + 3_735_816 * depth


def _preset(depth: int, substeps: int = 1, interleaved: bool = True) -> BlockSharingConfig:
    return BlockSharingConfig(depth=depth, substeps=substeps, interleaved=interleaved)


@register("D16", FAMILY, recorded_params=_paper_params(16))
def d16() -> BlockSharingConfig:
    """16 unique blocks, no sharing: the deep baseline (Osman & Kaplan 2024, Table 1)."""
    return _preset(16)


@register("D8", FAMILY, recorded_params=_paper_params(8))
def d8() -> BlockSharingConfig:
    """8 unique blocks, no sharing: the shallow baseline (Osman & Kaplan 2024, Table 1)."""
    return _preset(8)


@register("D1S16", FAMILY, recorded_params=_paper_params(1))
def d1s16() -> BlockSharingConfig:
    """1 block applied 16 times (Osman & Kaplan 2024, Table 1)."""
    return _preset(1, 16)


@register("D1S8", FAMILY, recorded_params=_paper_params(1))
def d1s8() -> BlockSharingConfig:
    """1 block applied 8 times (Osman & Kaplan 2024, Table 1)."""
    return _preset(1, 8)


@register("D2S4I", FAMILY, recorded_params=_paper_params(2))
def d2s4i() -> BlockSharingConfig:
    """2 blocks x 4, interleaved 12121212 (Osman & Kaplan 2024, Table 1)."""
    return _preset(2, 4, True)


@register("D2S4UI", FAMILY, recorded_params=_paper_params(2))
def d2s4ui() -> BlockSharingConfig:
    """2 blocks x 4, un-interleaved 11112222 (Osman & Kaplan 2024, Table 1)."""
    return _preset(2, 4, False)


@register("D2S8I", FAMILY, recorded_params=_paper_params(2))
def d2s8i() -> BlockSharingConfig:
    """2 blocks x 8, interleaved (12)x8 (Osman & Kaplan 2024, Table 1)."""
    return _preset(2, 8, True)


@register("D2S8UI", FAMILY, recorded_params=_paper_params(2))
def d2s8ui() -> BlockSharingConfig:
    """2 blocks x 8, un-interleaved 1x8 then 2x8 (Osman & Kaplan 2024, Table 1)."""
    return _preset(2, 8, False)


@register("D4S2I", FAMILY, recorded_params=_paper_params(4))
def d4s2i() -> BlockSharingConfig:
    """4 blocks x 2, interleaved (reference code config depth4_sub2_interleaved_yes; not in Table 1)."""
    return _preset(4, 2, True)


@register("D4S2UI", FAMILY, recorded_params=_paper_params(4))
def d4s2ui() -> BlockSharingConfig:
    """4 blocks x 2, un-interleaved (reference code config depth4_sub2_interleaved_no; not in Table 1)."""
    return _preset(4, 2, False)


@register("D4S4I", FAMILY, recorded_params=_paper_params(4))
def d4s4i() -> BlockSharingConfig:
    """4 blocks x 4, interleaved (reference code config depth4_sub4_interleaved_yes; not in Table 1)."""
    return _preset(4, 4, True)


@register("D4S4UI", FAMILY, recorded_params=_paper_params(4))
def d4s4ui() -> BlockSharingConfig:
    """4 blocks x 4, un-interleaved (reference code config depth4_sub4_interleaved_no; not in Table 1)."""
    return _preset(4, 4, False)


@register("D8S2I", FAMILY, recorded_params=_paper_params(8))
def d8s2i() -> BlockSharingConfig:
    """8 blocks x 2, interleaved (reference code config depth8_sub2_interleaved_yes; not in Table 1)."""
    return _preset(8, 2, True)


@register("D8S2UI", FAMILY, recorded_params=_paper_params(8))
def d8s2ui() -> BlockSharingConfig:
    """8 blocks x 2, un-interleaved (reference code config depth8_sub2_interleaved_no; not in Table 1)."""
    return _preset(8, 2, False)
