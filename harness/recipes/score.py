"""The score-based (NCSN) recipe: Song's score-SDE tutorial on MNIST, then the compression study's measurements.

Per epoch: shuffled batches of [0, 1] images (the tutorial's ToTensor scaling), denoising score matching with
t ~ U(eps, 1), Adam, an optional EMA. After the last epoch: the trial's compression (pruning, int8 quantisation),
sizes and parameter counts, inference time per image with the sampler's NFE, and image quality of n samples.

t and the noise are drawn for the global batch and each rank keeps its slice, so N data-parallel workers train as one
does (harness.training.loop), provided every batch of an epoch, the last (smaller) one included, divides evenly
across them: otherwise the ranks leave that batch's remainder untrained.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from harness.training.context import TrialContext, TrialFailed
from harness.training.loop import Training


def train_score(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.diffusion.score import SAMPLERS, dsm_draws, dsm_loss
    from harness.recipes.compression_eval import check_arm, end_epoch, report_final
    from harness.recipes.score_config import ScoreTrain
    from harness.training.data import shard_slice
    from harness.training.ema import ema_update

    run = Training(trial, ctx, ScoreTrain, seed_scale=1)
    cfg, acc, gen = run.cfg, run.acc, run.gen
    if run.ev.sampler not in SAMPLERS:
        raise TrialFailed(f"eval.sampler {run.ev.sampler!r} is not a score sampler; use one of {', '.join(SAMPLERS)}")
    check_arm(cfg.quantize, str(acc.device))
    train, test = run.data("train"), run.data("test")
    model, model_cfg = run.model()
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay else None
    opt = run.optimizer(torch.optim.Adam, model.parameters(), lr=cfg.lr)
    batches = run.batches(train, drop_last=False)
    run.track(model=model, opt=opt, batches=batches, ema=ema)

    with ctx.training_lock():  # pruning and int8 arms share their baseline's trained model (Trial.train_hash)
        run.resume("history")
        history = list(run.restored.get("history", []))
        net, opt = acc.prepare(model, opt)
        while run.step < cfg.epochs:
            t0 = time.perf_counter()
            for i, x, _y in run.epoch_batches(batches, net):
                # t and z for this step's global batch (an epoch's last may be smaller), this rank's slice of them
                n = min(cfg.batch_size, len(train) - i * cfg.batch_size)
                t, z = dsm_draws(n, tuple(x.shape[1:]), cfg.eps, gen)
                mine = shard_slice(n, run.rank, run.world_size)
                loss = dsm_loss(net, (x + 1) / 2, model.config.sigma, cfg.eps, t=t[mine], noise=z[mine])
                run.optimize(loss, net, opt)
                if ema is not None:
                    ema_update(ema, model, cfg.ema_decay)
                run.window.add(len(x), loss=loss)
            run.step += 1
            ctx.trained_epochs += 1
            end_epoch(run, history, time.perf_counter() - t0)

    report_final(ctx, cfg, history, ema if ema is not None else model,
                 lambda final: _finish(final, run, model_cfg, train, test))


def _finish(model, run: Training, model_cfg, train, test):
    """Compression, measurements and samples of the trained (or EMA) model."""
    from harness.diffusion.score import SAMPLERS
    from harness.recipes.compression_eval import compress, image_quality, inference_ms_per_image, save_grid
    from harness.training.data import to_uint8

    cfg, ev, ctx, seed = run.cfg, run.ev, run.ctx, run.seed

    model, metrics = compress(model.eval(), cfg, seed)
    shape = (model_cfg.in_channels, model_cfg.input_size, model_cfg.input_size)
    sampler = SAMPLERS[ev.sampler]
    kwargs = {"steps": ev.sampler_steps} if ev.sampler != "ode" else {}

    def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
        x, nfe = sampler(model, n, shape, sigma=model_cfg.sigma, eps=cfg.sample_eps, generator=g, **kwargs)
        return to_uint8(x.clamp(0, 1) * 2 - 1), nfe  # [0, 1] -> uint8, as the tutorial clamps

    metrics.update(inference_ms_per_image(sample))
    quality, tags, samples = image_quality(sample, ev, train, test, ctx, seed)
    metrics.update(quality)
    return metrics, [save_grid(samples, ctx, ev.grid)], tags
