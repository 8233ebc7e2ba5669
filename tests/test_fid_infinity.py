"""FID-infinity on Gaussian features whose Frechet distance is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from harness.eval.fid_infinity import default_sizes, fid_infinity, frechet_distance


def _case(d: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    mu1, s1 = np.zeros(d), np.eye(d)
    mu2, s2 = np.full(d, 0.1), a @ a.T + 0.5 * np.eye(d)
    true = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))
    return rng, mu1, s1, mu2, s2, true


def test_frechet_distance_is_the_closed_form():
    _, mu1, s1, mu2, s2, true = _case(d=8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(true, rel=1e-6)


def test_fid_infinity_recovers_the_closed_form_distance_where_fid_at_256_is_biased():
    rng, mu1, s1, mu2, s2, true = _case()
    x = rng.normal(size=(16384, len(mu2))) @ np.linalg.cholesky(s2).T + mu2
    inf = fid_infinity(x, mu1, s1, sizes=list(np.linspace(256, len(x), 15).astype(int)), draws=3)
    fid_256 = frechet_distance(x[:256].mean(0), np.cov(x[:256], rowvar=False), mu1, s1)
    assert abs(inf.value / true - 1) < 0.02
    assert abs(fid_256 / true - 1) > 0.02 + abs(inf.value / true - 1)  # plain FID at n = 256 is biased by more
    assert inf.slope > 0  # the bias is upward and shrinks with N
    assert inf.fids[0] > inf.fids[-1]


def test_sizes_are_checked():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="two subset sizes"):
        fid_infinity(x, np.zeros(2), np.eye(2), sizes=[5])
    with pytest.raises(ValueError):
        fid_infinity(x, np.zeros(2), np.eye(2), sizes=[5, 11])
    assert default_sizes(256)[0] == 51 and default_sizes(256)[-1] == 256 and len(default_sizes(256)) == 15
