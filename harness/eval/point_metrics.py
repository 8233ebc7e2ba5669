"""Sample-quality metrics of the CS 726 (2023) DDPM homework, computed exactly as its eval.py / eval_utils.py do.

- EMD: optimal 1-to-1 matching cost (Euclidean ground distance, *not* divided by n) between 128 generated and 128
  real points. The homework uses pyemd on unit-mass signatures, which equals scipy's linear_sum_assignment cost.
- NLL: -log of the mean, over generated points, of a Gaussian-kernel density of the real set (temperature 0.1),
  including the homework's quirks (see `gaussian_nll`).

All metrics work in the normalised space of `harness.training.point_clouds` (train-statistics z-scores), as
eval.py does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from harness.training.point_clouds import PointData

Points = torch.Tensor | np.ndarray
SampleFn = Callable[[int, torch.Generator], torch.Tensor]


def _f64(a: Points) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (N, d) point set, got shape {a.shape}")
    return a.astype(np.float64)


def emd(a: Points, b: Points) -> float:
    """Total Euclidean cost of the optimal one-to-one matching of two equal-size sets (NaN if a value is not finite)."""
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape:
        raise ValueError(f"emd needs two sets of the same shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")  # a diverged sampler; linear_sum_assignment would raise on a non-finite cost matrix
    cost = cdist(a, b)  # (n, n) Euclidean
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


def emd_indices(n_generated: int, n: int = 128, rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """eval.py's `np.random.choice(np.arange(len(gendata)), size=n, replace=False)`, from a seeded Generator."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.Generator(np.random.PCG64(rng))
    return rng.choice(n_generated, size=n, replace=False)


def emd_subsample(
    generated: Points,
    real: Points,
    n: int = 128,
    rng: np.random.Generator | int | None = 0,
    idx: np.ndarray | None = None,
) -> float:
    """EMD between `generated[idx]` and `real[idx]`, the *same* indices drawn from range(len(generated)).

    This is eval.py's logic: one index draw per run serves both test and train, so against train only the first
    len(generated) (= len(test)) train points can ever be picked. `idx` (from `emd_indices`) overrides `n` and `rng`.
    """
    generated, real = _f64(generated), _f64(real)
    if len(real) < len(generated):
        raise ValueError(
            f"emd_subsample indexes real by range(len(generated)); real has {len(real)} < {len(generated)}"
        )
    idx = emd_indices(len(generated), n, rng) if idx is None else np.asarray(idx)
    return emd(real[idx], generated[idx])


def gaussian_nll(real: Points, generated: Points, temperature: float = 0.1, chunk_elems: int = 1 << 22) -> float:
    """NLL = -log( mean_i (1/N) sum_j (2 pi T)^(-d/2) exp(-|g_i - x_j|^2 / (4T)) ), as eval_utils.get_nll.

    Quirks kept for comparability: the exponent -0.5 |.|^2 / (2T) is a kernel of variance 2T while the normaliser is
    that of variance T, and it is the log of the mean over generated points, not the mean of logs. Computed in float64
    as one log-sum-exp over all pairs, in chunks of generated rows (about `chunk_elems` pairs, 32 MB, at a time).
    """
    x = torch.from_numpy(_f64(real))
    g = torch.from_numpy(_f64(generated))
    if x.shape[1] != g.shape[1]:
        raise ValueError(f"gaussian_nll needs sets of the same dimension, got {x.shape[1]} and {g.shape[1]}")
    d = x.shape[1]
    x2 = (x * x).sum(1)  # (N,)
    rows = max(1, chunk_elems // max(1, len(x)))
    parts = []
    for i in range(0, len(g), rows):
        gi = g[i : i + rows]
        sq = ((gi * gi).sum(1, keepdim=True) + x2 - 2.0 * gi @ x.T).clamp_min_(0.0)  # (rows, N) squared distances
        parts.append(torch.logsumexp(sq.mul_(-1.0 / (4.0 * temperature)).flatten(), 0))
    log_sum = torch.logsumexp(torch.stack(parts), 0).item()
    log_mean = log_sum - math.log(len(g)) - math.log(len(x)) - 0.5 * d * math.log(2.0 * math.pi * temperature)
    return -log_mean


def evaluate_points(
    sample_fn: SampleFn, train: PointData, test: PointData, runs: int = 3, emd_n: int = 128, seed: int = 0
) -> dict[str, float | int]:
    """eval.py's protocol: per run, sample n = len(test) points and score EMD and NLL against test and train.

    `sample_fn(n, generator)` returns an (n, 3) tensor in the normalised space of `train`; its torch generator is
    seeded with `seed` once and shared by the runs. EMD indices come from a PCG64(seed) NumPy Generator, one draw per
    run shared by test and train. NLL uses every test point, or every train point (not as many as test), against the
    n generated points, as eval.py does. Returns the mean and sample std (ddof=1; NaN for one run) over runs.
    """
    n = len(test)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    scores: dict[str, list[float]] = {"emd_test": [], "emd_train": [], "nll_test": [], "nll_train": []}
    for _ in range(runs):
        g = sample_fn(n, gen)
        if tuple(g.shape) != (n, 3):
            raise ValueError(f"sample_fn({n}, generator) returned shape {tuple(g.shape)}, expected ({n}, 3)")
        idx = emd_indices(n, emd_n, rng)
        scores["emd_test"].append(emd_subsample(g, test.x, idx=idx))
        scores["emd_train"].append(emd_subsample(g, train.x, idx=idx))
        scores["nll_test"].append(gaussian_nll(test.x, g))
        scores["nll_train"].append(gaussian_nll(train.x, g))
    out: dict[str, float | int] = {}
    for key, vals in scores.items():
        out[key] = float(np.mean(vals))
        out[f"{key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    out["n_generated"], out["runs"] = n, runs
    return out
