"""VE-SDE score matching and samplers, checked against the exact score of Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

from harness.diffusion.score import (
    SAMPLERS,
    diffusion_coeff,
    dsm_loss,
    marginal_prob_std,
)

SIGMA = 25.0
S = 0.5  # data ~ N(0, S^2 I)


def exact_score(x, t):
    var = S**2 + marginal_prob_std(t, SIGMA).view(-1, *([1] * (x.dim() - 1))) ** 2
    return -x / var


def test_marginal_std_and_diffusion():
    assert float(marginal_prob_std(torch.tensor(0.0))) == 0.0
    expected = math.sqrt((SIGMA**2 - 1) / (2 * math.log(SIGMA)))
    assert float(marginal_prob_std(torch.tensor(1.0))) == pytest.approx(expected, rel=1e-6)
    assert float(diffusion_coeff(torch.tensor(0.5))) == pytest.approx(5.0)


def test_dsm_loss_is_lowest_at_the_exact_score():
    x = torch.randn(2048, 4, generator=torch.Generator().manual_seed(0)) * S
    exact = dsm_loss(exact_score, x, generator=torch.Generator().manual_seed(1))
    zero = dsm_loss(lambda x, t: torch.zeros_like(x), x, generator=torch.Generator().manual_seed(1))
    scaled = dsm_loss(lambda x, t: 0.5 * exact_score(x, t), x, generator=torch.Generator().manual_seed(1))
    assert exact < scaled < zero


@pytest.mark.parametrize(("name", "kwargs", "nfe"), [
    ("euler_maruyama", {"steps": 300}, 300), ("pc", {"steps": 300}, 600), ("ode", {}, None)])
def test_samplers_recover_gaussian_data(name, kwargs, nfe):
    g = torch.Generator().manual_seed(0)
    x, used = SAMPLERS[name](exact_score, 2048, (2, 2), generator=g, **kwargs)
    assert x.shape == (2048, 2, 2) and torch.isfinite(x).all()
    assert float(x.std()) == pytest.approx(S, rel=0.1)
    assert abs(float(x.mean())) < 0.05
    if nfe is not None:
        assert used == nfe
    else:
        assert 10 < used < 2000  # the adaptive solver's own count


def test_samplers_are_reproducible_with_a_generator():
    a, _ = SAMPLERS["euler_maruyama"](exact_score, 8, (1, 4, 4), steps=20, generator=torch.Generator().manual_seed(3))
    b, _ = SAMPLERS["euler_maruyama"](exact_score, 8, (1, 4, 4), steps=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "kwargs"), [("euler_maruyama", {"steps": 4}), ("pc", {"steps": 3}), ("ode", {})])
def test_each_sampler_turns_noise_into_finite_images_with_the_real_score_network(name, kwargs):
    import zoo

    net = zoo.build("ncsn-mnist").eval()
    with torch.no_grad():
        x, nfe = SAMPLERS[name](net, 2, (1, 28, 28), generator=torch.Generator().manual_seed(0), **kwargs)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all() and nfe >= 1


def test_the_image_ddpm_sampler_with_guidance_gives_finite_images_of_the_unet_shape():
    import zoo
    from harness.diffusion.ddpm import DDPM

    net = zoo.build("ddpm-unet-mnist", channels=(16, 32, 64, 128)).eval()
    ddpm = DDPM(4, "linear", 1e-4, 0.02)
    y = torch.tensor([3, 7])

    def eps(x, t):  # classifier-free guidance as the recipe does it
        return torch.lerp(net(x, t, None), net(x, t, y), 3.0)

    with torch.no_grad():
        x = ddpm.sample(eps, 2, (1, 32, 32), generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()
