"""One evaluation from several sampling draws: the mean of each metric, and the spread between draws (the sampling
noise of one evaluation, which the verdicts and convergence checks compare differences with)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# the distances whose spread between draws is logged as <key>_sampling_sd
NOISY = ("fid", "kid", "fd_classifier", "kd_classifier", "isc")


def sampling_seed(seed: int, draw: int) -> int:
    """The noise seed of draw ``draw`` of a trial with seed ``seed``: draw 0 is the seed every evaluation used
    before draws existed (so one draw gives the same numbers as before), later draws are far from other trials'."""
    return seed + 12345 + 1_000_003 * draw


def mean_over_draws(draws: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Numeric keys averaged over the draws (non-numeric ones, e.g. the extractor's name, from the first draw);
    with two or more draws, ``<key>_sampling_sd`` (ddof 1) for the distances in NOISY and ``sampling_draws``."""
    first = draws[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            vals = np.asarray([float(d[key]) for d in draws])
            out[key] = float(vals.mean()) if isinstance(value, float) else value
            if len(draws) > 1 and key in NOISY:
                out[f"{key}_sampling_sd"] = float(vals.std(ddof=1))
        else:
            out[key] = value
    if len(draws) > 1:
        out["sampling_draws"] = len(draws)
    return out


def evaluate_draws(k: int | None, seed: int, one: Callable[[int, int], dict[str, Any]]) -> dict[str, Any]:
    """``one(draw, noise_seed)`` for each of ``k`` (None: 1) draws, merged by ``mean_over_draws``."""
    return mean_over_draws([one(d, sampling_seed(seed, d)) for d in range(k or 1)])
