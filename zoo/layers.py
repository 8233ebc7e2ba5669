"""Layers shared by zoo families where torch's own is measurably slow on the CPUs this harness runs on.

``Dropout``: on CPU, ``torch.nn.Dropout`` draws one 32-bit Mersenne-Twister number per element through
``bernoulli_``, which made dropout a large share of a block-sharing training step at width 128
(results/bench/README.md, "What changed to get there"). This one draws one 64-bit word per four elements and compares
15-bit lanes against a threshold, which is cheaper per element, from the same torch generator (so ``torch.manual_seed``
still fixes every mask). The drop probability is ``p`` rounded to a multiple of 2**-15 (0.05 -> 0.049988) and the
kept values are scaled by the inverse of the rounded keep probability, so E[output] = input exactly; on CUDA, and
when ``p`` is 0 or 1 or the module is in eval mode, it is ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LANE_BITS = 15  # int64 ``random_()`` fills [0, 2**63): of its four 16-bit lanes, 15 bits of each are uniform
_LANES = 4


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """(keep mask (bool, ``shape``), scale): each element kept with probability 1 - round(p * 2**15) / 2**15, the
    scale 1 / that probability. One 64-bit draw per four elements."""
    n = math.prod(int(s) for s in shape)
    threshold = round(p * 2**_LANE_BITS)
    words = torch.empty(-(-n // _LANES), dtype=torch.int64, device=device).random_(generator=generator)
    lanes = words.view(torch.int16)[:n].view(shape)  # little- or big-endian alike: every lane is masked below
    keep = lanes.bitwise_and(2**_LANE_BITS - 1) >= threshold
    return keep, 2**_LANE_BITS / (2**_LANE_BITS - threshold)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Functional form of :class:`Dropout`."""
    if not training or p <= 0 or p >= 1 or x.device.type != "cpu" or round(p * 2**_LANE_BITS) == 0:
        return F.dropout(x, p, training)
    keep, scale = dropout_mask(x.shape, p, x.device)
    return x * keep * scale  # autograd keeps the bool mask (1 byte per element), as torch's dropout does


class Dropout(nn.Module):
    """Drop-in for ``torch.nn.Dropout`` (same ``p``, same train/eval behaviour), faster on CPU; see the module."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
