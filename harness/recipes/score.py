"""The score-based (NCSN) recipe: Song's score-SDE tutorial on MNIST, then the compression study's measurements.

Per epoch: shuffled batches of [0, 1] images (the tutorial's ToTensor scaling), denoising score matching with
t ~ U(eps, 1), Adam, an optional EMA. After the last epoch: the trial's compression (pruning, int8 quantisation),
sizes and parameter counts, inference time per image with the sampler's NFE, and image quality of n samples.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from harness.training.context import TrialContext, TrialFailed


def train_score(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.diffusion.edm import ema_update
    from harness.diffusion.score import SAMPLERS, dsm_loss
    from harness.recipes import restore, trial_model
    from harness.recipes.compression_eval import check_arm, end_epoch, report_final
    from harness.recipes.score_config import ScoreTrain
    from harness.training.data import TensorBatches, load_study_data
    from harness.training.speed import optimizer, prepare_model, to_format

    cfg = ScoreTrain(**trial["train"])
    ev = trial["eval"]
    if ev["sampler"] not in SAMPLERS:
        raise TrialFailed(f"eval.sampler {ev['sampler']!r} is not a score sampler; use one of {', '.join(SAMPLERS)}")
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
    opt = optimizer(torch.optim.Adam, model.parameters(), cfg, acc.device, lr=cfg.lr)
    batches = TensorBatches(train, cfg.batch_size, gen, device=acc.device, drop_last=False)

    with ctx.training_lock():  # pruning and int8 arms share their baseline's trained model (Trial.train_hash)
        state = ctx.load_checkpoint(required=("model", "opt", "batches", *(["ema"] if ema is not None else [])))
        rest = restore(state, model=model, opt=opt, batches=batches, ema=ema)
        epoch, history = int(rest.get("epoch", 0)), list(rest.get("history", []))
        model, opt = acc.prepare(model, opt)
        while epoch < cfg.epochs:
            model.train()
            t0, total = time.perf_counter(), torch.zeros((), device=acc.device)
            for _ in range(batches.batches_per_epoch):
                with ctx.data_wait():
                    x, _y = next(batches)
                    x = to_format(x, cfg)
                loss = dsm_loss(model, (x + 1) / 2, acc.unwrap_model(model).config.sigma, cfg.eps, gen)
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                if ema is not None:
                    ema_update(ema, acc.unwrap_model(model), cfg.ema_decay)
                total += loss.detach()
            epoch += 1
            ctx.trained_epochs += 1
            end_epoch(ctx, cfg, epoch, float(total) / batches.batches_per_epoch, time.perf_counter() - t0, history,
                      {"model": acc.unwrap_model(model).state_dict(), "opt": opt.state_dict(),
                       "batches": batches.state_dict(), "rng": torch.get_rng_state(), "config": trial}, ema)

    report_final(ctx, cfg, history, ema if ema is not None else acc.unwrap_model(model),
                 lambda final: _finish(final, model_cfg, cfg, ev, train, test, ctx, seed))


def _finish(model, model_cfg, cfg, ev: dict[str, Any], train, test, ctx: TrialContext, seed: int):
    """Compression, measurements and samples of the trained (or EMA) model."""
    from harness.diffusion.score import SAMPLERS
    from harness.recipes.compression_eval import compress, image_quality, inference_ms_per_image, save_grid
    from harness.training.data import to_uint8

    model, metrics = compress(model.eval(), cfg, seed)
    shape = (model_cfg.in_channels, model_cfg.input_size, model_cfg.input_size)
    sampler = SAMPLERS[ev["sampler"]]
    kwargs = {"steps": ev["sampler_steps"]} if ev["sampler"] != "ode" else {}

    def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
        x, nfe = sampler(model, n, shape, sigma=model_cfg.sigma, eps=cfg.sample_eps, generator=g, **kwargs)
        return to_uint8(x.clamp(0, 1) * 2 - 1), nfe  # [0, 1] -> uint8, as the tutorial clamps

    metrics.update(inference_ms_per_image(sample))
    quality, tags, samples = image_quality(sample, ev, train, test, ctx, seed)
    metrics.update(quality)
    return metrics, [save_grid(samples, ctx, ev["grid"])], tags
