"""The image-classification recipe ("Modern Methods, Classical Constraints", the discriminator under 100k parameters
and 10k steps): its algorithm on the training skeleton (harness.training.loop).

1. Learning-rate range test (unless ``train.lr`` is set): torch-lr-finder's exponential sweep on augmented training
   batches, model and optimiser restored afterwards; its curve is logged as ``lr_find_loss`` / ``lr_find_lr`` over
   the sweep's own step index (the sweep does not count against ``train.steps``), the chosen peak as ``peak_lr``.
2. ``train.steps`` AdamW steps with OneCycleLR, label smoothing, gradient clipping, RandAugment + random crop +
   flip on the uint8 batch, inputs normalised by the training split's per-channel mean and std.
3. Every ``train.log_every`` steps: running training loss and accuracy (on the augmented batches) and the LR; every
   ``eval.every`` steps and at the end: validation loss and top-1 accuracy on the test split, and a checkpoint.

Under several workers each rank trains its slice of the global batch (the same batches on any number of workers;
DDP averages gradients). The augmentations are drawn for the global batch from ``run.gen`` (the same on every rank)
and each rank keeps its slice, so any number of workers trains the same augmented samples. The range test runs on
every rank on its own streams, seeded the same on every rank (batches, augmentations, dropout), so every rank picks
the same peak LR (from batches of the per-rank size: it depends on the worker count).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.training.context import TrialContext
from harness.training.loop import Training, param_groups


class BatchAugment:
    """RandAugment, random crop (zero padding) and horizontal flip on a uint8 (B, C, H, W) batch.

    Crop and flip are vectorised with per-image offsets; RandAugment (torchvision v2, which draws one op sequence
    per call) runs on groups of ``group`` images of the global batch, each under its own seed. ``x`` may be the slice
    ``mine`` of a global batch of ``total`` images: every draw is made for the global batch from ``gen`` (default
    torch's global RNG) and the slice's part kept, so the images come out the same however the batch is split. A
    group cut by the slice boundary is applied to each part under the group's seed: the same ops on both sides (its
    ops are per-image). RandAugment's own draws come from torch's CPU RNG, seeded per group and restored after.
    """

    def __init__(self, randaugment: bool, ops: int, magnitude: int, group: int, crop_pad: int, flip: bool) -> None:
        from torchvision.transforms import v2

        self.randaugment = v2.RandAugment(num_ops=ops, magnitude=magnitude) if randaugment else None
        self.group = group
        self.crop_pad = crop_pad
        self.flip = flip

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None, mine: slice | None = None,
                 total: int | None = None) -> torch.Tensor:
        mine = slice(0, len(x)) if mine is None else mine
        total = len(x) if total is None else total
        assert mine.stop - mine.start == len(x) and 0 <= mine.start and mine.stop <= total, (mine, len(x), total)
        if self.randaugment is not None:
            g = self.group
            seeds = torch.randint(0, 2**62, (-(-total // g),), generator=gen).tolist()  # one per global group
            parts = []
            for start in range(mine.start - mine.start % g, mine.stop, g):  # the groups that meet this slice
                lo, hi = max(start, mine.start) - mine.start, min(start + g, mine.stop) - mine.start
                with torch.random.fork_rng(devices=[]):  # the CPU RNG only: RandAugment draws there
                    torch.default_generator.manual_seed(seeds[start // g])
                    parts.append(self.randaugment(x[lo:hi]))
            x = torch.cat(parts)
        b, _c, h, w = x.shape
        if self.crop_pad:
            p = self.crop_pad
            padded = F.pad(x, (p, p, p, p))
            oy, ox = torch.randint(0, 2 * p + 1, (2, total, 1), generator=gen)[:, mine].to(x.device)
            rows = (oy + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
            cols = (ox + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
            x = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()
        if self.flip:
            mirror = (torch.rand(total, generator=gen) < 0.5)[mine].to(x.device)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], shaped (1, C, 1, 1)."""
    xf = x.float().div_(255)
    return xf.mean((0, 2, 3), keepdim=True), xf.std((0, 2, 3), keepdim=True).clamp_min(1e-6)


def suggest_lr(lrs: list[float], losses: list[float], rule: str, skip_start: int = 10, skip_end: int = 5) -> float:
    """The peak LR from a range test: the LR of steepest descent of the smoothed loss (the common rule, as in
    torch-lr-finder's plot), or a tenth of the LR at the minimum loss."""
    lrs_a, losses_a = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if rule == "min_tenth":
        return float(lrs_a[int(np.nanargmin(losses_a))] / 10)
    inner = slice(skip_start, len(lrs_a) - skip_end) if len(lrs_a) > skip_start + skip_end + 2 else slice(None)
    lrs_a, losses_a = lrs_a[inner], losses_a[inner]
    if len(lrs_a) < 2:
        return float(lrs_a[0])
    return float(lrs_a[int(np.gradient(losses_a, np.log(lrs_a)).argmin())])


def lr_range_test(model: nn.Module, batches, augment, norm, cfg, loss_fn, device) -> tuple[float, dict[str, list]]:
    """torch-lr-finder's exponential range test on augmented, normalised batches; model state is restored."""
    from torch_lr_finder import LRFinder
    from torch_lr_finder.lr_finder import TrainDataLoaderIter

    class _Batches(TrainDataLoaderIter):
        def __init__(self) -> None:  # no DataLoader: batches come from the in-memory sampler
            self.auto_reset = True

        def __next__(self):
            x, y = next(batches)
            return norm(augment(x)), y

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr_find_min, weight_decay=cfg.weight_decay, betas=cfg.betas)
    finder = LRFinder(model, opt, loss_fn, device=device)
    finder.range_test(_Batches(), start_lr=cfg.lr_find_min, end_lr=cfg.lr_find_max, num_iter=cfg.lr_find_steps,
                      step_mode="exp", smooth_f=0.05, diverge_th=5)
    history = {k: [float(v) for v in vs] for k, vs in finder.history.items()}
    finder.reset()
    return suggest_lr(history["lr"], history["loss"], cfg.lr_find_rule), history


@torch.no_grad()
def evaluate(model: nn.Module, data, norm, batch_size: int, device) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy (no smoothing) over a whole split."""
    model.eval()
    loss, correct = 0.0, 0
    for x, y in zip(data.x.split(batch_size), data.y.split(batch_size)):
        logits = model(norm(x.to(device)))
        y = y.to(device)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    return {"val_loss": loss / len(data), "val_accuracy": correct / len(data)}


def train_classify(trial: dict[str, Any], ctx: TrialContext) -> None:
    """Train one classifier; see the module docstring."""
    from harness.recipes.classify_config import ClassifyTrain
    from harness.training.data import TensorBatches
    from harness.training.speed import to_format

    run = Training(trial, ctx, ClassifyTrain)
    cfg = run.cfg
    train, test = run.data("train"), run.data("test")
    mean, std = channel_stats(train.x)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x.float().div(255) - mean.to(x.device)) / std.to(x.device)

    augment = BatchAugment(cfg.randaugment, cfg.randaugment_ops, cfg.randaugment_magnitude, cfg.augment_group,
                           cfg.crop_pad, cfg.flip)
    model, _model_cfg = run.model()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    batches = run.batches(train, raw=True)
    run.track(model=model, batches=batches)  # the optimiser and schedule need the peak LR: restored below
    peak_lr = float(run.restored["peak_lr"]) if run.resume("opt", "sched", "peak_lr") else cfg.lr
    if peak_lr is None:  # range test on its own streams (batches, augmentations, dropout), the same on every rank
        t0, finder_gen = time.perf_counter(), torch.Generator().manual_seed(run.seed + 777)
        finder_batches = TensorBatches(train, cfg.batch_size // run.world_size, finder_gen, device=run.device, raw=True)
        with torch.random.fork_rng():
            torch.manual_seed(run.seed + 777)
            peak_lr, history = lr_range_test(model, finder_batches, lambda x: augment(x, finder_gen), norm, cfg,
                                             loss_fn, run.device)
        _report_range_test(ctx, history, peak_lr, time.perf_counter() - t0)
    opt = run.optimizer(torch.optim.AdamW, param_groups(model, peak_lr, cfg.weight_decay), lr=peak_lr,
                        betas=cfg.betas)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=peak_lr, total_steps=cfg.steps, pct_start=cfg.pct_start, anneal_strategy="cos",
        div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
    run.track(opt=opt, sched=sched)
    if run.step:
        opt.load_state_dict(run.restored["opt"])
        sched.load_state_dict(run.restored["sched"])
    net, opt = run.acc.prepare(model, opt)

    def train_step(step: int) -> tuple[int, dict[str, torch.Tensor]]:
        net.train()
        with ctx.data_wait():
            x, y = next(batches)  # this rank's slice of the global batch
            x = to_format(norm(augment(x, run.gen, run.mine, cfg.batch_size)), cfg)  # drawn for the global batch
        logits = net(x)
        loss = loss_fn(logits, y)
        run.optimize(loss, net, opt, sched)
        return len(y), {"train_loss": loss.detach() * len(y), "train_accuracy": (logits.detach().argmax(1) == y).sum()}

    def validate(step: int, last: bool):
        metrics = evaluate(model, test, norm, run.ev.batch_size, run.device)
        if last:
            metrics.update(peak_lr=peak_lr, params=sum(p.numel() for p in model.parameters() if p.requires_grad))
        return metrics, [], {}

    run.run(train_step, validate, log=lambda: {"lr": sched.get_last_lr()[0]},
            per_sample=("train_loss", "train_accuracy"), checkpoint_extra=lambda: {"peak_lr": peak_lr})


def _report_range_test(ctx: TrialContext, history: dict[str, list], peak_lr: float, seconds: float) -> None:
    """The range test's curve as its own metrics (``lr_find_*``) over the sweep's step index, one report per sweep
    step; then the chosen peak LR and the test's duration."""
    for i, (lr, loss) in enumerate(zip(history["lr"], history["loss"])):
        if math.isfinite(loss):
            ctx.report(i, {"lr_find_lr": lr, "lr_find_loss": loss})
    ctx.report(0, {"peak_lr": peak_lr, "lr_find_seconds": seconds})


def calibrate_classifier(trial: dict[str, Any], ctx: TrialContext, draws: int) -> list:
    """Chance accuracy on the test split (1/K); the binomial spread of a measured accuracy follows from it and n."""
    from harness.eval.calibration import chance
    from harness.training.loop import load_split

    test = load_split(trial, ctx, "test")
    return [chance("val_accuracy", test.num_classes, len(test))]
