"""Score-based generative modelling with the VE SDE (Song et al. 2021), as Song's score-SDE tutorial runs it:
denoising score matching and three samplers (Euler-Maruyama, predictor-corrector, probability-flow ODE), each
returning the number of score evaluations (NFE) it spent.

VE SDE dx = sigma^t dw on t in [0, 1]: marginal std(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma)), diffusion
g(t) = sigma^t. The tutorial uses sigma = 25, eps = 1e-5 as the smallest time, 500 sampler steps, snr 0.16 for the
Langevin corrector and RK45 with rtol = atol = 1e-5 for the ODE.

The model is called ``score(x, t)`` with t a float (N,) tensor; the zoo's score networks already divide their
output by std(t), as the tutorial's ScoreNet does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from zoo.score_net import diffusion_coeff as _diffusion_coeff
from zoo.score_net import marginal_prob_std as _marginal_prob_std

ScoreFn = Callable[[Tensor, Tensor], Tensor]
EPS = 1e-5  # the tutorial's smallest time: the score is singular at t = 0


def marginal_prob_std(t: Tensor | float, sigma: float = 25.0) -> Tensor:
    """std of p_0t(x(t) | x(0)) for the VE SDE (the score network's own formula, zoo.score_net)."""
    return _marginal_prob_std(torch.as_tensor(t, dtype=torch.float32), sigma)


def diffusion_coeff(t: Tensor | float, sigma: float = 25.0) -> Tensor:
    """g(t) = sigma^t."""
    return _diffusion_coeff(torch.as_tensor(t, dtype=torch.float32), sigma)


def dsm_draws(n: int, shape: tuple[int, ...], eps: float = EPS,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """What :func:`dsm_loss` draws for a batch of ``n`` samples of ``shape``, in its order, on the CPU: t ~ U(eps, 1)
    (n,), then z ~ N(0, I) (n, *shape). A data-parallel recipe draws them for the global batch and passes each
    rank's slice to ``dsm_loss``, so any number of workers trains with the randomness of one."""
    t = torch.rand(n, generator=generator) * (1.0 - eps) + eps
    z = torch.randn((n, *shape), generator=generator)
    return t, z


def dsm_loss(score: ScoreFn, x: Tensor, sigma: float = 25.0, eps: float = EPS,
             generator: torch.Generator | None = None, t: Tensor | None = None,
             noise: Tensor | None = None) -> Tensor:
    """Denoising score matching (the tutorial's ``loss_fn``): t ~ U(eps, 1), x_t = x + std(t) z, and
    mean over the batch of sum over pixels of (score(x_t, t) std(t) + z)^2. ``t`` (N,) and ``noise`` (z, shaped
    like x) are drawn from ``generator`` as :func:`dsm_draws` does unless given."""
    n = x.shape[0]
    if t is None and noise is None:
        t, noise = dsm_draws(n, tuple(x.shape[1:]), eps, generator)
    elif t is None or noise is None:
        raise ValueError("dsm_loss takes both t and noise, or neither (they are drawn together, t first)")
    t, z = t.to(x.device), noise.to(x.device)
    std = marginal_prob_std(t, sigma).to(x.device).view(n, *([1] * (x.dim() - 1)))
    s = score(x + z * std, t)
    return torch.mean(torch.sum((s * std + z) ** 2, dim=tuple(range(1, x.dim()))))


def _start(n: int, shape: tuple[int, ...], sigma: float, generator, device) -> Tensor:
    return (torch.randn((n, *shape), generator=generator) * marginal_prob_std(torch.ones(()), sigma)).to(device)


@torch.no_grad()
def euler_maruyama(score: ScoreFn, n: int, shape: tuple[int, ...], steps: int = 500, sigma: float = 25.0,
                   eps: float = 1e-3, generator: torch.Generator | None = None, device="cpu") -> tuple[Tensor, int]:
    """Reverse-time SDE with Euler-Maruyama from t = 1 to eps; returns the last mean (no noise on the final step)."""
    ts = torch.linspace(1.0, eps, steps)
    dt = float(ts[0] - ts[1])
    x = _start(n, shape, sigma, generator, device)
    mean = x
    for t in ts:
        tb = torch.full((n,), float(t), device=device)
        g = diffusion_coeff(t, sigma).item()
        mean = x + g**2 * score(x, tb) * dt
        x = mean + math.sqrt(dt) * g * torch.randn(x.shape, generator=generator).to(device)
    return mean, steps


@torch.no_grad()
def predictor_corrector(score: ScoreFn, n: int, shape: tuple[int, ...], steps: int = 500, snr: float = 0.16,
                        sigma: float = 25.0, eps: float = 1e-3, generator: torch.Generator | None = None,
                        device="cpu") -> tuple[Tensor, int]:
    """One Langevin corrector step (step size from the signal-to-noise ratio) then one Euler-Maruyama predictor step
    per time; 2 score evaluations per step."""
    ts = torch.linspace(1.0, eps, steps)
    dt = float(ts[0] - ts[1])
    x = _start(n, shape, sigma, generator, device)
    mean = x
    dims = tuple(range(1, len(shape) + 1))
    for t in ts:
        tb = torch.full((n,), float(t), device=device)
        grad = score(x, tb)
        grad_norm = torch.linalg.vector_norm(grad, dim=dims).mean()
        noise_norm = math.sqrt(float(np.prod(shape)))
        step = 2 * (snr * noise_norm / grad_norm) ** 2
        x = x + step * grad + torch.sqrt(2 * step) * torch.randn(x.shape, generator=generator).to(device)
        g = diffusion_coeff(t, sigma).item()
        mean = x + g**2 * score(x, tb) * dt
        x = mean + math.sqrt(dt) * g * torch.randn(x.shape, generator=generator).to(device)
    return mean, 2 * steps


@torch.no_grad()
def probability_flow_ode(score: ScoreFn, n: int, shape: tuple[int, ...], sigma: float = 25.0, eps: float = 1e-3,
                         rtol: float = 1e-5, atol: float = 1e-5, generator: torch.Generator | None = None,
                         device="cpu") -> tuple[Tensor, int]:
    """dx/dt = -0.5 g(t)^2 score(x, t) from t = 1 to eps with scipy's adaptive RK45 (as the tutorial); NFE is the
    solver's function-evaluation count."""
    from scipy.integrate import solve_ivp

    x = _start(n, shape, sigma, generator, device)
    full = (n, *shape)

    def f(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(y, dtype=torch.float32, device=device).reshape(full)
        tb = torch.full((n,), t, device=device)
        return (-0.5 * float(sigma ** (2 * t)) * score(xt, tb)).cpu().double().numpy().reshape(-1)

    sol = solve_ivp(f, (1.0, eps), x.cpu().double().numpy().reshape(-1), rtol=rtol, atol=atol, method="RK45")
    out = torch.as_tensor(sol.y[:, -1], dtype=torch.float32, device=device).reshape(full)
    return out, int(sol.nfev)


SAMPLERS = {"euler_maruyama": euler_maruyama, "pc": predictor_corrector, "ode": probability_flow_ode}
