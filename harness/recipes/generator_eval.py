"""What the class-conditional image generators (v-diffusion, the conditional GAN) share: class-balanced sampling in
batches, a sample grid, and image distances against the first n training images (FID/KID with Inception features,
or the classifier-feature distances, labelled as such)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.study.schema import EvalSpec
from harness.training.context import TrialContext
from harness.training.loop import typed

# (n, labels (n,), generator) -> (uint8 images (n, C, H, W), NFE per image)
LabelledSampler = Callable[[int, torch.Tensor, torch.Generator], tuple[torch.Tensor, int]]


def balanced_sampler(sample: LabelledSampler, num_classes: int):
    """A measure.SampleFn (n, generator) drawing labels 0, 1, .., K-1, 0, .. across successive calls, so n samples
    cover the classes evenly."""
    state = {"next": 0}

    def fn(n: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
        y = (state["next"] + torch.arange(n)) % max(num_classes, 1)
        state["next"] += n
        return sample(n, y, g)

    return fn


def evaluate_generator(sample: LabelledSampler, num_classes: int, trial: dict[str, Any], ctx: TrialContext, train,
                       step: int) -> tuple[dict[str, float], list[str], dict[str, str]]:
    """n class-balanced samples (eval.n_samples, in batches of eval.batch_size, a fixed noise seed so evaluations
    are comparable over training), their grid, and distances to the first n training images."""
    from harness.recipes.compression_eval import grid_png, image_quality

    ev = typed(EvalSpec, trial["eval"])
    nfe: dict[str, int] = {}

    def counted(n: int, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, int]:
        x, nfe["n"] = sample(n, y, g)
        return x, nfe["n"]

    quality, tags, samples = image_quality(balanced_sampler(counted, num_classes), ev, train, train, ctx,
                                           int(trial["seed"]))
    grid = grid_png(samples[: ev.grid], ctx.run_dir / "samples" / f"step_{step:09d}.png")
    return {**quality, "nfe": float(nfe["n"])}, [str(grid)], tags


def calibrate_generator(trial: dict[str, Any], ctx: TrialContext, draws: int) -> list:
    """The real-vs-real floor of ``evaluate_generator``'s distances (its reference: the first n training images)."""
    from harness.recipes.compression_eval import image_floor
    from harness.training.loop import load_split

    train = load_split(trial, ctx, "train")
    return image_floor(typed(EvalSpec, trial["eval"]), train, train, ctx, draws)
