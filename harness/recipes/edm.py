"""The EDM diffusion recipe: its algorithm on the training skeleton
(``harness.training.loop``).

Per step: a batch from the in-memory dataset, Karras augmentation (9-d conditioning), class dropout to the null
class, stratified cosine-interpolated sigmas, the soft-min-SNR Karras loss, AdamW with the model's own param
groups, gradient clipping, and the inverse-power EMA. Every ``eval.every`` steps (and at the last step): samples
from the EMA model (DPM-Solver++(2M), 50 steps, Karras schedule), FID/KID or the classifier-feature distances,
a held-out denoising loss, a sample grid, and a checkpoint. Runs under Accelerate (DDP when Ray Train starts
several workers; mixed precision and gradient accumulation from the study).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import nn

from harness.study.schema import EvalSpec
from harness.training.context import TrialContext
from harness.training.loop import Training, load_split, typed


class _LossModule(nn.Module):
    """Wraps the model so the whole loss runs inside ``forward``: DDP only synchronises gradients of work done
    through its wrapped module's forward, and the Karras loss calls ``model.inner``, not ``model.forward``."""

    def __init__(self, model: nn.Module, weighting: str) -> None:
        super().__init__()
        self.model = model
        self.weighting = weighting

    def forward(self, x0, sigma, noise, class_labels, aug_cond):
        from harness.diffusion.edm import karras_loss

        return karras_loss(self.model, x0, sigma, noise, class_labels=class_labels, aug_cond=aug_cond,
                           weighting=self.weighting)


def _heldout(trial: dict[str, Any], ctx: TrialContext, train):
    """The test split for the held-out denoising loss; the training data when a dataset has no test split."""
    from harness.training.data import DataError

    try:
        return load_split(trial, ctx, "test")
    except DataError:
        return train


def train_edm(trial: dict[str, Any], ctx: TrialContext) -> None:
    """Train one block-sharing (or any EDM-preconditioned) model; see the module docstring."""
    from harness.diffusion.augment import KarrasAugment
    from harness.diffusion.edm import dropout_classes, ema_decay, sample_sigmas_train
    from harness.recipes.edm_config import EDMTrain
    from harness.training.ema import ema_update
    from harness.training.speed import to_format

    run = Training(trial, ctx, EDMTrain)
    cfg, gen, mine = run.cfg, run.gen, run.mine
    train = run.data("train")
    model, model_cfg = run.model()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = run.optimizer(torch.optim.AdamW, model.param_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                        eps=cfg.eps)
    batches = run.batches(train)
    augment = KarrasAugment(cfg.augment_prob) if cfg.augment_prob > 0 else None
    run.track(model=model, ema=ema, opt=opt, batches=batches)
    run.resume()
    loss_module, opt = run.acc.prepare(_LossModule(model, cfg.loss_weighting), opt)
    num_classes = model_cfg.num_classes

    def train_step(step: int) -> tuple[int, dict[str, torch.Tensor]]:
        loss_module.train()
        with ctx.data_wait():
            x0, y = next(batches)  # this rank's slice of the global batch
            aug_cond = None
            if augment is not None:  # parameters drawn for the global batch, applied to the slice
                x0, aug_cond = augment.apply(x0, augment.sample_params(cfg.batch_size, gen)[mine])
            x0 = to_format(x0, cfg)
        if num_classes:
            y_global = torch.zeros(cfg.batch_size, dtype=y.dtype, device=y.device)
            y_global[mine] = y  # only the slice's labels matter; the dropout draw covers the global batch
            y = dropout_classes(y_global, num_classes, cfg.class_dropout, gen)[mine]
        else:
            y = None
        sigma = sample_sigmas_train(cfg.batch_size, model.sigma_data, gen, device=run.device)[mine]
        noise = torch.randn((cfg.batch_size, *x0.shape[1:]), generator=gen)[mine].to(run.device)
        with run.acc.accumulate(loss_module):
            loss = loss_module(x0, sigma, noise, y, aug_cond).mean()
            run.acc.backward(loss)
            if run.acc.sync_gradients and cfg.grad_clip > 0:
                run.acc.clip_grad_norm_(loss_module.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        ema_update(ema, model, ema_decay(step, cfg.ema_power, cfg.ema_max))
        return len(x0), {"loss": loss}

    run.run(train_step, lambda step, last: evaluate(ema, trial, ctx, train, step), log=lambda: {"epoch": batches.epoch})


def _distance_fn(ev: EvalSpec, trial: dict[str, Any], ctx: TrialContext, train):
    """uint8 samples -> FID/KID (or the classifier distances) against a fixed random subset of n unaugmented
    training images (spec, Evaluation); the reference's features are extracted once and cached."""
    from harness.eval.image_metrics import image_distance, train_classifier_extractor

    n = int(ev.n_samples)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    ref = train.x[idx]
    classifier = None
    if ev.extractor == "classifier":
        classifier = train_classifier_extractor(train.x, train.y, train.num_classes, ctx.cache_dir,
                                                train.content_hash()[:16])
    return lambda samples: image_distance(
        samples, ref, f"{train.content_hash()[:16]}-{n}", cache_dir=ctx.cache_dir, extractor=ev.extractor,
        weights_path=ev.inception_weights, classifier=classifier, kid="kid" in ev.metrics, seed=0)


def evaluate(ema: nn.Module, trial: dict[str, Any], ctx: TrialContext, train, step: int):
    """Samples from the EMA model, image distances against unaugmented training images, held-out denoising loss,
    and a sample grid. Returns (metrics, artifact paths, tags)."""
    from torchvision.utils import save_image

    from harness.diffusion.edm import denoising_loss_at, generate
    from harness.eval.draws import evaluate_draws
    from harness.training.data import to_uint8

    ev: EvalSpec = typed(EvalSpec, trial["eval"])
    cfg = ema.config
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    t0 = time.perf_counter()
    n = int(ev.n_samples)
    wanted = set(ev.metrics)
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    grid_dir = ctx.run_dir / "samples"
    grid_dir.mkdir(parents=True, exist_ok=True)
    grid_path = grid_dir / f"step_{step:09d}.png"
    distance = _distance_fn(ev, trial, ctx, train) if wanted & {"fid", "kid"} else None

    def one(draw: int, noise_seed: int) -> dict[str, Any]:
        t1 = time.perf_counter()
        g = torch.Generator().manual_seed(noise_seed)  # draw 0: the same noise at every evaluation
        samples, _labels, nfe = generate(ema, n, shape, cfg.num_classes, steps=ev.sampler_steps, sampler=ev.sampler,
                                         generator=g, batch_size=ev.batch_size)
        out: dict[str, Any] = {"sample_seconds": time.perf_counter() - t1, "nfe": nfe}
        if draw == 0:
            k = min(ev.grid, n)
            save_image((samples[:k] + 1) / 2, grid_path, nrow=int(math.ceil(math.sqrt(k))))
        if distance is not None:
            t2 = time.perf_counter()
            out.update(distance(to_uint8(samples)))
            out["metric_seconds"] = time.perf_counter() - t2
        return out

    for key, value in evaluate_draws(ev.sampling_seeds, int(trial["seed"]), one).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
        else:
            tags[f"harness.eval.{key}"] = str(value)
    if "denoise_loss" in wanted:
        held = _heldout(trial, ctx, train)
        x_held = held.x[: min(len(held), 512)]
        from harness.training.data import to_unit

        labels = held.y[: len(x_held)] if cfg.num_classes else None
        for sigma, value in denoising_loss_at(ema, to_unit(x_held), class_labels=labels).items():
            metrics[f"denoise_loss_sigma_{sigma:g}"] = value
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics, [str(grid_path)], tags


def calibrate_edm(trial: dict[str, Any], ctx: TrialContext, draws: int) -> list:
    """The real-vs-real floor of ``evaluate``'s distances: n real training images outside its reference subset
    against that subset, ``draws`` times."""
    from harness.eval.calibration import real_vs_real

    ev: EvalSpec = typed(EvalSpec, trial["eval"])
    if not set(ev.metrics) & {"fid", "kid"}:
        return []
    train = load_split(trial, ctx, "train")
    n = int(ev.n_samples)
    rest = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[n:]  # _distance_fn's subset is [:n]
    return real_vs_real(_distance_fn(ev, trial, ctx, train), train.x[rest], n, draws)
