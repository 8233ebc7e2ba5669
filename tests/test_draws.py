"""eval.sampling_seeds: one evaluation from k sampling draws (mean and sampling sd), the first draw unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.eval import image_metrics
from harness.eval.draws import mean_over_draws, sampling_seed
from harness.recipes.compression_eval import image_quality
from harness.study.schema import EvalSpec


def test_mean_over_draws_averages_and_gives_the_spread_of_distances():
    out = mean_over_draws([{"fid": 10.0, "kid": 0.1, "sample_seconds": 1.0, "n_samples": 64, "extractor": "x"},
                           {"fid": 14.0, "kid": 0.3, "sample_seconds": 3.0, "n_samples": 64, "extractor": "x"}])
    assert out["fid"] == 12.0 and out["kid"] == pytest.approx(0.2) and out["sample_seconds"] == 2.0
    assert out["fid_sampling_sd"] == pytest.approx(2.8284271) and "sample_seconds_sampling_sd" not in out
    assert out["n_samples"] == 64 and out["extractor"] == "x" and out["sampling_draws"] == 2
    one = mean_over_draws([{"fid": 10.0}])
    assert one == {"fid": 10.0}  # one draw: today's keys, nothing added


def test_image_quality_draws_k_noise_seeds_and_keeps_the_first(monkeypatch, tmp_path):
    seen = []

    def fake_distance(samples, ref, key, **kw):  # a distance that depends on the samples only
        seen.append(samples.clone())
        return {"fid": float(samples.float().mean()), "n_samples": len(samples), "extractor": "fake"}

    monkeypatch.setattr(image_metrics, "image_distance", fake_distance)

    def sample(n, g):
        return torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8), 1

    data = SimpleNamespace(x=torch.zeros(8, 1, 4, 4, dtype=torch.uint8), content_hash=lambda: "0" * 16)
    ctx = SimpleNamespace(cache_dir=tmp_path)
    ev1 = EvalSpec(n_samples=8, batch_size=4, metrics=("fid",))
    m1, tags1, s1 = image_quality(sample, ev1, data, data, ctx, seed=3)
    # draw 0 uses the noise seed every evaluation used before draws existed
    g = torch.Generator().manual_seed(3 + 12345)
    assert sampling_seed(3, 0) == 3 + 12345
    assert torch.equal(s1, torch.cat([sample(4, g)[0], sample(4, g)[0]]))
    assert "fid_sampling_sd" not in m1 and tags1 == {"harness.eval.extractor": "fake"}
    seen.clear()
    m3, _, s3 = image_quality(sample, EvalSpec(n_samples=8, batch_size=4, metrics=("fid",), sampling_seeds=3), data,
                              data, ctx, seed=3)
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1]) and torch.equal(s3, s1)
    fids = torch.tensor([float(s.float().mean()) for s in seen], dtype=torch.float64)
    assert m3["fid"] == pytest.approx(float(fids.mean())) and m3["fid_sampling_sd"] == pytest.approx(float(fids.std()))
    assert m3["sampling_draws"] == 3


def test_sampling_seeds_is_validated():
    from harness.errors import UserError
    from harness.study.spec import check_eval

    with pytest.raises(UserError, match="eval.sampling_seeds must be at least 1, got 0"):
        check_eval(EvalSpec(sampling_seeds=0), SimpleNamespace(eval_samplers=(), name="x"), "s.yaml")
