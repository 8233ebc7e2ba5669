"""The floor of a metric at the study's n: what a perfect generator scores, and what a trivial one does.

A distance between n generated samples and n reference images is never zero, even for a generator that returns
real images: two disjoint real samples of n are at a distance set by n, the feature space and the data. That
real-vs-real distance (its mean and spread over several disjoint draws) is the resolution of the metric at this n;
differences between models smaller than its spread cannot be told apart by one evaluation. For point clouds the
floor is a perfect generator (a training subset) and the ceiling a trivial one (N(0, I) in the normalised space the
models sample in). Each recipe says which reference its evaluation uses and calls these with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness.eval.draws import NOISY


@dataclass(frozen=True)
class Floor:
    reference: str  # what stood in for the generator: "real vs real", "training subset", "N(0, I)", "chance"
    metric: str  # the logged metric it calibrates (fid, kid, fd_classifier, emd_test, nll_test, accuracy, ...)
    mean: float
    sd: float  # spread over the draws (ddof 1; nan for one draw or an exact value)
    draws: int
    n: int  # samples per draw

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floors(reference: str, draws: list[dict[str, Any]], keys: tuple[str, ...], n: int) -> list[Floor]:
    out = []
    for key in keys:
        vals = np.asarray([float(d[key]) for d in draws if key in d])
        if len(vals):
            sd = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
            out.append(Floor(reference, key, float(vals.mean()), sd, len(vals), n))
    return out


def real_vs_real(distance: Callable[[torch.Tensor], dict[str, Any]], pool: torch.Tensor, n: int, draws: int,
                 seed: int = 0) -> list[Floor]:
    """``distance`` (the evaluation's own: uint8 images -> metrics, against its reference) of ``draws`` random
    samples of ``n`` real images from ``pool``, which must hold no image of the reference. Draws overlap each other
    when the pool has fewer than n * draws images, never the reference."""
    if len(pool) < n:
        raise ValueError(f"real-vs-real at n = {n} needs {n} real images beside the reference, the pool has "
                         f"{len(pool)}")
    g = torch.Generator().manual_seed(seed)
    results = [distance(pool[torch.randperm(len(pool), generator=g)[:n]]) for _ in range(draws)]
    return _floors("real vs real", results, tuple(k for k in NOISY if k in results[0]), n)


def point_floors(evaluate: Callable[[Callable[[int, torch.Generator], torch.Tensor]], dict[str, Any]],
                 train_x: torch.Tensor, n: int) -> list[Floor]:
    """The point-cloud evaluation ``evaluate(sample_fn)`` (its runs are the draws) of a perfect generator (random
    training points: the training data is the distribution the model learns) and of N(0, I)."""
    def subset(k: int, g: torch.Generator) -> torch.Tensor:
        m = len(train_x)
        idx = torch.randint(m, (k,), generator=g) if m < k else torch.randperm(m, generator=g)[:k]
        return train_x[idx].float()

    def gaussian(k: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(k, train_x.shape[1], generator=g)

    out = []
    for reference, fn in (("training subset", subset), ("N(0, I)", gaussian)):
        res = evaluate(fn)
        runs = int(res.get("runs", 1))
        for key in ("emd_test", "nll_test", "emd_train", "nll_train"):
            if key in res:
                out.append(Floor(reference, key, float(res[key]), float(res.get(f"{key}_std", float("nan"))),
                                 runs, n))
    return out


def chance(metric: str, num_classes: int, n: int) -> Floor:
    """A classifier that guesses: accuracy 1/K (exact, no draws)."""
    return Floor("chance", metric, 1.0 / num_classes, float("nan"), 0, n)
