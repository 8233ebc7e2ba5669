"""Toy DDPM epsilon-predictor MLP for 3-D point clouds: IIT Bombay CS726 (2023) HW2, the report of Chanda & Yadav
("Homework 2", IIT Bombay 2023; see docs/papers.md) on the starter code ashutoshbsathe/explore-diffusion.

The network is the starter's ``forward(x, t) = model(cat[x, time_embed(t)])`` (spec 3.1) with the family proposal
of spec 3.4: hidden Linear layers, each followed by the activation, and an output Linear back to ``n_dim``.
The report fixes only the hidden widths and ReLU (Q2, "Model 1/2/3"); the time embedding is ours (see the config).
Written from the implementation notes 3.1-3.4 in docs/papers.md (cited as "spec 3.4" etc.); no code is copied from
the starter repository.

Names: the report's ladder ``toy-mlp-1x64``, ``toy-mlp-2x64``, ``toy-mlp-64-128-128``, and the parametric forms
``toy-mlp-<L>x<W>`` (L hidden layers of width W) and ``toy-mlp-<w1>-<w2>-...`` (one width per hidden layer).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.registry import Family, ZooError, closest_hint, decay_param_groups, register, register_family

FAMILY = "toy_mlp"
PREFIX = "toy-mlp-"
NAME_HELP = "toy-mlp-<L>x<W>, toy-mlp-<w1>-<w2>-... (toy DDPM MLP)"
TIME_EMBEDS = ("sinusoidal", "learned")
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
REPORT_ACTIVATION = "relu"  # report Q2: "ReLU layers are also used after each layer"; used by every name
SINUSOIDAL_T_RANGE = 1000  # t is rescaled to [0, 1000) before the sinusoidal embedding (guided-diffusion)
SINUSOIDAL_MAX_PERIOD = 10_000  # Vaswani et al. 2017 / Ho et al. 2020 frequency ladder


@dataclass(frozen=True)
class ToyMLPConfig:
    """One epsilon-predictor MLP. Defaults: the report's largest model (64-128-128) on 3-D data, with a 32-dim
    sinusoidal time embedding (the report does not say; the spec proposes dim 16-64).

    - ``time_embed="sinusoidal"`` (default; no parameters): sin/cos of ``t * 1000 / max_t`` at the Transformer
      frequencies 10000^(-k / (time_dim/2)), i.e. guided-diffusion's ``rescale_timesteps``: with ``max_t = T`` the
      embedding spans the same phases whatever T is; with ``max_t = 1000`` it is the plain DDPM embedding of t.
    - ``time_embed="learned"``: a small MLP Linear(1, time_dim) -> activation -> Linear(time_dim, time_dim) of
      ``t / max_t`` (adds time_dim^2 + 2 time_dim parameters).
    ``max_t`` only scales t for the embedding; set it to the DDPM's T (t beyond it extrapolates, no error).
    """

    hidden: tuple[int, ...] = (64, 128, 128)
    n_dim: int = 3
    time_dim: int = 32
    time_embed: str = "sinusoidal"
    max_t: int = 1000
    activation: str = "silu"

    def __post_init__(self) -> None:
        if isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))  # keep the config hashable
        checks = [
            (isinstance(self.hidden, tuple) and len(self.hidden) >= 1,
             f"hidden must be a non-empty tuple of widths, got {self.hidden!r}"),
            (all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.hidden),
             f"every hidden width must be an integer >= 1, got {self.hidden!r}"),
            (self.n_dim >= 1, f"n_dim must be >= 1, got {self.n_dim}"),
            (self.time_embed in TIME_EMBEDS, f"time_embed must be one of {', '.join(TIME_EMBEDS)}, "
                                             f"got {self.time_embed!r}"),
            (self.time_dim >= 1, f"time_dim must be >= 1, got {self.time_dim}"),
            (self.time_embed != "sinusoidal" or self.time_dim % 2 == 0,
             f"time_dim must be even for the sinusoidal embedding (sin and cos halves), got {self.time_dim}"),
            (self.max_t >= 1, f"max_t must be >= 1, got {self.max_t}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}, "
                                             f"got {self.activation!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def widths(self) -> str:
        return "-".join(map(str, self.hidden))


# ---------------------------------------------------------------------------------------------------- components


class SinusoidalTimeEmbedding(nn.Module):
    """[sin(s w_k), cos(s w_k)], s = t * 1000 / max_t, w_k = 10000^(-k / half) (Vaswani et al. 2017)."""

    def __init__(self, dim: int, max_t: int):
        super().__init__()
        self.dim, self.max_t = dim, max_t

    def forward(self, t: Tensor) -> Tensor:  # (N,) -> (N, dim)
        half = self.dim // 2
        k = torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(SINUSOIDAL_MAX_PERIOD) * k / half)
        phase = (t.float() * (SINUSOIDAL_T_RANGE / self.max_t))[:, None] * freqs[None]  # (N, 1) * (1, half)
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)


class LearnedTimeEmbedding(nn.Module):
    """A small MLP of t / max_t (spec 3.4 "a small learned MLP of t/T")."""

    def __init__(self, dim: int, max_t: int, activation: type[nn.Module]):
        super().__init__()
        self.max_t = max_t
        self.net = nn.Sequential(nn.Linear(1, dim), activation(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:  # (N,) -> (N, 1) -> (N, dim)
        return self.net((t.float() / self.max_t)[:, None])


class ToyMLP(nn.Module):
    """eps_hat(x, t) = net(cat[x, time_embed(t)]); x is (N, n_dim), t an int or a (N,) tensor of steps."""

    def __init__(self, config: ToyMLPConfig, time_embed: nn.Module, net: nn.Module):
        super().__init__()
        self.config = config
        self.time_embed = time_embed
        self.net = net

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        n_dim = self.config.n_dim
        if x.dim() != 2 or x.shape[1] != n_dim:
            raise ValueError(f"input must have shape (N, {n_dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t  # starter: an int t is broadcast to the batch
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be an int or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return self.net(torch.cat([x, self.time_embed(t).to(x.dtype)], dim=1))

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict]:
        """Two AdamW groups: Linear weights with ``weight_decay``, biases without (nanoGPT's rule: decay only
        tensors of dim >= 2). With Adam and weight_decay = 0, as in the homework, they are equivalent to one."""
        return decay_param_groups(self, base_lr, weight_decay)

    def summary_fields(self) -> dict:
        return {"depth": len(self.config.hidden), "widths": self.config.widths}


def build_model(cfg: ToyMLPConfig) -> ToyMLP:
    """Wire the time embedding and the hidden stack (the family's builder)."""
    act = ACTIVATIONS[cfg.activation]
    if cfg.time_embed == "sinusoidal":
        time_embed: nn.Module = SinusoidalTimeEmbedding(cfg.time_dim, cfg.max_t)
    else:
        time_embed = LearnedTimeEmbedding(cfg.time_dim, cfg.max_t, act)
    layers: list[nn.Module] = []
    width = cfg.n_dim + cfg.time_dim
    for out in cfg.hidden:
        layers += [nn.Linear(width, out), act()]  # report: an activation after each hidden layer
        width = out
    layers.append(nn.Linear(width, cfg.n_dim))  # epsilon has the data's dimension, no activation
    return ToyMLP(cfg, time_embed, nn.Sequential(*layers))


def flops(cfg: ToyMLPConfig) -> int:
    """Analytic forward FLOPs per sample: 2 x (multiply-adds of every Linear). Bias adds, activations and the
    sinusoidal embedding are elementwise and left out."""
    dims = [cfg.n_dim + cfg.time_dim, *cfg.hidden, cfg.n_dim]
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    if cfg.time_embed == "learned":
        macs += cfg.time_dim + cfg.time_dim * cfg.time_dim
    return 2 * macs


# --------------------------------------------------------------------------------------------------------- names

_DEPTH_X_WIDTH = re.compile(r"(\d+)x(\d+)")
_WIDTHS = re.compile(r"\d+(?:-\d+)*")


def _bad_name(name: str, why: str) -> ZooError:
    return ZooError(f"bad toy-mlp name {name!r}: {why} (expected {NAME_HELP}){closest_hint(name)}")


def name_candidates(name: str) -> list[str]:
    """The toy-mlp name a mistyped ``name`` with "mlp" in it may mean: its numbers as <L>x<W> when an x joins two of
    them, else as the hidden widths."""
    if "mlp" not in name.casefold():
        return []
    rest = name.casefold().split("mlp", 1)[1]
    numbers = [int(d) for d in re.findall(r"\d+", rest) if len(d) <= 4]
    if not numbers or min(numbers) < 1:
        return []
    if len(numbers) == 2 and re.search(r"\d\s*x\s*\d", rest):
        return [f"{PREFIX}{numbers[0]}x{numbers[1]}"]
    return [PREFIX + "-".join(map(str, numbers))]


def parse_name(name: str) -> ToyMLPConfig | None:
    """``toy-mlp-<L>x<W>`` or ``toy-mlp-<w1>-<w2>-...`` -> config with the report's ReLU; None if the name does not
    start with ``toy-mlp-``. Numbers must be >= 1 and written without leading zeros (one name per model)."""
    if not name.startswith(PREFIX):
        return None
    rest = name[len(PREFIX):]
    if m := _DEPTH_X_WIDTH.fullmatch(rest):
        numbers = [m[1], m[2]]
        depth, width = int(m[1]), int(m[2])
        if depth < 1:
            raise _bad_name(name, "the number of hidden layers L must be >= 1")
        hidden = (width,) * depth
    elif _WIDTHS.fullmatch(rest):
        numbers = rest.split("-")
        hidden = tuple(int(w) for w in numbers)
    else:
        raise _bad_name(name, "malformed")
    if min(hidden) < 1:
        raise _bad_name(name, "every hidden width must be >= 1")
    if any(s != str(int(s)) for s in numbers):
        raise _bad_name(name, "write the numbers without leading zeros")
    return ToyMLPConfig(hidden=hidden, activation=REPORT_ACTIVATION)


register_family(Family(FAMILY, ToyMLPConfig, build_model, flops, parse=parse_name, name_help=NAME_HELP,
                       candidates=name_candidates, example="toy-mlp-3x64"))


# Recorded counts are exact at the default config (sinusoidal time_dim 32, n_dim 3); the report prints none.
@register("toy-mlp-1x64", FAMILY, recorded_params=2_499)
def toy_mlp_1x64() -> ToyMLPConfig:
    """Model 1 of the report (Chanda & Yadav, CS726 HW2, Q2 and Table 3): one hidden layer of 64, ReLU."""
    return ToyMLPConfig(hidden=(64,), activation=REPORT_ACTIVATION)


@register("toy-mlp-2x64", FAMILY, recorded_params=6_659)
def toy_mlp_2x64() -> ToyMLPConfig:
    """Model 2 of the report (Chanda & Yadav, CS726 HW2, Q2 and Table 3): two hidden layers of 64, ReLU."""
    return ToyMLPConfig(hidden=(64, 64), activation=REPORT_ACTIVATION)


@register("toy-mlp-64-128-128", FAMILY, recorded_params=27_523)
def toy_mlp_64_128_128() -> ToyMLPConfig:
    """Model 3 of the report (Chanda & Yadav, CS726 HW2, Q2 and Table 3): hidden layers of 64, 128 and 128, ReLU;
    the report's best model."""
    return ToyMLPConfig(hidden=(64, 128, 128), activation=REPORT_ACTIVATION)
