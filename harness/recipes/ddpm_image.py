"""The class-conditional image DDPM recipe (dome272's conditional training loop), then the compression study's
measurements: per epoch, shuffled [-1, 1] batches, t uniform on {0..T-1}, the noise MSE with the labels dropped for
the whole batch with probability 0.1, AdamW, and the EMA copy; after the last epoch, compression, sizes, inference
time per image with its NFE (2 per step with guidance), and the quality of n guided samples.

t and the noise are drawn for the global batch and each rank keeps its slice (the label-dropout draw is one per
batch), so N data-parallel workers train as one does (harness.training.loop), provided every batch of an epoch, the
last (smaller) one included, divides evenly across them: otherwise the ranks leave that batch's remainder untrained.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import torch

from harness.training.context import TrialContext
from harness.training.loop import Training


def train_ddpm_image(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.diffusion.ddpm import DDPM
    from harness.recipes.compression_eval import check_arm, end_epoch, report_final
    from harness.recipes.ddpm_image_config import DDPMImageTrain
    from harness.training.data import shard_slice
    from harness.training.ema import ema_update

    run = Training(trial, ctx, DDPMImageTrain, seed_scale=1)
    cfg, acc, gen = run.cfg, run.acc, run.gen
    check_arm(cfg.quantize, str(acc.device))
    train, test = run.data("train"), run.data("test")
    model, model_cfg = run.model()
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay else None
    opt = run.optimizer(torch.optim.AdamW, model.parameters(), lr=cfg.lr)
    ddpm = DDPM(cfg.T, cfg.schedule, cfg.lbeta, cfg.ubeta)
    batches = run.batches(train, drop_last=False)
    run.track(model=model, opt=opt, batches=batches, ema=ema)

    with ctx.training_lock():  # pruning and int8 arms share their baseline's trained model (Trial.train_hash)
        run.resume("history", "opt_steps")
        history, opt_steps = list(run.restored.get("history", [])), int(run.restored.get("opt_steps", 0))
        net, opt = acc.prepare(model, opt)
        while run.step < cfg.epochs:
            t0 = time.perf_counter()
            for i, x, y in run.epoch_batches(batches, net):
                if model_cfg.num_classes == 0 or float(torch.rand((), generator=gen)) < cfg.label_dropout:
                    y = None  # unconditional batch: what guidance subtracts at sampling time
                # t and noise for this step's global batch (an epoch's last may be smaller), this rank's slice
                n = min(cfg.batch_size, len(train) - i * cfg.batch_size)
                t, noise = ddpm.draw(n, tuple(x.shape[1:]), gen, x.device, x.dtype)
                mine = shard_slice(n, run.rank, run.world_size)
                # DDP refuses a step that leaves parameters without a gradient, as the label embedding of an
                # unconditional batch (every rank drops the labels of the same batch): that step averages the
                # gradients itself, and those parameters keep none, as with one worker
                manual = y is None and model_cfg.num_classes > 0 and run.world_size > 1
                with acc.no_sync(net) if manual else contextlib.nullcontext():
                    loss = ddpm.loss(lambda x_t, t, y=y: net(x_t, t, y), x, t=t[mine], noise=noise[mine])
                    opt.zero_grad(set_to_none=True)
                    acc.backward(loss)
                if manual:
                    _average_gradients(acc, model)
                opt.step()
                if ema is not None:  # a copy of the weights until ema_start optimiser steps, then the EMA
                    ema_update(ema, model, cfg.ema_decay if opt_steps >= cfg.ema_start else 0.0)
                run.window.add(len(x), loss=loss)
                opt_steps += 1
            run.step += 1
            ctx.trained_epochs += 1
            end_epoch(run, history, time.perf_counter() - t0, opt_steps=opt_steps)

    report_final(ctx, cfg, history, ema if ema is not None else model,
                 lambda final: _finish(final, run, model_cfg, ddpm, train, test))


def _average_gradients(acc: Any, model: torch.nn.Module) -> None:
    """The mean over the ranks of the gradients each rank computed (one all-reduce), as DDP would average them."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    mean = acc.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    for g, v in zip(grads, mean.split([g.numel() for g in grads])):
        g.copy_(v.view(g.shape))


def _finish(model, run: Training, model_cfg, ddpm, train, test):
    """Compression, measurements and guided samples of the trained (or EMA) model."""
    from harness.recipes.compression_eval import compress, image_quality, inference_ms_per_image, save_grid
    from harness.training.data import to_uint8

    cfg, ev, ctx, seed = run.cfg, run.ev, run.ctx, run.seed
    model, metrics = compress(model.eval(), cfg, seed)
    shape = (model_cfg.in_channels, model_cfg.input_size, model_cfg.input_size)
    k = model_cfg.num_classes

    def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
        y = torch.randint(0, k, (n,), generator=g) if k else None
        guided = k and cfg.cfg_scale > 0

        def eps(x, t):
            cond = model(x, t, y)
            if not guided:
                return cond
            return torch.lerp(model(x, t, None), cond, cfg.cfg_scale)  # upstream's guidance: u + w (c - u)

        x = ddpm.sample(eps, n, shape, generator=g, device="cpu")
        return to_uint8(x.clamp(-1, 1)), ddpm.T * (2 if guided else 1)

    metrics.update(inference_ms_per_image(sample, batch=2, repeats=1))
    quality, tags, samples = image_quality(sample, ev, train, test, ctx, seed)
    metrics.update(quality)
    return metrics, [save_grid(samples, ctx, ev.grid)], tags
