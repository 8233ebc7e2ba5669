"""Tests of the EDM diffusion maths (harness.diffusion.edm) and the Karras augmentation (harness.diffusion.augment).

All run on CPU in a few seconds with a tiny stand-in for the block-sharing model's interface.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from harness.diffusion import (
    SAMPLERS,
    KarrasAugment,
    denoising_loss_at,
    dropout_classes,
    ema_decay,
    generate,
    karras_loss,
    karras_sigmas,
    loss_weighting,
    params_to_cond,
    params_to_matrix,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_sigmas_train,
    warp_affine,
)
from harness.training.ema import ema_update

SD = 0.5


class StandIn(nn.Module):
    """Same interface as the zoo's EDM-preconditioned model: D = c_skip x + c_out F(c_in x)."""

    sigma_data = SD

    def __init__(self, channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(channels, channels, 1)
        self.emb = nn.Embedding(num_classes + 1, channels)
        self.aug = nn.Linear(9, channels, bias=False)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("counter", torch.zeros(1))

    def precondition(self, sigma):
        s = sigma.view(-1, 1, 1, 1)
        return SD**2 / (s**2 + SD**2), s * SD / (s**2 + SD**2) ** 0.5, 1 / (s**2 + SD**2) ** 0.5

    def inner(self, x_in, sigma, class_labels=None, aug_cond=None):
        n = x_in.shape[0]
        if class_labels is None:
            class_labels = torch.full((n,), self.num_classes, dtype=torch.long)
        if aug_cond is None:
            aug_cond = x_in.new_zeros(n, 9)
        h = self.conv(x_in) * (1 + 0.1 * sigma.log()).view(-1, 1, 1, 1)
        return self.drop(h + (self.emb(class_labels) + self.aug(aug_cond))[:, :, None, None])

    def forward(self, x, sigma, class_labels=None, aug_cond=None):
        c_skip, c_out, c_in = self.precondition(sigma)
        return c_skip * x + c_out * self.inner(c_in * x, sigma, class_labels, aug_cond)


def _model(seed: int = 0) -> StandIn:
    torch.manual_seed(seed)
    return StandIn().eval()


# ------------------------------------------------------------------------------------------------ loss


@pytest.mark.parametrize("weighting", ["soft-min-snr", "karras", "snr"])
def test_karras_loss_matches_hand_computation(weighting):
    model = _model()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(5, 3, 4, 4, generator=g) * 2 - 1, torch.randn(5, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.01, 0.3, 0.5, 2.0, 80.0])
    labels, aug = torch.tensor([0, 1, 2, 3, 4]), torch.randn(5, 9, generator=g)
    loss = karras_loss(model, x0, sigma, noise, class_labels=labels, aug_cond=aug, weighting=weighting)
    s = sigma.view(-1, 1, 1, 1)
    x_s = x0 + s * noise
    c_in, c_skip, c_out = 1 / (s**2 + SD**2).sqrt(), SD**2 / (s**2 + SD**2), s * SD / (s**2 + SD**2).sqrt()
    f = model.inner(c_in * x_s, sigma, labels, aug)
    mse = ((f - (x0 - c_skip * x_s) / c_out) ** 2).mean((1, 2, 3))
    w = {"soft-min-snr": (sigma * SD) ** 2 / (sigma**2 + SD**2) ** 2, "karras": torch.ones(5),
         "snr": SD**2 / (sigma**2 + SD**2)}[weighting]
    assert loss.shape == (5,)
    torch.testing.assert_close(loss, mse * w)


def test_weighting_values_and_x0_space_identity():
    s = torch.tensor([SD, 1.0])
    torch.testing.assert_close(loss_weighting(s, SD, "soft-min-snr"), torch.tensor([0.25, 0.25 / 1.25**2]))
    torch.testing.assert_close(loss_weighting(s, SD, "karras"), torch.ones(2))
    torch.testing.assert_close(loss_weighting(s, SD, "snr"), torch.tensor([0.5, 0.25 / 1.25]))
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weighting(s, SD, "nope")
    # soft-min-SNR loss == |D - x0|^2 / (s^2 + sd^2) (documented in edm.loss_weighting)
    model = _model()
    x0, noise = torch.rand(3, 3, 4, 4) * 2 - 1, torch.randn(3, 3, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    d = model(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma)
    expected = ((d - x0) ** 2).mean((1, 2, 3)) / (sigma**2 + SD**2)
    torch.testing.assert_close(karras_loss(model, x0, sigma, noise), expected, rtol=1e-4, atol=1e-6)


def test_sigma_sampler_range_strata_and_median():
    b = 1000
    sigma = sample_sigmas_train(b, SD, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (b,) and sigma.dtype == torch.float32
    assert sigma.min() >= SD * 0.002 * 0.999 and sigma.max() <= SD * 2000 * 1.001
    lo, hi = math.atan(0.002), math.atan(2000)
    u = (torch.atan(sigma.double() / SD) - lo) / (hi - lo)
    assert torch.equal((u * b).floor().long(), torch.arange(b))  # exactly one sample per stratum, in order
    assert sigma.median().item() == pytest.approx(SD, rel=0.02)
    assert (sigma < 0.05).any() and (sigma > 50).any()  # covers both tails
    again = sample_sigmas_train(b, SD, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)


def test_ema_decay_and_update():
    assert ema_decay(0) == 0.0
    assert ema_decay(10) == pytest.approx(1 - 11**-0.6667)
    assert ema_decay(10) == pytest.approx(0.7985, abs=1e-3)
    assert ema_decay(1_000_000) == 0.9999
    a, b = _model(0), _model(1)
    a_before = {k: v.clone() for k, v in a.state_dict().items()}
    b.counter.fill_(7.0)
    ema_update(a, b, 0.9)
    for name, p in a.named_parameters():
        torch.testing.assert_close(p, 0.9 * a_before[name] + 0.1 * dict(b.named_parameters())[name])
    assert a.counter.item() == 7.0
    ema_update(a, b, ema_decay(0))  # first step copies the model
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError):
        ema_update(a, nn.Linear(2, 2), 0.5)


def test_dropout_classes_fraction():
    labels = torch.randint(0, 10, (100_000,), generator=torch.Generator().manual_seed(0))
    out = dropout_classes(labels, 10, 0.1, generator=torch.Generator().manual_seed(1))
    dropped = out == 10
    assert dropped.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert torch.equal(out[~dropped], labels[~dropped]) and labels.max() < 10
    assert torch.equal(dropout_classes(labels, 10, 0.0), labels)
    assert (dropout_classes(labels, 10, 1.0) == 10).all()


# -------------------------------------------------------------------------------------------- sampling


def test_karras_sigmas():
    s = karras_sigmas(50)
    assert s.shape == (51,)
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.01) and s[-1].item() == 0
    assert (s[1:] < s[:-1]).all()
    mid = (80 ** (1 / 7) + 0.5 * (0.01 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert karras_sigmas(3)[1].item() == pytest.approx(mid, rel=1e-5)


EXPECTED_NFE = {"euler": 50, "heun": 99, "dpmpp_2m": 50}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_point_mass_is_exact(name):
    mu = torch.tensor([[0.3, -0.7, 1.2]])
    calls = []
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) * 80
    x, nfe = SAMPLERS[name](lambda x, s: mu.expand_as(x), x_T, karras_sigmas(50), callback=calls.append)
    torch.testing.assert_close(x, mu.expand(8, 3), atol=1e-5, rtol=0)
    assert nfe == EXPECTED_NFE[name]
    assert [c["i"] for c in calls] == list(range(50))


def test_samplers_gaussian_data():
    """Data N(0, sd^2): exact denoiser x sd^2/(s^2 + sd^2); exact ODE end point x_T sd / sqrt(s_T^2 + sd^2)."""
    x_T = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    exact = x_T * SD / (80**2 + SD**2) ** 0.5
    sigmas = karras_sigmas(50).double()
    errors = {}
    for fn in (sample_euler, sample_heun, sample_dpmpp_2m):
        x, _ = fn(lambda x, s: x * SD**2 / (s[:, None] ** 2 + SD**2), x_T, sigmas)
        assert x.std().item() == pytest.approx(SD, rel=0.1)
        errors[fn.__name__] = ((x - exact).abs() / exact.abs()).max().item()
    assert errors["sample_dpmpp_2m"] < 0.01 and errors["sample_heun"] < 0.01
    assert errors["sample_dpmpp_2m"] < errors["sample_euler"] / 5  # second order at the same NFE


def test_dpmpp_2m_hand_computed_steps():
    """Three steps on an uneven schedule, written out in k-diffusion's t = -log(sigma) form."""
    def den(x, s):
        return x * SD**2 / (s[:, None] ** 2 + SD**2) + 0.1

    x_T = torch.tensor([[3.0], [-5.0]], dtype=torch.float64)
    sig = [10.0, 2.0, 0.1, 0.0]
    x, nfe = sample_dpmpp_2m(den, x_T, torch.tensor(sig, dtype=torch.float64))
    t = [-math.log(v) for v in sig[:3]]
    d0 = den(x_T, torch.full((2,), sig[0], dtype=torch.float64))
    h0 = t[1] - t[0]
    x1 = sig[1] / sig[0] * x_T - math.expm1(-h0) * d0  # first order
    d1 = den(x1, torch.full((2,), sig[1], dtype=torch.float64))
    h1, r = t[2] - t[1], h0 / (t[2] - t[1])
    x2 = sig[2] / sig[1] * x1 - math.expm1(-h1) * ((1 + 1 / (2 * r)) * d1 - d0 / (2 * r))
    x3 = den(x2, torch.full((2,), sig[2], dtype=torch.float64))  # last step to 0 returns the denoised
    assert nfe == 3
    torch.testing.assert_close(x, x3)


def test_generate_shapes_labels_and_modes():
    model = _model().train()
    imgs, labels, nfe = generate(model, 10, (3, 4, 4), num_classes=4, steps=5, batch_size=4,
                                 generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (10, 3, 4, 4) and imgs.abs().max() <= 1 and nfe == 5
    assert labels.shape == (10,) and labels.min() >= 0 and labels.max() < 4
    assert model.training and model.drop.training  # modes restored
    again, labels2, _ = generate(model, 10, (3, 4, 4), num_classes=4, steps=5, batch_size=4,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(imgs, again) and torch.equal(labels, labels2)  # eval mode: dropout off, deterministic
    _, none_labels, nfe = generate(model, 2, (3, 4, 4), num_classes=0, steps=3, sampler="heun")
    assert none_labels is None and nfe == 5
    given = torch.tensor([1, 2])
    _, out_labels, _ = generate(model, 2, (3, 4, 4), num_classes=4, steps=2, class_labels=given)
    assert torch.equal(out_labels, given)
    with pytest.raises(ValueError):
        generate(model, 2, (3, 4, 4), num_classes=4, sampler="ddim")


def test_denoising_loss_at_fixed_noise():
    model = _model().train()
    x0 = torch.rand(6, 3, 4, 4) * 2 - 1
    res = denoising_loss_at(model, x0, sigmas=(0.1, 1.0), batch_size=4)
    assert list(res) == [0.1, 1.0] and model.training
    assert res == denoising_loss_at(model, x0, sigmas=(0.1, 1.0), batch_size=4)
    g = torch.Generator().manual_seed(0)
    model.eval()
    manual = {}
    for s in (0.1, 1.0):
        noise = torch.cat([torch.randn(4, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)])
        manual[s] = karras_loss(model, x0, torch.full((6,), s), noise).mean().item()
    assert res == pytest.approx(manual, rel=1e-5)


# ---------------------------------------------------------------------------------------- augmentation


def _cubic(x, f):  # skimage's cubic_interpolation
    return f[1] + 0.5 * x * (f[2] - f[0] + x * (2 * f[0] - 5 * f[1] + 4 * f[2] - f[3] + x * (
        3 * (f[1] - f[2]) + f[3] - f[0])))


def _coord_map_reflect(dim, coord):  # skimage's coord_map, mode 'R' (C integer division)
    cmax = dim - 1
    if coord < 0:
        k = int(-coord / cmax)
        return cmax - (-coord % cmax) if k % 2 else -coord % cmax
    if coord > cmax:
        k = int(coord / cmax)
        return cmax - coord % cmax if k % 2 else coord % cmax
    return coord


def _skimage_warp_reference(img, mat):
    """Pixel-by-pixel skimage ``warp(img, AffineTransform(mat).inverse, order=3, mode='reflect')`` for (H, W)."""
    h, w = img.shape
    inv = np.linalg.inv(mat)
    out = np.zeros_like(img)
    for r in range(h):
        for c in range(w):
            x, y, _ = inv @ np.array([c, r, 1.0])
            r0, c0 = math.floor(y), math.floor(x)
            rows = [_cubic(x - c0, [img[_coord_map_reflect(h, r0 - 1 + i), _coord_map_reflect(w, c0 - 1 + j)]
                                    for j in range(4)]) for i in range(4)]
            out[r, c] = _cubic(y - r0, rows)
    return out


def test_warp_matches_skimage_semantics():
    aug = KarrasAugment(a_prob=1.0)
    a = aug.sample_params(3, torch.Generator().manual_seed(3))
    x = torch.rand(3, 2, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mat = aug.matrix(a, 6, 7)
    out = warp_affine(x, mat)
    for i in range(3):
        for ch in range(2):
            ref = _skimage_warp_reference(x[i, ch].numpy(), mat[i].numpy())
            np.testing.assert_allclose(out[i, ch].numpy(), ref, atol=1e-10)


def test_augment_shapes_identity_and_disable():
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    y, cond = KarrasAugment(a_prob=0.12)(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and cond.shape == (8, 9) and cond.dtype == torch.float32
    y, cond = KarrasAugment(a_prob=0.0, xflip=False)(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    assert (cond == 0).all()
    y, cond = KarrasAugment(a_prob=1.0, disable_all=True)(x)
    assert y is x and (cond == 0).all()


def test_augment_xflip_exact():
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    y, cond = KarrasAugment(a_prob=0.0)(x, generator=torch.Generator().manual_seed(0))
    flipped = cond[:, 0] == 1
    assert 0 < flipped.sum() < 32 and (cond[:, 1:] == 0).all()
    torch.testing.assert_close(y[flipped], x[flipped].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[~flipped], x[~flipped], atol=1e-6, rtol=0)


def test_augment_whole_pixel_translation():
    h = w = 8
    x = torch.rand(1, 3, h, w) * 2 - 1
    a = torch.zeros(1, 8, dtype=torch.float64)
    a[0, 6], a[0, 7] = 2 / (w / 8), -1 / (h / 8)  # tx = +2 px (right), ty = -1 px (up)
    aug = KarrasAugment()
    y, cond = aug.apply(x, a)
    torch.testing.assert_close(y[..., 0:h - 1, 2:], x[..., 1:, :w - 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(y[..., 0:h - 1, 0], x[..., 1:, 2], atol=1e-6, rtol=0)  # reflect about column 0
    torch.testing.assert_close(y[..., h - 1, 2:], x[..., h - 2, :w - 2], atol=1e-6, rtol=0)  # reflect about row 7
    torch.testing.assert_close(cond, torch.tensor([[0, 0, 0, 0, 0, 0, 0, 2.0, -1.0]]))


def _reference_matrix(p, h, w, s=2**0.2, an=2**0.2, tr=1 / 8):
    """Per-sample composition in the reference order, with numpy."""
    def t(x, y):
        return np.array([[1, 0, x], [0, 1, y], [0, 0, 1.0]])

    def sc(x, y):
        return np.diag([x, y, 1.0])

    def rot(a):
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])

    a0, a1, a2, a3, a4, a5, a6, a7 = p
    mats = [t(w / 2 - 0.5, h / 2 - 0.5), sc(1 - 2 * a0, 1), sc(1, 1 - 2 * a1), sc(s**a2, s**a2), rot(-a3),
            rot(a4), sc(an**a5, an**-a5), rot(-a4), t(tr * w * a6, tr * h * a7), t(-w / 2 + 0.5, -h / 2 + 0.5)]
    m = np.eye(3)
    for x in mats:
        m = m @ x
    return m


def test_augment_cond_matches_matrix():
    aug = KarrasAugment(a_prob=1.0)
    a = aug.sample_params(16, torch.Generator().manual_seed(5))
    assert ((a[:, 0] == 0) | (a[:, 0] == 1)).all() and ((a[:, 1] == 0) | (a[:, 1] == 1)).all()
    assert (a[:, 3].abs() <= math.pi).all() and (a[:, 4].abs() <= math.pi).all()
    mat, cond = params_to_matrix(a, 32, 32), params_to_cond(a)
    for i in range(16):
        np.testing.assert_allclose(mat[i].numpy(), _reference_matrix(a[i].tolist(), 32, 32), atol=1e-12)
    a0, a1, a2, a3, a4, a5, a6, a7 = a.float().T
    expected = torch.stack([a0, a1, a2, a3.cos() - 1, a3.sin(), a5 * a4.cos(), a5 * a4.sin(), a6, a7], 1)
    torch.testing.assert_close(cond, expected)
    # the linear part's determinant is read off the cond: flips and isotropic scale (rotation/aniso have det 1)
    det = torch.linalg.det(mat[:, :2, :2]).float()
    torch.testing.assert_close(det, (1 - 2 * cond[:, 0]) * (1 - 2 * cond[:, 1]) * 2 ** (0.4 * cond[:, 2]))
    # rotation angle recovered from cond entries 3-4 equals a3
    torch.testing.assert_close(torch.atan2(cond[:, 4], cond[:, 3] + 1), a3, atol=1e-5, rtol=0)


def test_augment_probabilities():
    a = KarrasAugment(a_prob=0.12).sample_params(20_000, torch.Generator().manual_seed(0))
    assert (a[:, 0] == 1).double().mean().item() == pytest.approx(0.5, abs=0.02)
    for col in (2, 3, 5, 6):  # continuous params are nonzero exactly when their transform is enabled
        assert (a[:, col] != 0).double().mean().item() == pytest.approx(0.12, abs=0.01)
    assert (a[:, 1] == 1).double().mean().item() == pytest.approx(0.06, abs=0.01)
    assert torch.equal((a[:, 6] != 0), (a[:, 7] != 0)) and torch.equal((a[:, 4] != 0), (a[:, 5] != 0))
