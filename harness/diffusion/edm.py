"""EDM (Karras et al. 2022) diffusion maths as used by k-diffusion v0.1.1 and the block-sharing paper.

Training: ``karras_loss`` with the soft-min-SNR weighting, noise levels from ``sample_sigmas_train``,
class dropout with ``dropout_classes``, the EMA decay schedule ``ema_decay`` (the update: harness.training.ema).
Evaluation: ``generate`` (deterministic DPM-Solver++(2M) on the Karras schedule by default) and ``denoising_loss_at``.
"spec, Training" and "spec, Evaluation" refer to the block-sharing implementation notes in docs/papers.md.

The model interface used here: ``model(x, sigma, class_labels=None, aug_cond=None)`` returns the
preconditioned denoiser D(x; sigma); ``model.inner(x_in, sigma, ...)`` the raw network F;
``model.precondition(sigma)`` returns ``(c_skip, c_out, c_in)`` each shaped (N, 1, 1, 1);
``model.sigma_data`` is the data standard deviation. ``class_labels=None`` means the null class.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

Denoise = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None]

# Training sigma range of k-diffusion's "cosine-interpolated" sampler: sigma/sigma_data in [0.002, 2000]
# (its min_value 1e-3 and max_value 1e3 with sigma_data 0.5).
TRAIN_SIGMA_RATIO_MIN = 0.002
TRAIN_SIGMA_RATIO_MAX = 2000.0
# Noise levels at which ``denoising_loss_at`` reports the held-out loss: spread over the sampler's range
# (0.01..80) around sigma_data 0.5, where the soft-min-SNR weight and sample quality are most sensitive.
EVAL_SIGMAS = (0.1, 0.5, 1.0, 2.0, 5.0)


# ----------------------------------------------------------------------------------------------- loss


def loss_weighting(sigma: Tensor, sigma_data: float, weighting: str | Callable[[Tensor], Tensor]) -> Tensor:
    """Per-sample weight w(sigma) of the F-space loss ``|F - target|^2`` (k-diffusion ``Denoiser``).

    Since ``|F - target|^2 = |D - x0|^2 / c_out^2``, each choice is a weighting of the x0-space error:
    - ``"karras"``: w = 1, the EDM weighting (x0-space weight 1/c_out^2 = (s^2 + sd^2)/(s sd)^2).
    - ``"soft-min-snr"``: w = (s sd)^2 / (s^2 + sd^2)^2 (Crowson et al. 2024), x0-space weight
      1/(s^2 + sd^2), a soft minimum of the SNR sd^2/s^2 and 1. Used by the paper (spec, Training).
    - ``"snr"``: w = sd^2 / (s^2 + sd^2), x0-space weight 1/s^2 (the epsilon-prediction loss).
    A callable is applied to sigma directly.
    """
    if callable(weighting):
        return weighting(sigma)
    sd2, s2 = sigma_data**2, sigma**2
    if weighting == "karras":
        return torch.ones_like(sigma)
    if weighting == "soft-min-snr":
        return s2 * sd2 / (s2 + sd2) ** 2
    if weighting == "snr":
        return sd2 / (s2 + sd2)
    raise ValueError(f"unknown loss weighting {weighting!r}; use 'karras', 'soft-min-snr' or 'snr'")


def karras_loss(
    model: nn.Module,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor | None = None,
    class_labels: Tensor | None = None,
    aug_cond: Tensor | None = None,
    weighting: str | Callable[[Tensor], Tensor] = "soft-min-snr",
) -> Tensor:
    """EDM training loss per sample, shape (N,) (k-diffusion ``Denoiser.loss``; spec, Training).

    x_s = x0 + sigma * noise; target = (x0 - c_skip x_s) / c_out;
    loss = mean over pixels of (F(c_in x_s, sigma) - target)^2, times w(sigma) (see ``loss_weighting``).
    ``noise`` defaults to standard normal noise from the global generator.
    """
    if noise is None:
        noise = torch.randn_like(x0)
    c_skip, c_out, c_in = model.precondition(sigma)
    x_s = x0 + noise * _bcast(sigma, x0)
    out = model.inner(x_s * c_in, sigma, class_labels=class_labels, aug_cond=aug_cond)
    target = (x0 - c_skip * x_s) / c_out
    w = loss_weighting(sigma, model.sigma_data, weighting)
    return (out - target).pow(2).flatten(1).mean(1) * w


def sample_sigmas_train(
    batch_size: int,
    sigma_data: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training noise levels, shape (B,): sigma = sigma_data * tan(theta), theta uniform on
    [atan(0.002), atan(2000)], stratified over the batch (spec, Training).

    This is k-diffusion's "cosine-interpolated" density at 32x32 (image_d = noise_d, so the shift is zero),
    with its default range sigma in [1e-3, 1e3] for sigma_data 0.5. Its median is sigma_data exactly.
    Stratification as k-diffusion's ``stratified_uniform``: u_i = (i + U_i) / B, one sample per stratum,
    returned in stratum order (not shuffled, as the reference; the loss is a mean over the batch and the
    data order is already random, so the order does not matter). Drawn in float64 on the CPU generator
    for reproducibility, returned as float32 on ``device``.
    """
    u = (torch.arange(batch_size, dtype=torch.float64) + torch.rand(batch_size, generator=generator,
                                                                      dtype=torch.float64)) / batch_size
    lo, hi = math.atan(TRAIN_SIGMA_RATIO_MIN), math.atan(TRAIN_SIGMA_RATIO_MAX)
    sigma = sigma_data * torch.tan(lo + u * (hi - lo))
    return sigma.to(device=device, dtype=torch.float32)


def dropout_classes(labels: Tensor, num_classes: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by the null class ``num_classes`` with probability p (spec: p = 0.1).

    Returns a new tensor; as k-diffusion's train loop (``rand < p`` masked to ``num_classes``).
    """
    drop = torch.rand(labels.shape, generator=generator).to(labels.device) < p
    return labels.masked_fill(drop, num_classes)


# ------------------------------------------------------------------------------------------------ EMA


def ema_decay(step: int, power: float = 0.6667, max_decay: float = 0.9999) -> float:
    """EMA decay at optimiser step ``step`` (0-based): min(max_decay, 1 - (1 + step)^-power).

    k-diffusion ``EMAWarmup`` (inv_gamma 1, min 0) with the reference config's power 0.6667 (spec, Training):
    step 0 gives 0, so the first update copies the model.
    """
    return min(max_decay, 1.0 - (1.0 + step) ** -power)


@torch.no_grad()


def karras_sigmas(
    n: int, sigma_min: float = 0.01, sigma_max: float = 80.0, rho: float = 7.0, device: torch.device | str | None = None
) -> Tensor:
    """Karras et al. (2022) schedule: n sigmas from sigma_max down to sigma_min, rho-spaced, then 0 (n + 1)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


def _bcast(s: Tensor | float, x: Tensor) -> Tensor:
    """Per-sample (N,) or scalar sigma broadcastable against x (N, ...)."""
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    return s.reshape(s.shape + (1,) * (x.ndim - s.ndim)) if s.ndim else s


def _call(denoise: Denoise, x: Tensor, sigma: float) -> Tensor:
    return denoise(x, x.new_full((x.shape[0],), sigma))


@torch.no_grad()
def sample_euler(denoise: Denoise, x_T: Tensor, sigmas: Tensor, callback: Callback | None = None) -> tuple[Tensor, int]:
    """Euler steps on the probability-flow ODE dx/ds = (x - D(x; s)) / s (Karras Alg. 2, no churn).

    Returns (x0, NFE); NFE = len(sigmas) - 1.
    """
    x, nfe, s = x_T, 0, sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = _call(denoise, x, s[i])
        nfe += 1
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s[i], "denoised": denoised})
        x = x + (x - denoised) / s[i] * (s[i + 1] - s[i])
    return x, nfe


@torch.no_grad()
def sample_heun(denoise: Denoise, x_T: Tensor, sigmas: Tensor, callback: Callback | None = None) -> tuple[Tensor, int]:
    """Heun's second-order method (Karras Alg. 2, no churn); the final step to sigma = 0 is Euler.

    Returns (x0, NFE); NFE = 2 (len(sigmas) - 1) - 1 when the schedule ends at 0.
    """
    x, nfe, s = x_T, 0, sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = _call(denoise, x, s[i])
        nfe += 1
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s[i], "denoised": denoised})
        d = (x - denoised) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - _call(denoise, x_2, s[i + 1])) / s[i + 1]
            nfe += 1
            x = x + (d + d_2) / 2 * dt
    return x, nfe


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoise, x_T: Tensor, sigmas: Tensor, callback: Callback | None = None
) -> tuple[Tensor, int]:
    """Deterministic DPM-Solver++(2M) (Lu et al. 2022), k-diffusion's formulation (spec, Evaluation).

    In t = -log(sigma), h = t_next - t: x_next = (s_next / s) x - expm1(-h) D', where D' is the current
    denoised for the first step and for the step to sigma = 0 (where x_next = D), and otherwise the
    second-order extrapolation D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1} with r = h_{i-1} / h_i.
    Returns (x0, NFE); NFE = len(sigmas) - 1.
    """
    x, nfe, s = x_T, 0, sigmas.tolist()
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = _call(denoise, x, s[i])
        nfe += 1
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s[i], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised  # limit of the update as t_next -> inf
            continue
        h = math.log(s[i]) - math.log(s[i + 1])
        if old_denoised is None:
            d_prime = denoised
        else:
            r = h_last / h
            d_prime = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d_prime
        old_denoised, h_last = denoised, h
    return x, nfe


SAMPLERS: dict[str, Callable[..., tuple[Tensor, int]]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's previous mode on exit."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def generate(
    model: nn.Module,
    n: int,
    shape: Sequence[int],
    num_classes: int,
    steps: int = 50,
    sampler: str = "dpmpp_2m",
    sigma_min: float = 0.01,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    class_labels: Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor | None, int]:
    """Draw n samples of ``shape`` (C, H, W) from ``model`` (spec, Evaluation: pass the EMA model).

    Class-conditional without guidance when num_classes > 0: labels uniform in [0, num_classes) drawn
    from ``generator`` unless ``class_labels`` are given; num_classes == 0 passes None (the null class).
    x_T = sigma_max * randn, then ``steps`` steps of ``sampler`` on ``karras_sigmas(steps, ...)``.
    Noise and labels are drawn on the CPU from ``generator`` (reproducible on any device); the model runs
    in eval mode under no_grad, in batches of ``batch_size``; its train/eval modes are restored after.
    Returns (images clamped to [-1, 1] on the CPU, labels on the CPU or None, NFE per sample).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    device = torch.device(device) if device is not None else _model_device(model)
    if class_labels is not None:
        if len(class_labels) != n:
            raise ValueError(f"generate: got {len(class_labels)} class labels for n={n} samples")
        labels = class_labels.detach().cpu().long()
    elif num_classes > 0:
        labels = torch.randint(0, num_classes, (n,), generator=generator)
    else:
        labels = None
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=device)
    out, nfe = [], 0
    with _eval_mode(model), torch.no_grad():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x_T = (torch.randn((b, *shape), generator=generator) * sigma_max).to(device)
            y = labels[start:start + b].to(device) if labels is not None else None

            def denoise(x: Tensor, sigma: Tensor, y: Tensor | None = y) -> Tensor:
                return model(x, sigma, class_labels=y)

            x0, nfe = SAMPLERS[sampler](denoise, x_T, sigmas)
            out.append(x0.clamp(-1, 1).cpu())
    images = torch.cat(out) if out else torch.empty((0, *shape))
    return images, labels, nfe


@torch.no_grad()
def denoising_loss_at(
    model: nn.Module,
    x0: Tensor,
    sigmas: Sequence[float] = EVAL_SIGMAS,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: str = "soft-min-snr",
    batch_size: int = 256,
) -> dict[float, float]:
    """Held-out denoising loss: {sigma: mean ``karras_loss``} at fixed noise levels (default ``EVAL_SIGMAS``).

    The noise comes from ``generator`` (default: a fresh generator seeded 0, so repeated evaluations of
    different checkpoints see the same noise); no augmentation (aug_cond None). The model runs in eval
    mode and its modes are restored. With the default soft-min-SNR weighting the value equals the x0-space
    MSE |D - x0|^2 / (s^2 + sd^2), i.e. the denoiser error relative to the noisy input's variance.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    device = x0.device
    result = {}
    with _eval_mode(model):
        for s in sigmas:
            total = 0.0
            for start in range(0, len(x0), batch_size):
                xb = x0[start:start + batch_size]
                noise = torch.randn(xb.shape, generator=generator).to(device=device, dtype=xb.dtype)
                yb = class_labels[start:start + batch_size] if class_labels is not None else None
                sig = torch.full((len(xb),), float(s), device=device, dtype=xb.dtype)
                total += karras_loss(model, xb, sig, noise, class_labels=yb, weighting=weighting).sum().item()
            result[float(s)] = total / max(len(x0), 1)
    return result
