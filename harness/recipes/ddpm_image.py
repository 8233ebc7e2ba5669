"""The class-conditional image DDPM recipe (dome272's conditional training loop), then the compression study's
measurements: per epoch, shuffled [-1, 1] batches, t uniform on {0..T-1}, the noise MSE with the labels dropped for
the whole batch with probability 0.1, AdamW, and the EMA copy; after the last epoch, compression, sizes, inference
time per image with its NFE (2 per step with guidance), and the quality of n guided samples."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from harness.training.context import TrialContext


def train_ddpm_image(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.diffusion.ddpm import DDPM
    from harness.diffusion.edm import ema_update
    from harness.recipes import restore, trial_model
    from harness.recipes.compression_eval import check_arm, end_epoch, report_final
    from harness.recipes.ddpm_image_config import DDPMImageTrain
    from harness.training.data import TensorBatches, load_study_data
    from harness.training.speed import optimizer, prepare_model, to_format

    cfg = DDPMImageTrain(**trial["train"])
    acc = ctx.accelerator(cfg.mixed_precision, compile=cfg.compile)
    check_arm(cfg.quantize, str(acc.device))
    seed = int(trial["seed"])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = {**trial["data"], "root": str(ctx.data_root)}
    train = load_study_data(trial["dataset"], data, "train")
    test = load_study_data(trial["dataset"], data, "test")
    model, model_cfg = trial_model(trial)
    model = prepare_model(model, cfg)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay else None
    opt = optimizer(torch.optim.AdamW, model.parameters(), cfg, acc.device, lr=cfg.lr)
    ddpm = DDPM(cfg.T, cfg.schedule, cfg.lbeta, cfg.ubeta)
    batches = TensorBatches(train, cfg.batch_size, gen, device=acc.device, drop_last=False)

    with ctx.training_lock():  # pruning and int8 arms share their baseline's trained model (Trial.train_hash)
        state = ctx.load_checkpoint(required=("model", "opt", "batches", *(["ema"] if ema is not None else [])))
        rest = restore(state, model=model, opt=opt, batches=batches, ema=ema)
        epoch, step, history = int(rest.get("epoch", 0)), int(rest.get("step", 0)), list(rest.get("history", []))
        model, opt = acc.prepare(model, opt)
        while epoch < cfg.epochs:
            model.train()
            t0, total = time.perf_counter(), torch.zeros((), device=acc.device)
            for _ in range(batches.batches_per_epoch):
                with ctx.data_wait():
                    x, y = next(batches)
                    x = to_format(x, cfg)
                if model_cfg.num_classes == 0 or float(torch.rand((), generator=gen)) < cfg.label_dropout:
                    y = None  # unconditional batch: what guidance subtracts at sampling time

                def eps(x_t, t, y=y):
                    return model(x_t, t, y)

                loss = ddpm.loss(eps, x, generator=gen)
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                if ema is not None:
                    if step < cfg.ema_start:
                        ema.load_state_dict(acc.unwrap_model(model).state_dict())
                    else:
                        ema_update(ema, acc.unwrap_model(model), cfg.ema_decay)
                total += loss.detach()
                step += 1
            epoch += 1
            ctx.trained_epochs += 1
            end_epoch(ctx, cfg, epoch, float(total) / batches.batches_per_epoch, time.perf_counter() - t0, history,
                      {"model": acc.unwrap_model(model).state_dict(), "opt": opt.state_dict(),
                       "batches": batches.state_dict(), "rng": torch.get_rng_state(), "step": step, "config": trial},
                      ema)

    report_final(ctx, cfg, history, ema if ema is not None else acc.unwrap_model(model),
                 lambda final: _finish(final, model_cfg, cfg, ddpm, trial["eval"], train, test, ctx, seed))


def _finish(model, model_cfg, cfg, ddpm, ev: dict[str, Any], train, test, ctx: TrialContext, seed: int):
    """Compression, measurements and guided samples of the trained (or EMA) model."""
    from harness.recipes.compression_eval import compress, image_quality, inference_ms_per_image, save_grid
    from harness.training.data import to_uint8

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
    return metrics, [save_grid(samples, ctx, ev["grid"])], tags
