"""Karras et al. (2022) non-leaky augmentation, batched on tensors (k-diffusion ``KarrasAugmentationPipeline``).

The reference (k-diffusion v0.1.1, ``augmentation.py``) works on one PIL image at a time: it composes a
3x3 matrix ``M`` acting on pixel coordinates (x = column, y = row, pixel centres at integers) and warps with
``skimage.transform.warp(image, AffineTransform(M).inverse, order=3, mode='reflect')``, i.e.
``out(p) = in(M^-1 p)``: M maps input positions to output positions. skimage's order-3 fast path is
Catmull-Rom cubic convolution (Keys, a = -0.5) over a 4x4 neighbourhood, with numpy-'reflect' boundary
handling (mirror about the edge pixel centres, edge not repeated), no clipping. We reproduce that exactly
(``warp_affine``) rather than using ``grid_sample``, whose bicubic kernel has a = -0.75.

M = T(c) Fx Fy S R(-a3) [R(a4) A R(-a4)] T(t) T(-c), c = (W/2 - 1/2, H/2 - 1/2) the image centre:
- a0 ~ Bernoulli(1/2) always: x-flip Fx = diag(1 - 2 a0, 1).
- each of the following is enabled per sample with probability a_prob (0.12), else its parameters are 0:
  a1 ~ Bernoulli(1/2): y-flip; a2 ~ N(0, 1): isotropic scale a_scale^a2 (a_scale 2^0.2);
  a3 ~ U[-pi, pi): rotation R(-a3); a4 ~ U[-pi, pi), a5 ~ N(0, 1): anisotropic scale (a_aniso^a5, a_aniso^-a5)
  along angle a4; a6, a7 ~ N(0, 1): translation (a_trans W a6, a_trans H a7) pixels (a_trans 1/8).
The 9-d conditioning vector is [a0, a1, a2, cos(a3) - 1, sin(a3), a5 cos(a4), a5 sin(a4), a6, a7]: zero
for the identity (hence zeros mean "not augmented" at sampling time). Note the reference's ambiguity, kept:
(a4, a5) and (a4 + pi, -a5) give the same cond entries 5-6 but different matrices.
Reference details: it reads ``h, w = image.size`` (PIL's (width, height)), so for non-square images its
translation uses the swapped sizes; we use W for x and H for y (identical for the square images used here).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PARAM_NAMES = ("a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7")


def _eye(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.eye(3, dtype=dtype).expand(n, 3, 3).clone()


def translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    """(N, 3, 3) translation matrices."""
    m = _eye(len(tx), tx.dtype)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    """(N, 3, 3) axis-aligned scale matrices."""
    m = _eye(len(sx), sx.dtype)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate2d(theta: Tensor) -> Tensor:
    """(N, 3, 3) rotations [[cos, -sin], [sin, cos]] in (x, y) pixel coordinates (y points down)."""
    m = _eye(len(theta), theta.dtype)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def params_to_matrix(a: Tensor, height: int, width: int, a_scale: float = 2**0.2, a_aniso: float = 2**0.2,
                     a_trans: float = 1 / 8) -> Tensor:
    """Compose the (N, 3, 3) float64 matrices M (input -> output pixel coordinates) from raw params (N, 8)."""
    a = a.double()
    a0, a1, a2, a3, a4, a5, a6, a7 = a.unbind(1)
    one = torch.ones_like(a0)
    cx, cy = (width / 2 - 0.5) * one, (height / 2 - 0.5) * one
    mats = [
        translate2d(cx, cy),
        scale2d(1 - 2 * a0, one),  # x-flip
        scale2d(one, 1 - 2 * a1),  # y-flip
        scale2d(a_scale**a2, a_scale**a2),  # isotropic scale
        rotate2d(-a3),  # rotation
        rotate2d(a4), scale2d(a_aniso**a5, a_aniso**-a5), rotate2d(-a4),  # anisotropic scale along a4
        translate2d(a_trans * width * a6, a_trans * height * a7),  # translation
        translate2d(-cx, -cy),
    ]
    m = mats[0]
    for nxt in mats[1:]:
        m = m @ nxt
    return m


def params_to_cond(a: Tensor) -> Tensor:
    """The reference's 9-d augmentation conditioning (N, 9) float32 from raw params (N, 8)."""
    a0, a1, a2, a3, a4, a5, a6, a7 = a.float().unbind(1)
    return torch.stack([a0, a1, a2, a3.cos() - 1, a3.sin(), a5 * a4.cos(), a5 * a4.sin(), a6, a7], dim=1)


def _reflect_index(i: Tensor, n: int) -> Tensor:
    """numpy.pad 'reflect' index map into [0, n): mirror about pixel centres 0 and n - 1 (period 2(n - 1))."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i > n - 1, period - i, i)


def _catmull_rom(t: Tensor) -> Tensor:
    """Cubic-convolution weights (Keys a = -0.5), stacked (4, ...), of the taps at offsets -1, 0, 1, 2 for t in [0, 1).

    These are the coefficients of skimage's ``cubic_interpolation`` (Catmull-Rom spline).
    """
    t2, t3 = t * t, t * t * t
    return torch.stack([0.5 * (-t + 2 * t2 - t3), 0.5 * (2 - 5 * t2 + 3 * t3), 0.5 * (t + 4 * t2 - 3 * t3),
                        0.5 * (t3 - t2)])


def warp_affine(x: Tensor, mat: Tensor) -> Tensor:
    """out(p) = x(mat^-1 p) per sample, as skimage ``warp(order=3, mode='reflect')`` on pixel coordinates.

    x: (N, C, H, W); mat: (N, 3, 3) mapping input (x=col, y=row) positions to output positions.
    Coordinates are computed in float64 on the CPU; the 16-tap gather runs on x's device and dtype.
    """
    n, c, h, w = x.shape
    inv = torch.linalg.inv(mat.double().cpu())
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    grid = torch.stack([cols.flatten(), rows.flatten(), torch.ones(h * w, dtype=torch.float64)])  # (3, HW)
    src = inv @ grid  # (N, 3, HW)
    sx, sy = src[:, 0] / src[:, 2], src[:, 1] / src[:, 2]
    fx, fy = sx.floor(), sy.floor()
    offsets = torch.arange(-1, 3).view(4, 1, 1)
    ix = _reflect_index(fx.long() + offsets, w)  # (4, N, HW)
    iy = _reflect_index(fy.long() + offsets, h)
    idx = (iy[:, None] * w + ix[None]).permute(2, 0, 1, 3).reshape(n, 1, 16 * h * w)  # (N, 1, 4*4*HW)
    weight = _catmull_rom(sy - fy)[:, None] * _catmull_rom(sx - fx)[None]  # (4, 4, N, HW)
    weight = weight.permute(2, 0, 1, 3).reshape(n, 1, 16, h * w).to(device=x.device, dtype=x.dtype)
    taps = x.reshape(n, c, h * w).gather(2, idx.to(x.device).expand(n, c, -1)).view(n, c, 16, h * w)
    return (taps * weight).sum(2).view(n, c, h, w)


class KarrasAugment:
    """Batched Karras augmentation: ``aug(x, generator) -> (x_aug, aug_cond)`` for x (N, C, H, W) in [-1, 1].

    Args:
        a_prob: probability of each of y-flip, scale, rotation, anisotropy, translation (spec: 0.12).
        disable_all: return the input unchanged and a zero cond (the reference's switch; random numbers
            are still drawn so the stream does not depend on it).
        xflip: the always-on x-flip with p = 1/2; False forces a0 = 0 (not in the reference; for tests).
        a_scale, a_aniso, a_trans: the reference's magnitudes (2^0.2, 2^0.2, 1/8).
    The warp is linear with weights summing to one, so warping [-1, 1] values equals the reference's warp of
    [0, 1] values mapped by 2v - 1. Random numbers come from ``generator`` (CPU); outputs are on x's device.
    """

    def __init__(self, a_prob: float = 0.12, disable_all: bool = False, xflip: bool = True,
                 a_scale: float = 2**0.2, a_aniso: float = 2**0.2, a_trans: float = 1 / 8) -> None:
        self.a_prob, self.disable_all, self.xflip = a_prob, disable_all, xflip
        self.a_scale, self.a_aniso, self.a_trans = a_scale, a_aniso, a_trans

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Raw parameters (N, 8) = a0..a7, float64, distributed as in the reference."""
        g, dt = generator, torch.float64

        def rand() -> Tensor:
            return torch.rand(n, generator=g, dtype=dt)

        def coin() -> Tensor:
            return torch.randint(2, (n,), generator=g).to(dt)

        def enabled() -> Tensor:
            return (rand() < self.a_prob).to(dt)

        a0 = coin() * float(self.xflip)
        a1 = coin() * enabled()
        a2 = torch.randn(n, generator=g, dtype=dt) * enabled()
        a3 = (rand() * 2 * math.pi - math.pi) * enabled()
        do = enabled()
        a4 = (rand() * 2 * math.pi - math.pi) * do
        a5 = torch.randn(n, generator=g, dtype=dt) * do
        do = enabled()
        a6 = torch.randn(n, generator=g, dtype=dt) * do
        a7 = torch.randn(n, generator=g, dtype=dt) * do
        return torch.stack([a0, a1, a2, a3, a4, a5, a6, a7], dim=1)

    def matrix(self, a: Tensor, height: int, width: int) -> Tensor:
        """(N, 3, 3) input-to-output pixel-coordinate matrices for raw params ``a``."""
        return params_to_matrix(a, height, width, self.a_scale, self.a_aniso, self.a_trans)

    def apply(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """Augment x with given raw params (N, 8); returns (x_aug, aug_cond (N, 9) float32 on x's device)."""
        cond = params_to_cond(a).to(x.device)
        if self.disable_all:
            return x, torch.zeros_like(cond)
        return warp_affine(x, self.matrix(a, x.shape[-2], x.shape[-1])), cond

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.apply(x, self.sample_params(x.shape[0], generator))
