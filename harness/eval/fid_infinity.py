"""FID-infinity: the Frechet distance extrapolated to an infinite sample (Chong & Forsyth, "Effectively Unbiased
FID and Inception Score and where to find them", CVPR 2020).

FID computed from N samples is biased upward, and the bias is close to linear in 1/N for N well above the feature
dimension, so FIDs of several subset sizes, fitted with a line in 1/N, give the unbiased value as the intercept.
At the small n the CPU profiles afford (hundreds of samples), plain FID carries a bias that differs between models
and can exceed the differences being compared; FID-infinity (with its fitted slope, the bias per 1/N) shows it.

The distance itself is torch-fidelity's (the same function as the harness's FID); the fit is scipy's linregress.
The subsets are random draws without replacement (the paper uses Sobol sequences; random subsets are the simple
unbiased choice and `draws` averages their noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class FIDInfinity:
    value: float  # the intercept at 1/N = 0
    slope: float  # d FID / d (1/N): the bias at N samples is about slope / N
    stderr: float  # standard error of the intercept from the fit
    sizes: tuple[int, ...]
    fids: tuple[float, ...]  # mean FID over the draws at each size


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between two Gaussians, by torch-fidelity (as every FID in the harness)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    out = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, False)
    return float(out[KEY_METRIC_FID])


def default_sizes(n: int, points: int = 15) -> list[int]:
    """``points`` subset sizes evenly spaced from n/5 to n (the paper fits 15 sizes over a tenfold range)."""
    lo = max(2, n // 5)
    return sorted({int(round(s)) for s in np.linspace(lo, n, points)})


def fid_infinity(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, sizes: list[int] | None = None,
                 draws: int = 1, seed: int = 0) -> FIDInfinity:
    """FID-infinity of ``features`` (n x d, the generated samples' features) against reference statistics."""
    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    sizes = sorted(set(sizes or default_sizes(n)))
    if len(sizes) < 2 or sizes[0] < 2 or sizes[-1] > n:
        raise ValueError(f"FID-infinity needs at least two subset sizes between 2 and n = {n}, got {sizes}")
    rng = np.random.default_rng(seed)
    fids = []
    for size in sizes:
        vals = []
        for _ in range(draws if size < n else 1):  # the whole sample has one draw
            x = features[rng.choice(n, size, replace=False)] if size < n else features
            vals.append(frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref_mu, ref_sigma))
        fids.append(float(np.mean(vals)))
    fit = stats.linregress(1.0 / np.asarray(sizes, dtype=float), fids)
    return FIDInfinity(float(fit.intercept), float(fit.slope), float(fit.intercept_stderr), tuple(sizes),
                       tuple(fids))
