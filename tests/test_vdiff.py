"""Tests of the continuous-time v-diffusion maths (harness/diffusion/vdiff.py) against
docs/papers.md, spec 1.2 and 1.4, and the paper's section 2.2 (Eq. 1-4).

The sampler is checked end to end with exact v-models. For data N(mu, s^2 I), x_t = alpha x0 + sigma eps has
E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu), and the exact velocity is
E[v | x_t] = (alpha x_t - E[x0 | x_t]) / sigma. Its probability-flow ODE maps x_1 = z to mu + s z (up to the tiny
alpha at t = 1), which DDIM must approach as the steps grow; a single point x* is the case s = 0, where every step's
pred is x* exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.diffusion.vdiff import (
    COSINE_CROSSOVER,
    DDPM_CROSSOVER,
    SCHEDULES,
    alpha_sigma,
    dynamic_threshold,
    guided_v,
    interpolation_latents,
    log_snr_of,
    sample,
    schedule,
    slerp,
    sobol_engine,
    sobol_t,
    v_loss,
)

MU = torch.tensor([[0.5, -1.0, 0.2], [2.0, 0.0, -0.3]])  # data shape (2, 3): the maths is generic over shape


def gaussian_oracle(mu: torch.Tensor, s: float, calls: list | None = None):
    """The exact v-model of data N(mu, s^2 I); s = 0 is the point mass at mu. Ignores y."""

    def model_fn(x, log_snr, y):
        assert log_snr.shape == (x.shape[0],)
        if calls is not None:
            calls.append((x.shape[0], y))
        a, sg = (v.reshape(-1, *([1] * (x.dim() - 1))) for v in alpha_sigma(log_snr))
        x0 = mu + a * s**2 / (a**2 * s**2 + sg**2) * (x - a * mu)
        return (a * x - x0) / sg

    return model_fn


def point_cfg_oracle(x_cond: torch.Tensor, x_uncond: torch.Tensor, calls: list):
    """Exact v-models of two point masses: x_cond for a label, x_uncond for y None or the null label 100."""
    cond, uncond = gaussian_oracle(x_cond, 0.0), gaussian_oracle(x_uncond, 0.0)

    def model_fn(x, log_snr, y):
        calls.append(x.shape[0])
        if y is None:
            return uncond(x, log_snr, None)
        null = (y == 100).reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(null, uncond(x, log_snr, None), cond(x, log_snr, y))

    return model_fn


# ------------------------------------------------------------------------------------------------ alpha, sigma


def test_alpha_sigma_unit_and_inverse():
    lam = torch.linspace(-15, 15, 301, dtype=torch.float64)
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(lam), atol=1e-12, rtol=0)
    torch.testing.assert_close(log_snr_of(a, s), lam, atol=1e-9, rtol=0)
    assert float(alpha_sigma(torch.tensor(0.0))[0]) == pytest.approx(math.sqrt(0.5))


# ----------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_decreasing_and_finite(name):
    fn = schedule(name)
    t = torch.linspace(0, 1, 1001)
    lam = fn(t)
    assert lam.dtype == torch.float32 and lam.shape == t.shape
    assert bool(torch.isfinite(lam).all())
    assert bool((lam[1:] <= lam[:-1]).all())  # non-increasing (the clamps make the cosine ends flat)
    inner = fn(torch.linspace(0.01, 0.99, 99, dtype=torch.float64))
    assert inner.dtype == torch.float64 and bool((inner[1:] < inner[:-1]).all())  # strictly decreasing inside
    for steps in (1, 7, 250, 1000):  # the sampler's grid, endpoints included
        assert bool(torch.isfinite(fn(torch.linspace(1, 0, steps + 1))).all())


def test_schedule_values():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert SCHEDULES["cosine"](t).tolist() == pytest.approx([15.0, 0.0, -15.0], abs=1e-9)
    assert float(SCHEDULES["cosine"](torch.tensor(0.25, dtype=torch.float64))) == pytest.approx(
        -2 * math.log(math.tan(math.pi / 8)))
    lin = SCHEDULES["linear"](t)
    assert float(lin[0]) == pytest.approx(9.2103, abs=1e-4) and float(lin[2]) == pytest.approx(-10.0, abs=1e-3)
    assert SCHEDULES["log_linear"](t).tolist() == pytest.approx([10.0, 0.0, -10.0])
    spl = SCHEDULES["spliced"](t)
    assert float(spl[0]) == 15.0 and float(spl[2]) == pytest.approx(float(lin[2]), abs=1e-12)


def test_spliced_is_continuous_at_the_splice():
    fn = SCHEDULES["spliced"]
    t_splice = COSINE_CROSSOVER / (1 + COSINE_CROSSOVER - DDPM_CROSSOVER)
    below = fn(torch.tensor(t_splice - 1e-12, dtype=torch.float64))
    above = fn(torch.tensor(t_splice + 1e-12, dtype=torch.float64))
    assert float(below) == pytest.approx(-2.2563, abs=1e-4) and float(above) == pytest.approx(-2.2563, abs=1e-4)
    assert abs(float(below - above)) < 1e-5
    # cosine at low noise, linear-beta at high noise
    t = torch.tensor([0.3, 0.9], dtype=torch.float64)
    scale = 1 + COSINE_CROSSOVER - DDPM_CROSSOVER
    assert float(fn(t[:1])) == pytest.approx(float(SCHEDULES["cosine"](t[:1] * scale)))
    assert float(fn(t[1:])) == pytest.approx(float(SCHEDULES["linear"](t[1:] * scale + DDPM_CROSSOVER
                                                                       - COSINE_CROSSOVER)))


def test_bad_schedule_name_is_one_sentence():
    with pytest.raises(ValueError, match=r"did you mean 'cosine'\?") as info:
        schedule("cosin")
    msg = str(info.value)
    assert "\n" not in msg and msg.count(". ") == 0
    with pytest.raises(ValueError, match="use one of cosine, linear, spliced, log_linear"):
        schedule("karras")
    with pytest.raises(ValueError, match="unknown v-diffusion schedule"):
        sample(gaussian_oracle(MU, 0.0), torch.randn(2, 2, 3), 3, "splice")


# ------------------------------------------------------------------------------------------------ training


def test_sobol_t_in_open_interval_and_stratified():
    engine = sobol_engine(seed=0)
    for _ in range(3):  # successive blocks of 2^k points each hit every stratum once
        t = sobol_t(64, engine)
        assert t.shape == (64,) and t.dtype == torch.float32
        assert bool(((t > 0) & (t < 1)).all())
        assert sorted((t * 64).floor().long().tolist()) == list(range(64))
    again = sobol_t(64, sobol_engine(seed=0))
    assert torch.equal(again, sobol_t(64, sobol_engine(seed=0)))  # reproducible from the seed
    assert not torch.equal(again, sobol_t(64, sobol_engine(seed=1)))


def test_v_target_identities():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    a, s = (v.reshape(-1, 1, 1) for v in alpha_sigma(torch.linspace(-8, 8, 5)))
    x_t, v = a * x0 + s * eps, a * eps - s * x0
    torch.testing.assert_close(a * x_t - s * v, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(s * x_t + a * v, eps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("weighting", ["mse", "sigmoid"])
def test_v_loss(weighting):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(6, 2, 3, generator=g), torch.randn(6, 2, 3, generator=g)
    t = sobol_t(6, sobol_engine(seed=0))
    seen = {}

    def perfect(x_t, log_snr, y):  # knows the noise: returns the exact target, so the loss is 0
        seen["y"], seen["log_snr"] = y, log_snr
        a, s = (v.reshape(-1, 1, 1) for v in alpha_sigma(log_snr))
        return a * noise - s * x0

    y = torch.arange(6)
    assert float(v_loss(perfect, x0, y, "cosine", t, weighting, noise=noise)) == pytest.approx(0.0, abs=1e-10)
    assert seen["y"] is y
    torch.testing.assert_close(seen["log_snr"], SCHEDULES["cosine"](t))

    def zero(x_t, log_snr, y):  # loss = mean over pixels of v^2, then over the batch
        return torch.zeros_like(x_t)

    lam = SCHEDULES["linear"](t)
    a, s = (v.reshape(-1, 1, 1) for v in alpha_sigma(lam))
    per = (a * noise - s * x0).pow(2).flatten(1).mean(1)
    want = (per * lam.sigmoid()).mean() if weighting == "sigmoid" else per.mean()
    got = v_loss(zero, x0, None, SCHEDULES["linear"], t, weighting, noise=noise)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    # noise from the generator is reproducible
    l1 = v_loss(zero, x0, None, "cosine", t, weighting, generator=torch.Generator().manual_seed(3))
    l2 = v_loss(zero, x0, None, "cosine", t, weighting, generator=torch.Generator().manual_seed(3))
    assert float(l1) == float(l2)
    with pytest.raises(ValueError, match="unknown v-diffusion loss weighting"):
        v_loss(zero, x0, None, "cosine", t, "snr")


# ----------------------------------------------------------------------------------------------- guidance


def test_guidance_w0_is_conditional_and_eq4_is_linear():
    g = torch.Generator().manual_seed(2)
    x, lam, y = torch.randn(4, 2, 3, generator=g), torch.randn(4, generator=g), torch.tensor([1, 2, 3, 0])
    w_c, w_u = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    calls = []

    def model_fn(x, log_snr, y):  # label 100 or None is the null class
        calls.append(x.shape[0])
        if y is None:
            return x * w_u + log_snr.reshape(-1, 1, 1)
        null = (y == 100).reshape(-1, 1, 1)
        return torch.where(null, x * w_u + log_snr.reshape(-1, 1, 1), x * w_c + y.reshape(-1, 1, 1))

    v_c, v_u = model_fn(x, lam, y), model_fn(x, lam, None)
    calls.clear()
    torch.testing.assert_close(guided_v(model_fn, x, lam, y, 0.0), v_c)
    assert calls == [4]  # w = 0 is one plain conditional call
    for w in (0.5, 3.0, -1.0):
        want = (1 + w) * v_c - w * v_u  # paper Eq. 4
        torch.testing.assert_close(guided_v(model_fn, x, lam, y, w), want)
        torch.testing.assert_close(guided_v(model_fn, x, lam, y, w, null_y=100), want)  # one batched call
        torch.testing.assert_close(guided_v(model_fn, x, lam, y, w, null_y=torch.full_like(y, 100)), want)
    # affine in w: v(w) = v_c + w (v_c - v_u)
    v1, v3 = guided_v(model_fn, x, lam, y, 1.0), guided_v(model_fn, x, lam, y, 3.0)
    torch.testing.assert_close(v3 - v1, 2 * (v1 - v_c))
    torch.testing.assert_close(guided_v(model_fn, x, lam, None, 3.0), v_u)  # y None: unconditional, unguided


# ----------------------------------------------------------------------------------------------- threshold


def test_dynamic_threshold():
    g = torch.Generator().manual_seed(4)
    inside = torch.rand(3, 2, 8, 8, generator=g) * 2 - 1
    assert torch.equal(dynamic_threshold(inside), inside)  # s = max(quantile, 1) = 1: unchanged
    wild = torch.randn(3, 2, 8, 8, generator=g) * torch.tensor([0.2, 3.0, 10.0]).reshape(3, 1, 1, 1)
    out = dynamic_threshold(wild, 0.995)
    assert out.shape == wild.shape and float(out.abs().max()) <= 1.0
    assert torch.equal(out[0], wild[0])  # per sample: the in-range one is untouched
    s = torch.quantile(wild[2].abs().flatten(), 0.995)
    torch.testing.assert_close(out[2], wild[2].clamp(-s, s) / s)
    assert float(out[2].abs().max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="quantile q"):
        dynamic_threshold(wild, 1.5)


# ----------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
def test_point_mass_oracle_gives_the_point(name, eta):
    x_star = MU
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(16, 2, 3, generator=g)
    for steps in (1, 2, 25):
        x, nfe = sample(gaussian_oracle(x_star, 0.0), noise, steps, name, eta=eta, generator=g)
        assert nfe == steps and bool(torch.isfinite(x).all())
        torch.testing.assert_close(x, x_star.expand_as(x), atol=1e-5, rtol=0)


def test_gaussian_oracle_ddim_converges_to_the_flow_map():
    """DDIM with the exact model of N(mu, s^2 I) approaches the probability-flow map z -> mu + s z, first order."""
    s = 0.5
    noise = torch.randn(500, 2, 3, generator=torch.Generator().manual_seed(6))
    for name in SCHEDULES:
        errs = []
        for steps in (25, 100, 400):
            x, _ = sample(gaussian_oracle(MU, s), noise, steps, name, eta=0.0)
            errs.append(float((x - (MU + s * noise)).abs().max()))
        assert errs[2] < 0.03 and errs[1] < errs[0] / 2.5 and errs[2] < errs[1] / 2.5, (name, errs)
        again, _ = sample(gaussian_oracle(MU, s), noise, 25, name, eta=0.0)  # deterministic
        x25, _ = sample(gaussian_oracle(MU, s), noise, 25, name, eta=0.0)
        assert torch.equal(again, x25)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_gaussian_oracle_ancestral_matches_the_data(name):
    s, n = 0.5, 2000
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(n, 2, 3, generator=g)
    x, nfe = sample(gaussian_oracle(MU, s), noise, 200, name, eta=1.0, generator=g)
    assert nfe == 200
    assert float((x.mean(0) - MU).abs().max()) < 0.05  # sampling error ~0.011 (mean), ~0.008 (std)
    assert float((x.std(0) - s).abs().max()) < 0.05
    # and the fresh noise comes from the generator: reproducible, and different from DDIM
    x2, _ = sample(gaussian_oracle(MU, s), noise, 200, name, eta=1.0, generator=torch.Generator().manual_seed(8))
    x3, _ = sample(gaussian_oracle(MU, s), noise, 200, name, eta=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(x2, x3) and not torch.equal(x, x2)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("threshold", [None, 0.9])
def test_one_step_is_the_ddpm_posterior(eta, threshold):
    """The first step, checked against formulas written independently of the sampler's: with x0 = pred and
    eps = (x_t - alpha_t x0) / sigma_t, eta = 1 draws from q(x_s | x_t, x0), the DDPM posterior with variance
    sigma_s^2 (1 - SNR_t / SNR_s) and mean alpha_s x0 + sqrt(sigma_s^2 - var) eps (Song et al. 2021, DDIM eq. 12);
    other eta scale the standard deviation. With a threshold, x0 is the thresholded pred and eps follows from it."""
    seen = []

    def model_fn(x, log_snr, y):  # a non-trivial velocity, large enough that thresholding bites
        seen.append(x.clone())
        return 0.3 * x + 2.0 * torch.sign(x)

    x_t = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(13)) * 3
    sample(model_fn, x_t, 4, "linear", eta=eta, threshold=threshold, generator=torch.Generator().manual_seed(14))
    z = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(14))  # the sampler's first draw
    lam_t, lam_s = (float(v) for v in SCHEDULES["linear"](torch.tensor([1.0, 0.75], dtype=torch.float64)))
    a_t, s_t = math.sqrt(1 / (1 + math.exp(-lam_t))), math.sqrt(1 / (1 + math.exp(lam_t)))
    a_s, s_s = math.sqrt(1 / (1 + math.exp(-lam_s))), math.sqrt(1 / (1 + math.exp(lam_s)))
    x0 = a_t * x_t - s_t * model_fn(x_t, None, None)
    if threshold is not None:
        x0 = dynamic_threshold(x0, threshold)
        assert float(x0.abs().max()) <= 1.0 and bool((x0.abs() == 1).any())
    eps = (x_t - a_t * x0) / s_t
    var = eta**2 * s_s**2 * (1 - math.exp(lam_t - lam_s))
    want = a_s * x0 + math.sqrt(s_s**2 - var) * eps + math.sqrt(var) * z
    torch.testing.assert_close(seen[1], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batched", [False, True])
def test_guided_sampling_and_nfe(batched):
    """Guidance of two point masses: every pred is (1 + w) x_c - w x_u, and guided steps cost 2 NFE per image."""
    x_c, x_u = torch.full((2, 3), 0.5), torch.full((2, 3), -0.25)
    calls: list = []
    model_fn = point_cfg_oracle(x_c, x_u, calls)
    noise, y = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(9)), torch.zeros(8, dtype=torch.long)
    null_y = 100 if batched else None
    for eta in (0.0, 1.0):
        calls.clear()
        x, nfe = sample(model_fn, noise, 10, "cosine", eta=eta, y=y, w=3.0, null_y=null_y)
        torch.testing.assert_close(x, (4 * x_c - 3 * x_u).expand_as(x), atol=1e-5, rtol=0)
        assert nfe == 20
        assert calls == ([16] * 10 if batched else [8] * 20)  # one batch of 2N, or two calls of N
    calls.clear()
    x, nfe = sample(model_fn, noise, 10, "cosine", y=y, w=0.0, null_y=null_y)  # w = 0: plain conditional
    torch.testing.assert_close(x, x_c.expand_as(x), atol=1e-5, rtol=0)
    assert nfe == 10 and calls == [8] * 10
    calls.clear()
    x, nfe = sample(model_fn, noise, 10, "cosine", y=None)  # unconditional: guidance does not apply
    torch.testing.assert_close(x, x_u.expand_as(x), atol=1e-5, rtol=0)
    assert nfe == 10 and calls == [8] * 10


def test_sampling_with_dynamic_threshold():
    noise = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(10))
    inside = torch.tensor([[0.5, -0.9, 0.2], [0.99, 0.0, -0.3]])
    for eta in (0.0, 1.0):  # an in-range point is untouched: the result is the point
        x, _ = sample(gaussian_oracle(inside, 0.0), noise, 20, "cosine", eta=eta, threshold=0.995)
        torch.testing.assert_close(x, inside.expand_as(x), atol=1e-5, rtol=0)
    x, _ = sample(gaussian_oracle(MU, 0.0), noise, 20, "cosine", threshold=0.995)  # MU has 2.0 in it
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) <= 1.0 + 1e-6
    x, _ = sample(gaussian_oracle(MU, 0.5), noise, 20, "spliced", threshold=0.9)
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) <= 1.0 + 1e-6


def test_sample_rejects_bad_arguments():
    model_fn, noise = gaussian_oracle(MU, 0.0), torch.randn(2, 2, 3)
    with pytest.raises(ValueError, match="sampling steps"):
        sample(model_fn, noise, 0)
    with pytest.raises(ValueError, match="eta must be"):
        sample(model_fn, noise, 5, eta=1.5)
    with pytest.raises(ValueError, match="quantile q"):
        sample(model_fn, noise, 5, threshold=0.0)


# ------------------------------------------------------------------------------------------- interpolation


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(11)
    z0, z1 = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    z1n = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)  # equal norms
    for theta in (0.25, 0.5, torch.tensor([0.1, 0.4, 0.6, 0.9])):
        mid = slerp(z0, z1n, theta)
        torch.testing.assert_close(mid.flatten(1).norm(dim=1), z0.flatten(1).norm(dim=1))
    # at theta = 1/2 the result bisects the angle
    mid = slerp(z0, z1n, 0.5).flatten(1)
    cos0 = torch.nn.functional.cosine_similarity(mid, z0.flatten(1))
    cos1 = torch.nn.functional.cosine_similarity(mid, z1n.flatten(1))
    torch.testing.assert_close(cos0, cos1)
    # parallel inputs fall back to lerp (no 0/0)
    out = slerp(z0, 2 * z0, 0.5)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, 1.5 * z0)


def test_interpolation_latents_and_ddim_decoding():
    g = torch.Generator().manual_seed(12)
    z0, z1 = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    lat = interpolation_latents(z0, z1, 7)
    assert lat.shape == (7, 2, 3)
    torch.testing.assert_close(lat[0], z0)
    torch.testing.assert_close(lat[-1], z1)
    x, nfe = sample(gaussian_oracle(MU, 0.5), lat, 50, "cosine", eta=0.0)  # DDIM decodes them deterministically
    assert x.shape == (7, 2, 3) and nfe == 50 and bool(torch.isfinite(x).all())
    with pytest.raises(ValueError, match="interpolation latents"):
        interpolation_latents(z0, z1, 1)
