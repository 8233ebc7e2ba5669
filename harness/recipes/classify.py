"""The image-classification recipe ("Modern Methods, Classical Constraints", the discriminator under 100k parameters
and 10k steps): one plain training function (CONVENTIONS 9).

1. Learning-rate range test (unless ``train.lr`` is set): torch-lr-finder's exponential sweep on augmented training
   batches, model and optimiser restored afterwards; its curve is logged as ``lr_find_loss`` / ``lr_find_lr`` over
   the sweep's own step index (the sweep does not count against ``train.steps``), the chosen peak as ``peak_lr``.
2. ``train.steps`` AdamW steps with OneCycleLR, label smoothing, gradient clipping, RandAugment + random crop +
   flip on the uint8 batch, inputs normalised by the training split's per-channel mean and std.
3. Every ``train.log_every`` steps: running training loss and accuracy (on the augmented batches) and the LR; every
   ``eval.every`` steps and at the end: validation loss and top-1 accuracy on the test split, and a checkpoint.

Under several workers each rank draws its own batches of ``batch_size / world_size`` (DDP averages gradients).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.training.context import TrialContext, TrialFailed


class BatchAugment:
    """RandAugment, random crop (zero padding) and horizontal flip on a uint8 (B, C, H, W) batch.

    Crop and flip are vectorised with per-image offsets; RandAugment (torchvision v2, which draws one op sequence
    per call) runs on groups of ``group`` images. Randomness comes from torch's global RNG, which the recipe seeds
    and checkpoints.
    """

    def __init__(self, randaugment: bool, ops: int, magnitude: int, group: int, crop_pad: int, flip: bool) -> None:
        from torchvision.transforms import v2

        self.randaugment = v2.RandAugment(num_ops=ops, magnitude=magnitude) if randaugment else None
        self.group = group
        self.crop_pad = crop_pad
        self.flip = flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.randaugment is not None:
            x = torch.cat([self.randaugment(chunk) for chunk in x.split(self.group)])
        b, _c, h, w = x.shape
        if self.crop_pad:
            p = self.crop_pad
            padded = F.pad(x, (p, p, p, p))
            oy, ox = torch.randint(0, 2 * p + 1, (2, b, 1))
            rows = (oy + torch.arange(h))[:, :, None]  # (B, H, 1)
            cols = (ox + torch.arange(w))[:, None, :]  # (B, 1, W)
            x = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()
        if self.flip:
            mirror = torch.rand(b) < 0.5
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
    from harness.recipes import param_groups, trial_model
    from harness.recipes.classify_config import ClassifyTrain
    from harness.training.data import TensorBatches, load_study_data
    from harness.training.speed import optimizer, prepare_model, to_format

    cfg = ClassifyTrain(**{k: tuple(v) if isinstance(v, list) else v for k, v in trial["train"].items()})
    acc = ctx.accelerator(cfg.mixed_precision, compile=cfg.compile)
    ev = trial["eval"]
    seed = int(trial["seed"])
    torch.manual_seed(seed * 1000 + ctx.rank)
    data = {**trial["data"], "root": str(ctx.data_root)}
    train = load_study_data(trial["dataset"], data, "train")
    test = load_study_data(trial["dataset"], data, "test")
    mean, std = channel_stats(train.x)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x.float().div(255) - mean.to(x.device)) / std.to(x.device)

    augment = BatchAugment(cfg.randaugment, cfg.randaugment_ops, cfg.randaugment_magnitude, cfg.augment_group,
                           cfg.crop_pad, cfg.flip)
    model, _model_cfg = trial_model(trial)
    model = prepare_model(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    per_worker = max(1, cfg.batch_size // ctx.world_size)
    gen = torch.Generator().manual_seed(seed * 1000 + ctx.rank)
    batches = TensorBatches(train, min(per_worker, len(train)), gen, device=acc.device, raw=True)

    state = ctx.load_checkpoint(required=("model", "opt", "sched", "batches", "rng", "step", "peak_lr"))
    step, peak_lr = 0, cfg.lr
    if state is not None:
        peak_lr = float(state["peak_lr"])
    elif peak_lr is None:  # range test on its own batch stream, the same on every rank
        t0 = time.perf_counter()
        finder_batches = TensorBatches(train, min(per_worker, len(train)), torch.Generator().manual_seed(seed + 777),
                                       device=acc.device, raw=True)
        peak_lr, history = lr_range_test(model, finder_batches, augment, norm, cfg, loss_fn, acc.device)
        _report_range_test(ctx, history, peak_lr, time.perf_counter() - t0)

    opt = optimizer(torch.optim.AdamW, param_groups(model, peak_lr, cfg.weight_decay), cfg, acc.device, lr=peak_lr,
                    betas=cfg.betas)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=peak_lr, total_steps=cfg.steps, pct_start=cfg.pct_start, anneal_strategy="cos",
        div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
    model, opt = acc.prepare(model, opt)
    resume_tags = {"harness.resumed_from_step": str(step)} if state is not None else {}

    loss_sum = torch.zeros((), device=acc.device)
    correct = torch.zeros((), dtype=torch.long, device=acc.device)
    seen, t_log = 0, time.perf_counter()
    model.train()
    while step < cfg.steps:
        with ctx.data_wait():
            x, y = next(batches)
            x = to_format(norm(augment(x)), cfg)
        logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        step += 1

        last = step == cfg.steps
        is_eval = step % ev["every"] == 0 or last
        if step % cfg.log_every == 0 or is_eval:
            train_loss = float(loss_sum) / seen
            if not math.isfinite(train_loss):
                raise TrialFailed(f"training loss became {train_loss} by step {step}")
            elapsed = time.perf_counter() - t_log
            metrics = {"train_loss": train_loss, "train_accuracy": float(correct) / seen,
                       "lr": sched.get_last_lr()[0], "images_per_s": seen * ctx.world_size / max(elapsed, 1e-9),
                       "data_wait_share": ctx.data_wait_share(elapsed)}
            loss_sum.zero_()
            correct.zero_()
            seen = 0
            tags, resume_tags = resume_tags, {}
            ckpt = None
            if is_eval:
                acc.wait_for_everyone()
                if ctx.is_main:
                    metrics.update(evaluate(acc.unwrap_model(model), test, norm, ev["batch_size"], acc.device))
                    ckpt = {
                        "model": acc.unwrap_model(model).state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "batches": batches.state_dict(), "rng": torch.get_rng_state(),
                        "step": step, "peak_lr": peak_lr, "config": trial}
                acc.wait_for_everyone()
            if last:
                metrics.update(peak_lr=peak_lr, params=sum(p.numel() for p in model.parameters() if p.requires_grad))
            ctx.report(step, metrics, tags=tags, done=last, checkpoint=ckpt)
            t_log = time.perf_counter()


def _report_range_test(ctx: TrialContext, history: dict[str, list], peak_lr: float, seconds: float) -> None:
    """The range test's curve as its own metrics (``lr_find_*``) over the sweep's step index, one report per sweep
    step; then the chosen peak LR and the test's duration."""
    for i, (lr, loss) in enumerate(zip(history["lr"], history["loss"])):
        if math.isfinite(loss):
            ctx.report(i, {"lr_find_lr": lr, "lr_find_loss": loss})
    ctx.report(0, {"peak_lr": peak_lr, "lr_find_seconds": seconds})
