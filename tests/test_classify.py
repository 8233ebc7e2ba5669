"""The classifier recipe's parts: batch augmentation, normalisation statistics, and the range test's LR rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from harness.recipes.classify import BatchAugment, channel_stats, suggest_lr


def _images(n=16, c=3, h=8, w=8, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_is_a_window_of_the_zero_padded_image_and_keeps_shape_and_dtype():
    x = _images()
    torch.manual_seed(0)
    out = BatchAugment(False, 2, 9, 1, crop_pad=2, flip=False)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], out[i])]
        assert hits, f"image {i} is not a crop of its padded input"
        shifts.add(hits[0])
    assert len(shifts) > 3  # offsets differ per image


def test_flip_mirrors_about_half_of_the_images():
    x = _images(n=400, h=4, w=4)
    torch.manual_seed(1)
    out = BatchAugment(False, 2, 9, 1, crop_pad=0, flip=True)(x)
    flipped = sum(torch.equal(o, i.flip(-1)) and not torch.equal(o, i) for o, i in zip(out, x))
    unchanged = sum(torch.equal(o, i) for o, i in zip(out, x))
    assert flipped + unchanged == 400 and 150 < flipped < 250


@pytest.mark.parametrize("group", [1, 4])
def test_randaugment_changes_images_and_keeps_uint8(group):
    x = _images(n=8, h=32, w=32)
    torch.manual_seed(2)
    out = BatchAugment(True, 2, 9, group, crop_pad=0, flip=False)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert sum(not torch.equal(o, i) for o, i in zip(out, x)) >= 4


def test_channel_stats_normalise_to_zero_mean_unit_std():
    x = _images(n=64, c=3, h=8, w=8)
    mean, std = channel_stats(x)
    z = (x.float() / 255 - mean) / std
    assert mean.shape == (1, 3, 1, 1)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-4)


def test_suggest_lr_picks_the_steepest_descent_or_a_tenth_of_the_minimum():
    lrs = list(np.logspace(-7, 0, 200))
    # a loss flat until 1e-4, falling fastest around 1e-3, minimum at 1e-2, diverging after
    losses = [4.0 - 2.0 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + max(0.0, math.log10(lr) + 2) ** 2 * 5
              for lr in lrs]
    steep = suggest_lr(lrs, losses, "steepest")
    assert 3e-4 < steep < 3e-3
    assert suggest_lr(lrs, losses, "min_tenth") == pytest.approx(lrs[int(np.argmin(losses))] / 10)
