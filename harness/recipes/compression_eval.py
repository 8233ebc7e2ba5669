"""What the compression study measures after training, shared by its recipes (score/NCSN and image DDPM):
compression applied to the trained model, sizes and parameter counts, inference time per image with its NFE,
and image quality against the test set (FID with Inception features, or the classifier-feature distance)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.study.schema import EvalSpec
from harness.training.context import TrialContext, TrialSkipped

SampleFn = Callable[[int, torch.Generator], tuple[torch.Tensor, int]]  # (n, generator) -> (uint8 images, NFE)
QUANTIZE = ("none", "int8_dynamic", "bnb8", "bnb4", "bnb8_adam8")  # bnb8_adam8: 8-bit Linear + 8-bit Adam


def end_epoch(run: Any, history: list[dict], seconds: float, **extra: Any) -> None:
    """The compression recipes' epoch end (``run.step`` is the epoch just trained): the report window's mean loss
    (a non-finite one fails the trial) appended to the training history, a checkpoint with the history, and a
    report every ``log_every`` epochs but the last (the last epoch's metrics go with the final measurements).
    ``extra``: further entries for the checkpoint."""
    ctx, cfg, epoch = run.ctx, run.cfg, run.step
    window = run.window.close(ctx, epoch, unit="epoch")
    history.append({"loss": window["loss"], "train_ms_per_epoch": seconds * 1000,
                    "data_wait_share": window["data_wait_share"]})
    ctx.save_checkpoint(run.checkpoint(history=history, **extra), epoch)
    if epoch < cfg.epochs and epoch % cfg.log_every == 0:
        ctx.report(epoch, history[-1], tags=run.take_tags())


def report_final(ctx: TrialContext, cfg: Any, history: list[dict], model: nn.Module,
                 finish: Callable[[nn.Module], tuple[dict, list[str], dict]]) -> None:
    """After training (here or by a trial sharing the model): the training curve, then on rank 0 ``finish(model)``
    (compression, measurements, samples), reported with the last epoch's metrics as the trial's final result."""
    tags = report_history(ctx, history, cfg.log_every)
    metrics, artifacts = dict(history[-1]) if history else {}, []
    if ctx.is_main:
        m, artifacts, more = finish(model)
        metrics.update(m)
        tags.update(more)
    ctx.report(cfg.epochs, metrics, artifacts, tags=tags, done=True)


def check_arm(quantize: str, device: str) -> None:
    """Before training: an arm the device cannot run is skipped with its reason (bitsandbytes needs CUDA)."""
    from harness.eval.compression import bnb_support

    if quantize.startswith("bnb"):
        ok, why = bnb_support(device)
        if not ok:
            raise TrialSkipped(why)


def compress(model: nn.Module, cfg: Any, seed: int) -> tuple[nn.Module, dict[str, float]]:
    """Apply the trial's post-training compression (pruning, then int8 dynamic quantisation) and measure the result."""
    from harness.eval.compression import count_params, prune_model, quantize_dynamic_int8, state_dict_bytes

    metrics: dict[str, float] = {}
    if cfg.prune_method:
        metrics.update(prune_model(model, cfg.prune_method, cfg.prune_amount, cfg.prune_set, seed=seed))
    metrics.update(count_params(model))
    if cfg.quantize == "int8_dynamic":
        model = quantize_dynamic_int8(model)
    metrics.update(state_dict_bytes(model))
    return model, metrics


def inference_ms_per_image(sample: SampleFn, batch: int = 4, repeats: int = 3) -> dict[str, float]:
    """Warm (one untimed call), median of ``repeats`` timed calls of the sampler on ``batch`` images."""
    from harness.eval.compression import time_per_call_ms

    nfe = {}

    def call() -> None:
        _, nfe["n"] = sample(batch, torch.Generator().manual_seed(0))

    ms = time_per_call_ms(call, warmup=1, repeats=repeats)
    return {"inference_ms_per_image": ms / batch, "nfe": float(nfe["n"])}


def save_grid(samples: torch.Tensor, ctx: TrialContext, k: int) -> str:
    """The first k uint8 samples as a grid PNG in the trial's samples folder; returns its path."""
    return str(grid_png(samples[:k], ctx.run_dir / "samples" / "final.png"))


def grid_png(images: torch.Tensor, path, nrow: int | None = None):
    """uint8 (N, C, H, W) images as one PNG grid at ``path`` (square-ish unless ``nrow`` is given)."""

    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255, path, nrow=nrow or int(math.ceil(math.sqrt(len(images)))))
    return path


def image_quality(sample: SampleFn, ev: EvalSpec, train, test, ctx: TrialContext, seed: int):
    """n generated images against the first n test images: FID/KID (Inception) or the classifier distances; with
    eval.sampling_seeds = k, k draws of n samples (the reference's features are extracted once and cached), their
    means and <metric>_sampling_sd. Returns (metrics, tags, the first draw's samples)."""
    from harness.eval.draws import evaluate_draws

    n = int(ev.n_samples)
    distance = _image_distance_fn(ev, train, test, ctx)
    first: list[torch.Tensor] = []

    def one(draw: int, noise_seed: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(noise_seed)
        samples = torch.cat([sample(min(ev.batch_size, n - start), g)[0] for start in range(0, n, ev.batch_size)])
        seconds = time.perf_counter() - t0
        if not first:
            first.append(samples)
        return {"sample_seconds": seconds, **distance(samples)}

    metrics: dict[str, float] = {}
    tags = {}
    for key, value in evaluate_draws(ev.sampling_seeds, seed, one).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
        else:
            tags[f"harness.eval.{key}"] = str(value)
    return metrics, tags, first[0]


def _image_distance_fn(ev: EvalSpec, train, test, ctx: TrialContext):
    """uint8 images -> FID/KID (or the classifier distances) against the first n images of ``test`` (the reference's
    features extracted once and cached); the classifier extractor is trained on ``train``."""
    from harness.eval.image_metrics import image_distance, train_classifier_extractor

    n = int(ev.n_samples)
    classifier = None
    if ev.extractor == "classifier":
        classifier = train_classifier_extractor(train.x, train.y, train.num_classes, ctx.cache_dir,
                                                train.content_hash()[:16])
    ref = test.x[:n]
    return lambda images: image_distance(
        images, ref, f"{test.content_hash()[:16]}-{len(ref)}", cache_dir=ctx.cache_dir, extractor=ev.extractor,
        weights_path=ev.inception_weights, classifier=classifier, kid="kid" in ev.metrics, seed=0)


def image_floor(ev: EvalSpec, train, test, ctx: TrialContext, draws: int):
    """``image_quality``'s real-vs-real floor: ``draws`` samples of n real images that hold none of the reference
    (the first n of ``test``): the rest of ``test`` when it has n more, else ``train`` when it is another split."""
    from harness.eval.calibration import real_vs_real

    n = int(ev.n_samples)
    if len(test) - n >= n:
        pool = test.x[n:]
    elif train is not test and train.content_hash() != test.content_hash():
        pool = train.x
    else:
        raise ValueError(f"real-vs-real at n = {n} needs {2 * n} images, the data has {len(test)}")
    return real_vs_real(_image_distance_fn(ev, train, test, ctx), pool, n, draws)


def report_history(ctx: Any, history: list[dict[str, float]], log_every: int) -> dict[str, str]:
    """Report the per-epoch training metrics of a trained model before its final epoch (those the driver already
    logged for this run are dropped there, by step), and return tags saying where the model was trained.

    A trial that shares a trained model with others (``ctx.shares_training``) may have trained none of it: its
    MLflow run still gets the training curve, from the checkpoint's history."""
    for epoch, metrics in enumerate(history[:-1], start=1):
        if epoch % log_every == 0:
            ctx.report(epoch, metrics)
    if not ctx.shares_training:
        return {}
    return {"harness.train_hash": str(ctx.trial.get("train_hash", "")),
            "harness.training": "trained here" if ctx.trained_epochs else "reused a shared trained model"}


def calibrate_images(trial: dict[str, Any], ctx: TrialContext, draws: int) -> list:
    """The real-vs-real floor of ``image_quality`` against the test split (the score and image DDPM recipes)."""
    from harness.training.loop import load_split, typed

    ev = typed(EvalSpec, trial["eval"])
    if not set(ev.metrics) & {"fid", "kid", "fd_classifier", "kd_classifier"}:
        return []
    return image_floor(ev, load_split(trial, ctx, "train"), load_split(trial, ctx, "test"), ctx, draws)
