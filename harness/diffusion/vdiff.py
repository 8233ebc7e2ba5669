"""Continuous-time v-diffusion (Salimans & Ho 2022; Crowson's v-diffusion-pytorch), the generator maths of "Modern
Methods, Classical Constraints" (paper section 2.2; implementation notes 1.2 and 1.4 in docs/papers.md, cited below
as "spec 1.2", "spec 1.4").

Conventions, generic over the data shape: data are ``(N, *shape)``; the process is variance preserving and indexed
by the log-SNR l = log(alpha^2 / sigma^2), so alpha = sqrt(sigmoid(l)), sigma = sqrt(sigmoid(-l)) and
alpha^2 + sigma^2 = 1. Time runs from t = 0 (clean data, high l) to t = 1 (noise, low l); a schedule is a decreasing
map t -> l. Forward process and target (paper Eq. 1-2): x_t = alpha x0 + sigma eps, v = alpha eps - sigma x0, hence
x0 = alpha x_t - sigma v and eps = sigma x_t + alpha v. The model is called ``model_fn(x_t, log_snr, y)`` with
``log_snr`` a (N,) tensor (the network embeds l itself, spec 1.4) and ``y`` the class labels, or ``None`` for the
unconditional (null-class) prediction.

Classifier-free guidance follows the paper's Eq. 4, v~ = (1 + w) v_cond - w v_uncond, so w = 0 is plain conditional
sampling. v-diffusion's ``cfg_sample.py`` uses v_u + s (v_c - v_u) instead, where s = 1 is plain conditional: the
paper's w = 3 is Crowson's s = 4.

NFE is counted as network evaluations per image: a guided step costs 2 whether cond and uncond go through the network
as two calls or as one batch of 2N, an unguided step (y None, or w = 0) costs 1.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.quasirandom import SobolEngine

VModel = Callable[[Tensor, Tensor, Tensor | None], Tensor]  # model_fn(x_t, log_snr (N,), y or None) -> v_hat
Schedule = Callable[[Tensor], Tensor]  # t in [0, 1] -> log-SNR, decreasing

LOG_SNR_CLAMP = 15.0  # spec 1.4: the cosine schedule is clamped to [-15, 15] (it is infinite at t = 0 and 1)
DDPM_CROSSOVER = 0.48536712  # get_spliced_ddpm_cosine_schedule (v-diffusion-pytorch diffusion/utils.py)
COSINE_CROSSOVER = 0.80074257
LOG_LINEAR_RANGE = (10.0, -10.0)  # get_log_schedule(t, -10, 10) (spec 1.2): l from 10 at t = 0 to -10 at t = 1
T_EPS = 1e-6  # training t is kept in [T_EPS, 1 - T_EPS], away from where a schedule may be infinite
SLERP_DOT_THRESHOLD = 0.9995  # |cos| above this: the vectors are (anti)parallel and slerp falls back to lerp
DEFAULT_THRESHOLD_Q = 0.995  # Imagen's dynamic-thresholding percentile (spec 1.4, an assumption)
DEFAULT_GUIDANCE_W = 3.0  # paper section 2.2, "w = 3", in Eq. 4's convention
LOSS_WEIGHTINGS = ("mse", "sigmoid")


# ------------------------------------------------------------------------------------------------ alpha, sigma


def alpha_sigma(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) = (sqrt(sigmoid(l)), sqrt(sigmoid(-l))) for log-SNR l; alpha^2 + sigma^2 = 1."""
    return log_snr.sigmoid().sqrt(), (-log_snr).sigmoid().sqrt()


def log_snr_of(alpha: Tensor, sigma: Tensor) -> Tensor:
    """The log-SNR l = log(alpha^2 / sigma^2), the inverse of ``alpha_sigma``."""
    return 2 * (alpha.log() - sigma.log())


# ----------------------------------------------------------------------------------------------- schedules


def _f64(t: Tensor | float) -> tuple[Tensor, torch.dtype]:
    """t as float64 (schedules are computed in float64) and the dtype to return: t's, or the default float dtype."""
    t = torch.as_tensor(t)
    dtype = t.dtype if t.dtype.is_floating_point else torch.get_default_dtype()
    return t.to(torch.float64), dtype


def _cosine_raw(t: Tensor) -> Tensor:
    """-2 log tan(pi t / 2) in float64, unclamped: +inf at t = 0, about -75 at t = 1 (tan(pi/2) is finite in
    float64); t is clamped to [0, 1] first so that rounding past 1 cannot give the log of a negative number."""
    return -2 * torch.tan(t.clamp(0, 1) * (math.pi / 2)).log()


def _linear_raw(t: Tensor) -> Tensor:
    """-log expm1(1e-4 + 10 t^2) in float64: the continuous linear-beta DDPM schedule (v-diffusion
    ``get_ddpm_schedule``, returned here as log-SNR rather than cosine time)."""
    return -torch.special.expm1(1e-4 + 10 * t**2).log()


def cosine_schedule(t: Tensor | float) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021 in continuous form; alpha = cos(pi t / 2)): l = -2 log tan(pi t / 2),
    clamped to [-15, 15] (spec 1.4), so it is finite at t = 0 (l = 15) and t = 1 (l = -15). The paper's baseline."""
    t, dtype = _f64(t)
    return _cosine_raw(t).clamp(-LOG_SNR_CLAMP, LOG_SNR_CLAMP).to(dtype)


def linear_schedule(t: Tensor | float) -> Tensor:
    """Continuous linear-beta DDPM schedule: l = -log expm1(1e-4 + 10 t^2); l(0) = +9.21, l(1) = -10.00. Finite on
    [0, 1], so unclamped. Crowson's CIFAR-10 colab trains with it."""
    t, dtype = _f64(t)
    return _linear_raw(t).to(dtype)


def spliced_schedule(t: Tensor | float) -> Tensor:
    """The spliced cosine/linear-beta schedule (v-diffusion ``get_spliced_ddpm_cosine_schedule``) mapped to log-SNR.

    With T = t (1 + c - d), c = 0.80074257, d = 0.48536712: the cosine schedule at T while T < c, otherwise the
    linear schedule at T + d - c (so t = 1 maps to linear(1) = -10.00). Both sides give l = -2.2563 at the splice
    (t = 0.6174), so the schedule is continuous: cosine at low noise, linear-beta at high noise. The cosine side is
    clamped at +15 like ``cosine_schedule`` (it is infinite at t = 0); the range is [-10.00, 15].
    """
    t, dtype = _f64(t)
    big_t = t * (1 + COSINE_CROSSOVER - DDPM_CROSSOVER)
    cos_part = _cosine_raw(big_t.clamp(max=COSINE_CROSSOVER)).clamp(max=LOG_SNR_CLAMP)
    lin_part = _linear_raw(big_t + DDPM_CROSSOVER - COSINE_CROSSOVER)
    return torch.where(big_t < COSINE_CROSSOVER, cos_part, lin_part).to(dtype)


def log_linear_schedule(t: Tensor | float) -> Tensor:
    """l linear in t, from 10 at t = 0 to -10 at t = 1 (v-diffusion ``get_log_schedule``; an extra option)."""
    t, dtype = _f64(t)
    hi, lo = LOG_LINEAR_RANGE
    return (hi + (lo - hi) * t).to(dtype)


SCHEDULES: dict[str, Schedule] = {
    "cosine": cosine_schedule,
    "linear": linear_schedule,
    "spliced": spliced_schedule,
    "log_linear": log_linear_schedule,
}


def schedule(name: str) -> Schedule:
    """The schedule function registered as ``name`` in ``SCHEDULES``; an unknown name raises a ValueError."""
    if name not in SCHEDULES:
        close = difflib.get_close_matches(str(name), SCHEDULES, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"use one of {', '.join(SCHEDULES)}"
        raise ValueError(f"unknown v-diffusion schedule {name!r}; {hint}")
    return SCHEDULES[name]


def _resolve(sched: str | Schedule) -> Schedule:
    return schedule(sched) if isinstance(sched, str) else sched


# ------------------------------------------------------------------------------------------------ training


def sobol_engine(seed: int | None = None) -> SobolEngine:
    """A scrambled 1-D Sobol engine for training timesteps (paper section 2.2; Crowson's colab).

    Keep one engine for the whole run: each draw continues the sequence. To resume, rebuild it with the same seed
    and ``engine.fast_forward(points_drawn)`` (``engine.num_generated`` is the count to save).
    """
    return SobolEngine(1, scramble=True, seed=seed)


def sobol_t(n: int, engine: SobolEngine, dtype: torch.dtype = torch.float32) -> Tensor:
    """The next n quasi-random timesteps from ``engine`` as a (n,) CPU tensor, clamped to [1e-6, 1 - 1e-6].

    The clamp keeps t off exactly 0 and 1, where a schedule may be infinite (the registered ones are finite there:
    the cosine schedule is clamped). Successive blocks of 2^k draws from a fresh engine put one point in each
    interval [i / 2^k, (i + 1) / 2^k), which is what lowers the variance of the loss estimate.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of Sobol timesteps must be an integer >= 1, got {n!r}")
    t = engine.draw(n, dtype=torch.float64).reshape(n).to(dtype)
    return t.clamp(T_EPS, 1 - T_EPS)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator works for any model device)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _bcast(s: Tensor, x: Tensor) -> Tensor:
    """A per-sample (N,) tensor shaped (N, 1, ..., 1) to broadcast against x (N, *shape)."""
    return s.reshape(-1, *([1] * (x.dim() - 1)))


def _per_sample(log_snr: Tensor | float, x: Tensor) -> Tensor:
    """log_snr as a (N,) tensor on x's device and dtype (a scalar is repeated over the batch)."""
    log_snr = torch.as_tensor(log_snr, device=x.device, dtype=x.dtype)
    return x.new_full((x.shape[0],), float(log_snr)) if log_snr.dim() == 0 else log_snr


def v_loss(model_fn: VModel, x0: Tensor, y: Tensor | None, log_snr_fn: str | Schedule, t: Tensor,
           weighting: str = "mse", generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """The v-prediction loss (paper Eq. 3), a scalar: mean over samples of the per-pixel mean of (v_hat - v)^2.

    l = log_snr_fn(t) (a schedule or its name), x_t = alpha x0 + sigma eps, v = alpha eps - sigma x0 and
    v_hat = model_fn(x_t, l, y). ``weighting="mse"`` weights every sample 1 (plain MSE); ``"sigmoid"`` weights each
    sample by sigmoid(l) = alpha^2 before the batch mean, as Crowson's CIFAR-10 colab (the weights are not
    renormalised). The paper does not say which it used (spec 1.4). ``eps`` is ``noise`` if given, else drawn from
    ``generator``. ``t`` is a (N,) tensor, e.g. from ``sobol_t``; class dropout for CFG is the caller's (replace
    labels by the null class before calling).
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown v-diffusion loss weighting {weighting!r}; use 'mse' or 'sigmoid'")
    t = torch.as_tensor(t).detach().cpu()  # schedules run in float64, on the CPU (MPS has no float64)
    if t.shape != (x0.shape[0],):
        raise ValueError(f"timesteps t must have shape ({x0.shape[0]},) to match the batch, got {tuple(t.shape)}")
    log_snr = _resolve(log_snr_fn)(t).to(device=x0.device, dtype=x0.dtype)
    alpha, sigma = (_bcast(s, x0) for s in alpha_sigma(log_snr))
    if noise is None:
        noise = _randn(tuple(x0.shape), generator, x0)
    x_t = alpha * x0 + sigma * noise
    target = alpha * noise - sigma * x0
    per_sample = (model_fn(x_t, log_snr, y) - target).pow(2).flatten(1).mean(1)
    if weighting == "sigmoid":
        per_sample = per_sample * log_snr.sigmoid()
    return per_sample.mean()


# ------------------------------------------------------------------------------------------------ sampling


def _is_guided(y: Tensor | None, w: float) -> bool:
    return y is not None and w != 0


def guided_v(model_fn: VModel, x: Tensor, log_snr: Tensor | float, y: Tensor | None, w: float,
             null_y: Tensor | int | None = None) -> Tensor:
    """Classifier-free guided velocity, paper Eq. 4: (1 + w) v(x, l, y) - w v(x, l, None).

    w = 0 (or y None) is a single plain call ``model_fn(x, l, y)``. Otherwise the unconditional branch is
    ``model_fn(x, l, None)`` as a second call, or, when ``null_y`` (the null label: a tensor like y, or an int to fill
    one) is given, both branches run as one batch of 2N with labels cat(y, null_y). Either way it is 2 NFE per image.
    ``log_snr`` is a (N,) tensor or a scalar.
    """
    log_snr = _per_sample(log_snr, x)
    if not _is_guided(y, w):
        return model_fn(x, log_snr, y)
    if null_y is None:
        v_cond, v_uncond = model_fn(x, log_snr, y), model_fn(x, log_snr, None)
    else:
        null_y = torch.full_like(y, null_y) if isinstance(null_y, int) else null_y
        v = model_fn(torch.cat([x, x]), torch.cat([log_snr, log_snr]), torch.cat([y, null_y]))
        v_cond, v_uncond = v.chunk(2)
    return (1 + w) * v_cond - w * v_uncond


def _check_q(q: float) -> None:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
        raise ValueError(f"the dynamic-thresholding quantile q must be a number in (0, 1], got {q!r}")


def dynamic_threshold(x0_hat: Tensor, q: float = DEFAULT_THRESHOLD_Q) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): per sample s = max(quantile(|x0_hat|, q), 1), then
    clip(x0_hat, -s, s) / s. Samples already in [-1, 1] are unchanged (s = 1); every output lies in [-1, 1]."""
    _check_q(q)
    flat = x0_hat.detach().flatten(1).abs().float()  # quantile needs float32/64
    s = torch.quantile(flat, q, dim=1).clamp(min=1.0).to(x0_hat.dtype)
    s = _bcast(s, x0_hat)
    return torch.minimum(torch.maximum(x0_hat, -s), s) / s


@torch.no_grad()
def sample(model_fn: VModel, noise: Tensor, steps: int, schedule: str | Schedule = "cosine", eta: float = 1.0,
           y: Tensor | None = None, w: float = DEFAULT_GUIDANCE_W, threshold: float | None = None,
           generator: torch.Generator | None = None, null_y: Tensor | int | None = None) -> tuple[Tensor, int]:
    """Draw samples from starting ``noise`` (N, *shape) with the v-diffusion sampler (Crowson's ``sampling.sample``).

    The grid is t_i = 1 - i / steps, i = 0 .. steps; the model is evaluated at t_0 .. t_{steps-1} (``steps``
    evaluations, never at t = 0). At each step, with v = ``guided_v`` at l_i (Eq. 4; unguided when y is None or
    w = 0): pred = alpha_i x - sigma_i v, eps = sigma_i x + alpha_i v. With ``threshold=q``, pred is dynamically
    thresholded (``dynamic_threshold``) and eps recomputed as (x - alpha_i pred) / sigma_i (spec 1.4). Then
    ddim_sigma = eta sqrt(sigma_{i+1}^2 / sigma_i^2) sqrt(1 - alpha_i^2 / alpha_{i+1}^2),
    adj = sqrt(sigma_{i+1}^2 - ddim_sigma^2) and x = alpha_{i+1} pred + adj eps + ddim_sigma z, z ~ N(0, I) from
    ``generator``. The step to t = 0 (where sigma = 0) returns pred itself. eta = 1 is DDPM-style ancestral
    sampling (the posterior variance), eta = 0 is DDIM; eta must lie in [0, 1].

    ``schedule`` is a name in ``SCHEDULES`` or a function t -> l; alpha and sigma are computed in float64 from l
    (alpha^2 = sigmoid(l) directly, not squared roots), and the ``noise`` is used as x at t = 1 as it is (the
    registered schedules give alpha_1 < 7e-3, so x_1 ~ N(0, I) is the usual approximation). Runs under no_grad.
    Returns (x0, NFE per image): NFE = steps, or 2 steps when guided (see the module docstring). The output is not
    clamped.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of sampling steps must be an integer >= 1, got {steps!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (1 = ancestral, 0 = DDIM), got {eta!r}")
    if threshold is not None:
        _check_q(threshold)
    fn = _resolve(schedule)
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]  # t = 0 is never evaluated
    log_snr = fn(t).to(torch.float64).cpu()
    if bool(torch.isnan(log_snr).any()):
        raise ValueError("the sampling schedule returned NaN log-SNRs on the grid t = 1 .. 1/steps; check it")
    a2, s2 = log_snr.sigmoid().tolist(), (-log_snr).sigmoid().tolist()
    per_step = 2 if _is_guided(y, w) else 1
    x, nfe = noise, 0
    for i in range(steps):
        alpha, sigma = math.sqrt(a2[i]), math.sqrt(s2[i])
        v = guided_v(model_fn, x, float(log_snr[i]), y, w, null_y)
        nfe += per_step
        pred = alpha * x - sigma * v
        if threshold is not None:
            pred = dynamic_threshold(pred, threshold)
            eps = (x - alpha * pred) / sigma
        else:
            eps = sigma * x + alpha * v
        if i == steps - 1:
            return pred, nfe
        ddim_sigma = eta * math.sqrt(s2[i + 1] / s2[i]) * math.sqrt(max(1.0 - a2[i] / a2[i + 1], 0.0))
        adj = math.sqrt(max(s2[i + 1] - ddim_sigma**2, 0.0))
        x = math.sqrt(a2[i + 1]) * pred + adj * eps
        if ddim_sigma > 0:
            x = x + ddim_sigma * _randn(tuple(x.shape), generator, x)
    raise AssertionError("unreachable: the loop returns at its last step")


# ------------------------------------------------------------------------------------------- interpolation


def slerp(z0: Tensor, z1: Tensor, theta: Tensor | float) -> Tensor:
    """Spherical interpolation per sample (Shoemake 1985; the paper's [39]): with Omega the angle between the
    flattened z0[i] and z1[i], [sin((1 - theta) Omega) z0 + sin(theta Omega) z1] / sin(Omega).

    z0, z1 are (N, *shape); ``theta`` is a scalar or (N,). theta = 0 gives z0, theta = 1 gives z1, and for inputs of
    equal norm the norm is preserved. Where |cos Omega| > 0.9995 (nearly parallel, or antiparallel, where the arc is
    undefined) it falls back to the lerp (1 - theta) z0 + theta z1. Computed in float64, returned in z0's dtype.
    """
    if z0.shape != z1.shape or z0.dim() < 2:
        raise ValueError(f"slerp needs z0 and z1 of the same shape (N, *shape), got {tuple(z0.shape)} and "
                         f"{tuple(z1.shape)}")
    a, b = z0.flatten(1).double(), z1.to(z0.device).flatten(1).double()
    cos = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-300)).clamp(-1, 1)
    theta = torch.as_tensor(theta, dtype=torch.float64, device=a.device).expand(a.shape[0])[:, None]
    omega = torch.arccos(cos)[:, None]
    sin_omega = torch.sin(omega)
    near = cos.abs()[:, None] > SLERP_DOT_THRESHOLD
    safe = torch.where(near, torch.ones_like(sin_omega), sin_omega)  # no 0/0 in the branch torch.where discards
    arc = (torch.sin((1 - theta) * omega) * a + torch.sin(theta * omega) * b) / safe
    line = (1 - theta) * a + theta * b
    return torch.where(near, line, arc).reshape(z0.shape).to(z0.dtype)


def interpolation_latents(z0: Tensor, z1: Tensor, n: int) -> Tensor:
    """n latents slerped from z0 to z1 (endpoints included, theta = linspace(0, 1, n)), shape (n, *shape).

    z0 and z1 are single noise tensors of shape (*shape) without a batch dimension. Decoding them with
    ``sample(..., eta=0)`` (DDIM, deterministic) gives the paper's latent interpolations (spec 1.4).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"the number of interpolation latents must be an integer >= 2, got {n!r}")
    if z0.shape != z1.shape:
        raise ValueError(f"interpolation needs z0 and z1 of the same shape, got {tuple(z0.shape)} and "
                         f"{tuple(z1.shape)}")
    theta = torch.linspace(0, 1, n, dtype=torch.float64)
    return slerp(z0.expand(n, *z0.shape), z1.expand(n, *z1.shape), theta)
