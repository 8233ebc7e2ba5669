"""Is a trial's metric curve still moving at its end, and when did it reach a given quality?

A ranking of trials whose curves are still falling says more about training speed than about the architectures'
end points, so every trial's curve is checked against the metric's measured noise: the change between its last two
evaluations is compared with the spread a difference of two evaluations of one model has (sqrt(2) times the noise
of one evaluation, at 95%). Time-to-quality (the MLPerf way of comparing training speed) is the first evaluation
that reaches a stated value, in steps, images and wall time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

STILL_IMPROVING, PLATEAU, WORSENING, UNKNOWN = "still improving", "plateau", "worsening", "unknown"
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Convergence:
    state: str
    change: float  # last minus previous evaluation, signed so that > 0 is an improvement
    threshold: float  # the change noise alone exceeds 5% of the time (nan without a noise estimate)
    why: str = ""


def convergence(values: Sequence[float], noise_sd: float, higher_is_better: bool) -> Convergence:
    """The state of a curve (evaluations in step order) given the standard deviation of one evaluation's noise."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(vals) < 2:
        return Convergence(UNKNOWN, math.nan, math.nan, "fewer than two evaluations")
    change = (vals[-1] - vals[-2]) * (1 if higher_is_better else -1)
    if not (noise_sd >= 0 and math.isfinite(noise_sd)):
        return Convergence(UNKNOWN, change, math.nan, "no noise estimate")
    threshold = Z95 * math.sqrt(2) * noise_sd
    if change > threshold:
        return Convergence(STILL_IMPROVING, change, threshold)
    if change < -threshold:
        return Convergence(WORSENING, change, threshold)
    return Convergence(PLATEAU, change, threshold)


@dataclass(frozen=True)
class TimeToQuality:
    target: float
    step: int | None  # None: never reached
    images: int | None
    seconds: float | None


def time_to_quality(steps: Sequence[int], values: Sequence[float], target: float, higher_is_better: bool,
                    images_per_step: int, seconds: Sequence[float] | None = None) -> TimeToQuality:
    """The first evaluation at or past ``target``: its step, the training images seen by then and (when given, the
    wall time of each evaluation since the trial started) the seconds it took."""
    for i, (s, v) in enumerate(zip(steps, values)):
        if v is not None and math.isfinite(v) and (v >= target if higher_is_better else v <= target):
            return TimeToQuality(target, int(s), int(s) * images_per_step,
                                 float(seconds[i]) if seconds is not None else None)
    return TimeToQuality(target, None, None, None)
