"""Tests of the discrete DDPM (harness/diffusion/ddpm.py) against docs/papers.md, spec 3.4.

The sampler is checked with the exact epsilon-predictor of Gaussian data N(0, s^2 I): with
x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, x_t ~ N(0, (ab s^2 + 1 - ab) I) and E[eps | x_t] = sqrt(1 - ab) x_t / (ab s^2 +
1 - ab), so the optimal predictor is linear in x_t and its MSE is 1 - (1 - ab) / (ab s^2 + 1 - ab).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.diffusion.ddpm import BETA_SCHEDULES, DDPM, beta_schedule

HW = {"lbeta": 1e-5, "ubeta": 1.28e-2}  # the homework's defaults (starter train.py, report Table 2)
FAST = {"lbeta": 1e-4, "ubeta": 5e-2}  # alpha_bar_T ~ 0.006 at T = 200: the prior is ~N(0, I)


class Oracle(nn.Module):
    """The exact E[eps | x_t] for data N(0, s^2 I)."""

    def __init__(self, ddpm: DDPM, s: float):
        super().__init__()
        self.ddpm, self.s = ddpm, s
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls.append(t)
        ab = self.ddpm.alpha_bar[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return x * (1 - ab).sqrt() / (ab * self.s**2 + 1 - ab)


class Zero(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


# ------------------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", BETA_SCHEDULES)
@pytest.mark.parametrize("T", [1, 10, 50, 200])
def test_schedule_shape_range_and_monotone(name, T):
    betas = beta_schedule(name, T, **HW)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert bool(((betas > 0) & (betas < 1)).all())
    assert bool((betas[1:] >= betas[:-1]).all())  # non-decreasing for lbeta <= ubeta
    ab = DDPM(T, name, **HW).alpha_bar
    if T > 1:  # starts near 1 (the cosine schedule only at fine T) and decreases strictly
        assert bool((ab[1:] < ab[:-1]).all()) and float(ab[0]) > (0.99 if T >= 50 else 0.95)
    assert math.isclose(float(ab[-1]), float(torch.prod(1 - betas)), rel_tol=1e-12)


def test_schedule_endpoints():
    T, lo, hi = 50, HW["lbeta"], HW["ubeta"]
    lin = beta_schedule("linear", T, lo, hi)
    assert float(lin[0]) == pytest.approx(lo, rel=1e-12) and float(lin[-1]) == pytest.approx(hi, rel=1e-12)
    scaled = beta_schedule("scaled_linear", T, lo, hi)
    assert float(scaled[0]) == pytest.approx(lo, rel=1e-9) and float(scaled[-1]) == pytest.approx(hi, rel=1e-9)
    assert bool((scaled[1:-1] < lin[1:-1]).all())  # the square of a linear ramp in sqrt lies below the ramp
    sig = beta_schedule("sigmoid", T, lo, hi)
    tol = 0.0025 * (hi - lo)  # sigmoid(6) = 0.99753
    assert abs(float(sig[0]) - lo) < tol and abs(float(sig[-1]) - hi) < tol
    sech = beta_schedule("sech", T, lo, hi)
    assert float(sech[-1]) == pytest.approx(lo + (hi - lo) * (1 - 1 / math.cosh(4.0)), rel=1e-12)
    assert float(sech[0]) < lo + 0.01 * (hi - lo)  # flat at the start
    cos = beta_schedule("cosine", T, lo, hi)
    assert float(cos[-1]) == 0.999 and float(DDPM(T, "cosine").alpha_bar[-1]) < 1e-3
    assert torch.equal(cos, beta_schedule("cosine", T, 1e-3, 1e-2))  # ignores lbeta/ubeta


def test_cosine_alpha_bar_matches_nichol_dhariwal():
    T, s = 100, 0.008
    ab = DDPM(T, "cosine").alpha_bar
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    for t in (1, 25, 50, 90):
        assert float(ab[t - 1]) == pytest.approx(f[t] / f[0], rel=1e-9)


def test_linear_ddpm_reference_value():
    # Ho et al. 2020 (T = 1000, beta 1e-4 .. 0.02): alpha_bar_T ~ 4.04e-5.
    assert float(DDPM(1000, "linear", 1e-4, 0.02).alpha_bar[-1]) == pytest.approx(4.04e-5, rel=0.01)


def test_homework_defaults_do_not_reach_noise():
    # Documented in ddpm.py: T = 50 with beta up to 1.28e-2 leaves alpha_bar_T ~ 0.73.
    assert float(DDPM(50, "linear", **HW).alpha_bar[-1]) == pytest.approx(0.725, abs=0.002)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid", "sech"])
def test_lbeta_above_ubeta_is_a_decreasing_schedule(name):
    # Report Table 8 rows such as lbeta=1.28e-2 ubeta=1e-5: linspace(lbeta, ubeta, T) literally.
    up, down = beta_schedule(name, 50, 1e-5, 1.28e-2), beta_schedule(name, 50, 1.28e-2, 1e-5)
    assert bool((down[1:] <= down[:-1]).all()) and float(down[0]) > float(down[-1])
    if name in ("linear", "scaled_linear"):
        assert torch.allclose(down, up.flip(0), rtol=1e-12)
    ab = DDPM(50, name, 1.28e-2, 1e-5).alpha_bar
    assert bool((ab[1:] < ab[:-1]).all())


def test_equal_bounds_give_a_constant_schedule():
    assert torch.allclose(beta_schedule("linear", 7, 0.01, 0.01), torch.full((7,), 0.01, dtype=torch.float64))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("linear", 0), "T must be an integer from 1 to 1,000,000"),
        (("linear", 2.5), "T must be an integer from 1"),
        (("linear", True), "T must be an integer from 1"),
        (("linear", 1_000_001), "T must be an integer from 1 to 1,000,000, got 1000001"),
        (("cosin", 10), "did you mean 'cosine'"),
        (("scaled-linear", 10), "did you mean 'scaled_linear'"),
        (("quadratic", 10), "use one of linear, scaled_linear"),
        (("linear", 10, 0.0, 0.01), "lbeta must be a number in the open interval"),
        (("linear", 10, 1e-4, 1.0), "ubeta must be a number in the open interval"),
        (("linear", 10, -1e-4, 0.01), "lbeta"),
        (("linear", 10, float("nan"), 0.01), "lbeta"),
        (("sech", 10, 1e-4, "0.02"), "ubeta"),
    ],
)
def test_bad_settings_raise_one_sentence(args, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        beta_schedule(*args)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=fragment):
        DDPM(args[1], *args[:1], *args[2:])


def test_from_betas_and_posterior_variance():
    betas = beta_schedule("linear", 20, 1e-3, 0.2)
    ddpm = DDPM.from_betas(betas)
    assert ddpm.T == 20 and torch.equal(ddpm.alpha_bar, DDPM(20, "linear", 1e-3, 0.2).alpha_bar)
    for attr in ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "posterior_variance"):
        assert getattr(ddpm, attr).dtype == torch.float64 and getattr(ddpm, attr).shape == (20,)
    assert float(ddpm.posterior_variance[0]) == 0.0
    assert bool((ddpm.posterior_variance[1:] < ddpm.betas[1:]).all())
    with pytest.raises(ValueError, match="open interval"):
        DDPM.from_betas(torch.tensor([0.1, 1.0]))


# ------------------------------------------------------------------------------------------------ forward process


def test_q_sample_statistics():
    ddpm = DDPM(100, "linear", **FAST)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 2), 1.5)
    for i in (0, 40, 99):
        xt = ddpm.q_sample(x0, i, generator=g)  # an int t is broadcast to the batch
        ab = float(ddpm.alpha_bar[i])
        assert xt.dtype == torch.float32 and xt.shape == x0.shape
        assert float(xt.mean()) == pytest.approx(math.sqrt(ab) * 1.5, abs=0.02)
        assert float(xt.std()) == pytest.approx(math.sqrt(1 - ab), rel=0.03, abs=1e-3)


def test_q_sample_formula_and_bad_timesteps():
    ddpm = DDPM(10, "cosine")
    x0, noise = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    t = torch.tensor([0, 3, 9, 5])
    ab = ddpm.alpha_bar[t].float().reshape(4, 1, 1, 1)
    assert torch.allclose(ddpm.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        ddpm.q_sample(x0, torch.tensor([0, 1, 2, 10]), noise)
    with pytest.raises(ValueError, match="integers"):
        ddpm.q_sample(x0, torch.tensor([0.5] * 4), noise)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ddpm.q_sample(x0, torch.tensor([1, 2]), noise)


# ---------------------------------------------------------------------------------------------------------- loss


def test_oracle_loss_below_zero_predictor_and_matches_theory():
    s, ddpm = 0.5, DDPM(50, "linear", **FAST)
    x0 = s * torch.randn(8192, 3, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    zero = ddpm.loss(Zero(), x0, generator=torch.Generator().manual_seed(2))
    oracle = ddpm.loss(Oracle(ddpm, s), x0, generator=g)
    ab = ddpm.alpha_bar
    expected = float((1 - (1 - ab) / (ab * s**2 + 1 - ab)).mean())
    assert float(zero) == pytest.approx(1.0, abs=0.03)  # E[eps^2]
    assert float(oracle) == pytest.approx(expected, rel=0.05) and float(oracle) < 0.8 * float(zero)


def test_loss_draws_t_uniform_zero_based_and_is_deterministic():
    ddpm = DDPM(5, "linear", **FAST)
    oracle = Oracle(ddpm, 1.0)
    x0 = torch.randn(5000, 2)
    a = ddpm.loss(oracle, x0, generator=torch.Generator().manual_seed(3))
    t = oracle.calls[-1]
    assert int(t.min()) == 0 and int(t.max()) == 4 and t.bincount().min() > 900
    b = ddpm.loss(oracle, x0, generator=torch.Generator().manual_seed(3))
    assert a.dim() == 0 and torch.equal(a, b)


def test_loss_backpropagates_on_image_shaped_data():
    ddpm = DDPM(20, "sigmoid")
    net = nn.Conv2d(1, 1, 3, padding=1)
    loss = ddpm.loss(lambda x, t: net(x), torch.randn(3, 1, 8, 8))
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize(("s", "variance"), [(0.5, "beta"), (2.0, "beta"), (0.5, "posterior"), (2.0, "posterior")])
def test_oracle_ancestral_sampling_recovers_the_data_std(s, variance):
    ddpm = DDPM(200, "linear", **FAST)
    x = ddpm.sample(Oracle(ddpm, s), 4096, (3,), generator=torch.Generator().manual_seed(4), variance=variance)
    assert x.shape == (4096, 3) and x.dtype == torch.float32
    assert float(x.std()) == pytest.approx(s, rel=0.10)
    assert abs(float(x.mean())) < 0.1 * s


def test_oracle_sampling_at_homework_range():
    # T = 200 is the report's largest T (Q3); with ubeta = 1.28e-2, alpha_bar_T ~ 0.28, yet s = 0.5 is recovered.
    ddpm = DDPM(200, "linear", **HW)
    x = ddpm.sample(Oracle(ddpm, 0.5), 4096, 3, generator=torch.Generator().manual_seed(5))
    assert float(x.std()) == pytest.approx(0.5, rel=0.10)


def test_trajectory_and_timestep_order():
    ddpm = DDPM(12, "sech", **FAST)
    oracle = Oracle(ddpm, 1.0)
    x, traj = ddpm.sample(oracle, 7, (1, 2, 2), generator=torch.Generator().manual_seed(6), return_trajectory=True)
    assert len(traj) == 12 and all(s.shape == (7, 1, 2, 2) for s in traj) and torch.equal(traj[-1], x)
    assert [int(t[0]) for t in oracle.calls] == list(range(11, -1, -1))  # T-1 .. 0, each with a (N,) long tensor


def test_sampling_is_deterministic_with_a_generator_and_no_noise_at_the_last_step():
    ddpm = DDPM(30, "scaled_linear", **FAST)
    oracle = Oracle(ddpm, 1.0)
    a = ddpm.sample(oracle, 64, (3,), generator=torch.Generator().manual_seed(7))
    b = ddpm.sample(oracle, 64, (3,), generator=torch.Generator().manual_seed(7))
    c = ddpm.sample(oracle, 64, (3,), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x = torch.randn(5, 3)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert torch.equal(ddpm.p_sample(oracle, x, 0, g1), ddpm.p_sample(oracle, x, 0, g2))  # mean only at i = 0
    assert not torch.equal(ddpm.p_sample(oracle, x, 1, g1), ddpm.p_sample(oracle, x, 1, g2))
    with pytest.raises(ValueError, match="'beta' or 'posterior'"):
        ddpm.sample(oracle, 2, 3, variance="tilde")
