"""Discrete DDPM (Ho et al. 2020): beta schedules, the forward process, the epsilon-MSE loss and ancestral sampling.

Written for the CS726 HW2 toy study (docs/papers.md, spec 3.4; "spec N.N" below refers to those notes) and generic over
the data shape, so an image model can share it: data are ``(N, *shape)`` and the model is called ``model(x_t, t)``
with ``t`` a long tensor ``(N,)`` of timestep indices.

Index convention (0-based, as in the starter's ``t`` uniform on {0 .. T-1}): ``betas[i]`` is the paper's beta_{i+1},
``alpha_bar[i] = prod_{j <= i} (1 - betas[j])`` is the paper's alpha_bar_{i+1}. The model sees the index ``i``;
``q_sample(x0, i)`` draws x_{i+1} in paper notation; sampling starts at ``x ~ N(0, I)`` (the paper's x_T) and
applies the reverse step for i = T-1 .. 0, adding no noise at i = 0.

Note that with the homework's defaults (T = 50, beta from 1e-5 to 1.28e-2) alpha_bar at T is ~0.73: the forward
process does not reach N(0, I), so sampling from N(0, I) starts off the marginal. The harness reproduces that
setting rather than correcting it (it is part of what the report's T ablation measures).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

BETA_SCHEDULES = ("linear", "scaled_linear", "sigmoid", "cosine", "sech")
VARIANCES = ("beta", "posterior")
DEFAULT_T = 50  # starter train.py --n_steps
DEFAULT_LBETA = 1e-5  # starter train.py --lbeta
DEFAULT_UBETA = 1.28e-2  # starter train.py --ubeta
COSINE_S = 0.008  # Nichol & Dhariwal 2021, eq. 17
COSINE_MAX_BETA = 0.999  # Nichol & Dhariwal 2021: clip so the last step is not singular
SECH_K = 4.0  # our sech schedule's steepness (spec 3.4)
SIGMOID_RANGE = 6.0  # sigmoid schedule evaluated on linspace(-6, 6, T) (spec 3.4)

EpsModel = Callable[[Tensor, Tensor], Tensor]  # model(x_t, t) -> eps_hat, t a long tensor (N,)


MAX_T = 1_000_000  # far beyond any discrete DDPM (papers use 10-4000); keeps a typo from allocating gigabytes


def _check_settings(name: str, T: int, lbeta: float, ubeta: float) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= MAX_T:
        raise ValueError(f"the number of diffusion steps T must be an integer from 1 to {MAX_T:,}, got {T!r}")
    if name not in BETA_SCHEDULES:
        close = difflib.get_close_matches(str(name), BETA_SCHEDULES, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"use one of {', '.join(BETA_SCHEDULES)}"
        raise ValueError(f"unknown beta schedule {name!r}; {hint}")
    for key, value in (("lbeta", lbeta), ("ubeta", ubeta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{key} must be a number in the open interval (0, 1), got {value!r}")


def beta_schedule(name: str, T: int, lbeta: float = DEFAULT_LBETA, ubeta: float = DEFAULT_UBETA) -> Tensor:
    """The betas of schedule ``name`` as a (T,) float64 tensor; entry i is beta_{i+1}, i.e. t = 1..T (spec 3.4).

    - ``linear``: linspace(lbeta, ubeta, T).
    - ``scaled_linear``: linspace(sqrt(lbeta), sqrt(ubeta), T) ** 2.
    - ``sigmoid``: lbeta + (ubeta - lbeta) * sigmoid(linspace(-6, 6, T)); its ends are within 0.25% of the range
      from lbeta and ubeta.
    - ``cosine`` (Nichol & Dhariwal 2021): alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2),
      s = 0.008, beta_t = min(1 - alpha_bar(t)/alpha_bar(t-1), 0.999). It ignores lbeta and ubeta (they are still
      validated), and its last beta is the 0.999 clip, so alpha_bar at T is ~0.
    - ``sech`` (hyperbolic secant): there is no standard definition and the report gives none; **ours** is
      beta_t = lbeta + (ubeta - lbeta) * (1 - sech(k t / T)), k = 4, t = 1..T: flat at the start, saturating at
      lbeta + 0.96 (ubeta - lbeta) at t = T.

    ``lbeta > ubeta`` is accepted and gives a *decreasing* schedule (beta runs from lbeta at t = 1 to ubeta at
    t = T): that is what ``linspace(lbeta, ubeta, T)`` does in a homework implementation, and the report's Table 8
    ("lbeta=1.28e-2 ubeta=1e-5", EMD 132 against 76.59 for the default 1e-5/1.28e-2 in Table 7) only reads as a
    distinct run that way; swapping would make that row the default. ``lbeta == ubeta`` gives a constant schedule.

    Raises ``ValueError`` for T < 1, an unknown name, or lbeta/ubeta outside (0, 1).
    """
    _check_settings(name, T, lbeta, ubeta)
    f64 = torch.float64
    if name == "linear":
        return torch.linspace(lbeta, ubeta, T, dtype=f64)
    if name == "scaled_linear":
        return torch.linspace(math.sqrt(lbeta), math.sqrt(ubeta), T, dtype=f64) ** 2
    if name == "sigmoid":
        return lbeta + (ubeta - lbeta) * torch.sigmoid(torch.linspace(-SIGMOID_RANGE, SIGMOID_RANGE, T, dtype=f64))
    if name == "cosine":
        t = torch.arange(T + 1, dtype=f64)  # 0..T
        f = torch.cos((t / T + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=COSINE_MAX_BETA)
    t = torch.arange(1, T + 1, dtype=f64)  # sech
    return lbeta + (ubeta - lbeta) * (1 - 1 / torch.cosh(SECH_K * t / T))


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like_device, dtype) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator works for any model device)."""
    device = generator.device if generator is not None else like_device
    return torch.randn(shape, generator=generator, device=device, dtype=dtype).to(like_device)


class DDPM:
    """A discrete diffusion process of T steps: ``DDPM(T, schedule, lbeta, ubeta)`` or ``DDPM.from_betas(betas)``.

    Holds ``betas``, ``alphas``, ``alpha_bar`` (and ``alpha_bar_prev``) as float64 (T,) tensors on the CPU; every
    use gathers the needed entries and casts them to the data's device and dtype (float32 in practice), so the
    products are computed once in float64. A plain class rather than an ``nn.Module``: it has no parameters and
    nothing to checkpoint beyond (T, schedule, lbeta, ubeta), which the trial config records.
    """

    def __init__(self, T: int = DEFAULT_T, schedule: str = "linear", lbeta: float = DEFAULT_LBETA,
                 ubeta: float = DEFAULT_UBETA):
        betas = beta_schedule(schedule, T, lbeta, ubeta)  # validates first
        self.schedule, self.lbeta, self.ubeta = schedule, float(lbeta), float(ubeta)
        self._set_betas(betas)

    @classmethod
    def from_betas(cls, betas: Tensor) -> DDPM:
        """A process with explicit betas (entry i is beta_{i+1}); each must lie in (0, 1)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("explicit betas must be a non-empty sequence of numbers in the open interval (0, 1)")
        self = cls.__new__(cls)
        self.schedule, self.lbeta, self.ubeta = "custom", float(betas[0]), float(betas[-1])
        self._set_betas(betas)
        return self

    def _set_betas(self, betas: Tensor) -> None:
        self.T = betas.numel()
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([betas.new_ones(1), self.alpha_bar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) variance, beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (Ho
        # et al. 2020, eq. 7); it is 0 at the first step, where no noise is added anyway.
        self.posterior_variance = (1 - self.alpha_bar_prev) / (1 - self.alpha_bar) * betas

    def __repr__(self) -> str:
        return f"DDPM(T={self.T}, schedule={self.schedule!r}, lbeta={self.lbeta:g}, ubeta={self.ubeta:g})"

    # ------------------------------------------------------------------------------------------------ helpers

    def _at(self, values: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """values[t] cast to x's device/dtype, shaped (N, 1, ..., 1) to broadcast over x."""
        out = values.to(x.device)[t.to(x.device)].to(x.dtype)
        return out.reshape(-1, *([1] * (x.dim() - 1)))

    def _timesteps(self, t: Tensor | int, n: int, device) -> Tensor:
        t = torch.as_tensor(t, device=device)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers in 0..{self.T - 1}, got dtype {t.dtype}")
        t = t.long().expand(n) if t.dim() == 0 else t.long()
        if t.shape != (n,):
            raise ValueError(f"timesteps must have shape ({n},) to match the batch, got {tuple(t.shape)}")
        if n and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"timesteps must lie in 0..{self.T - 1} (0-based), got {int(t.min())}..{int(t.max())}")
        return t

    # --------------------------------------------------------------------------------------- forward and loss

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) noise, with t 0-based (paper x_{t+1}); noise is
        drawn from ``generator`` when not given."""
        t = self._timesteps(t, x0.shape[0], x0.device)
        if noise is None:
            noise = _randn(tuple(x0.shape), generator, x0.device, x0.dtype)
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def draw(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """What :meth:`loss` draws for a batch of ``n`` samples of ``shape``, in its order: t uniform on
        {0 .. T-1} (n,), then eps ~ N(0, I) (n, *shape) of ``dtype``, both on the generator's device (``device``
        without a generator). A data-parallel recipe draws them for the global batch and passes each rank's slice
        to ``loss``, so any number of workers trains with the randomness of one."""
        where = generator.device if generator is not None else device
        t = torch.randint(0, self.T, (n,), generator=generator, device=where)
        noise = torch.randn((n, *shape), generator=generator, device=where, dtype=dtype)
        return t, noise

    def loss(self, model: EpsModel, x0: Tensor, generator: torch.Generator | None = None,
             t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """The simple epsilon loss (Ho et al. 2020, eq. 14): mean over all elements of (eps_hat(x_t, t) - eps)^2,
        with t uniform on {0 .. T-1} and eps ~ N(0, I), both drawn from ``generator`` as :meth:`draw` draws them
        (t first) unless given."""
        n = x0.shape[0]
        if t is None and noise is None:
            t, noise = self.draw(n, tuple(x0.shape[1:]), generator, x0.device, x0.dtype)
        elif t is None:
            device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.T, (n,), generator=generator, device=device)
        t = self._timesteps(t, n, x0.device)
        if noise is None:
            noise = _randn(tuple(x0.shape), generator, x0.device, x0.dtype)
        noise = noise.to(x0.device)
        eps_hat = model(self.q_sample(x0, t, noise), t)
        return torch.mean((eps_hat - noise) ** 2)

    # ---------------------------------------------------------------------------------------------- sampling

    def p_sample(self, model: EpsModel, x: Tensor, i: int, generator: torch.Generator | None = None,
                 variance: str = "beta") -> Tensor:
        """One ancestral step from index i to i-1 (paper x_{i+1} -> x_i):
        mean = (x - beta/sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha), plus sigma z with sigma^2 = beta
        (``variance="beta"``) or the posterior beta~ (``"posterior"``), and no noise at i = 0."""
        if variance not in VARIANCES:
            raise ValueError(f"unknown sampling variance {variance!r}; use 'beta' or 'posterior'")
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        eps_hat = model(x, t)
        beta, alpha, ab = (self._at(v, t, x) for v in (self.betas, self.alphas, self.alpha_bar))
        mean = (x - beta / (1 - ab).sqrt() * eps_hat) / alpha.sqrt()
        if i == 0:
            return mean
        var = beta if variance == "beta" else self._at(self.posterior_variance, t, x)
        return mean + var.sqrt() * _randn(tuple(x.shape), generator, x.device, x.dtype)

    @torch.no_grad()
    def sample(self, model: EpsModel, n: int, shape: tuple[int, ...] | int, generator: torch.Generator | None = None,
               return_trajectory: bool = False, variance: str = "beta", device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Ancestral sampling of ``n`` samples of shape ``shape``: x ~ N(0, I), then T reverse steps.

        Returns the samples ``(n, *shape)``, or ``(x, trajectory)`` where trajectory is the list of the T states
        after each reverse step (paper x_{T-1}, ..., x_0; the last one is x), as the starter's
        ``sample(return_intermediate=True)``. The device defaults to the model's; the model's train/eval mode is
        left to the caller. All randomness comes from ``generator`` when given.
        """
        if variance not in VARIANCES:
            raise ValueError(f"unknown sampling variance {variance!r}; use 'beta' or 'posterior'")
        if device is None:
            params = model.parameters() if isinstance(model, nn.Module) else iter(())
            device = next((p.device for p in params), torch.device("cpu"))
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        x = _randn((n, *shape), generator, torch.device(device), dtype)
        trajectory = []
        for i in reversed(range(self.T)):
            x = self.p_sample(model, x, i, generator, variance)
            if return_trajectory:
                trajectory.append(x.clone())
        return (x, trajectory) if return_trajectory else x
