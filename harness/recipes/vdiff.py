"""The v-diffusion generator recipe (Crowson's CIFAR-10 colab as extended by "Modern Methods, Classical
Constraints"): its algorithm on the training skeleton (harness.training.loop).

Per step: a batch from the in-memory dataset, horizontal flips, labels dropped to the null class with probability
``cond_dropout``, Sobol timesteps mapped to log-SNR by the schedule, the v-objective, AdamW with linear warm-up,
gradient clipping, and the EMA. Every ``eval.every`` steps and at the end: class-balanced samples from the EMA
model with classifier-free guidance (paper Eq. 4) and dynamic thresholding, image distances, a sample grid, and a
checkpoint; at the end also a grid of slerp latent interpolations decoded with DDIM.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from harness.study.schema import EvalSpec
from harness.training.context import TrialContext, TrialFailed
from harness.training.loop import Training, param_groups, trial_model, typed


def make_sampler(model, model_cfg, cfg, sampler: str, steps: int):
    """(n, labels, generator) -> (uint8 images, NFE per image) from ``model`` with the recipe's guidance."""
    from harness.diffusion import vdiff
    from harness.recipes.vdiff_config import SAMPLERS
    from harness.training.data import to_uint8

    if sampler not in SAMPLERS:
        raise TrialFailed(f"eval.sampler {sampler!r} is not a v-diffusion sampler; use one of {', '.join(SAMPLERS)}")
    shape = (model_cfg.in_channels, model_cfg.input_size, model_cfg.input_size)
    k = model_cfg.num_classes

    def sample(n: int, y: torch.Tensor, g: torch.Generator, noise: torch.Tensor | None = None, eta=None):
        z = torch.randn((n, *shape), generator=g) if noise is None else noise
        x, nfe = vdiff.sample(model, z, steps, cfg.schedule, eta=SAMPLERS[sampler] if eta is None else eta,
                              y=y if k else None, w=cfg.cfg_weight, threshold=cfg.dynamic_threshold, generator=g,
                              null_y=k if k else None)
        return to_uint8(x.clamp(-1, 1)), nfe

    return sample


def interpolation_grid(sample, model_cfg, rows: int, cols: int, seed: int) -> torch.Tensor:
    """``rows`` slerp interpolations of ``cols`` images between two noise draws, each row one class, decoded with
    DDIM (deterministic, so the row varies only through its latent); uint8 (rows * cols, C, H, W)."""
    from harness.diffusion.vdiff import interpolation_latents

    g = torch.Generator().manual_seed(seed)
    shape = (model_cfg.in_channels, model_cfg.input_size, model_cfg.input_size)
    out = []
    for r in range(rows):
        z = interpolation_latents(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cols)
        y = torch.full((cols,), r % max(model_cfg.num_classes, 1), dtype=torch.long)
        x, _ = sample(cols, y, g, noise=z, eta=0.0)
        out.append(x)
    return torch.cat(out)


def train_vdiff(trial: dict[str, Any], ctx: TrialContext) -> None:
    """Train one v-diffusion model; see the module docstring."""
    from harness.diffusion.vdiff import sobol_engine, sobol_t, v_loss
    from harness.recipes.compression_eval import grid_png
    from harness.recipes.generator_eval import evaluate_generator
    from harness.recipes.vdiff_config import VDiffTrain
    from harness.training.ema import ema_update
    from harness.training.speed import to_format

    run = Training(trial, ctx, VDiffTrain)
    cfg, ev, gen, mine = run.cfg, run.ev, run.gen, run.mine
    train = run.data("train")
    model, model_cfg = run.model()
    make_sampler(model, model_cfg, cfg, ev.sampler, ev.sampler_steps)  # a bad sampler fails before training
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = run.optimizer(torch.optim.AdamW, param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    batches = run.batches(train)
    engine = sobol_engine(run.seed * 1000)  # the global batch's timesteps, the same on every rank
    run.track(model=model, ema=ema, opt=opt, sched=sched, batches=batches)
    engine.fast_forward(run.resume() * cfg.batch_size)
    net, opt = run.acc.prepare(model, opt)
    null = model_cfg.num_classes

    def train_step(step: int) -> tuple[int, dict[str, torch.Tensor]]:
        net.train()
        with ctx.data_wait():
            x, y = next(batches)  # this rank's slice of the global batch
            if cfg.flip:  # flips, dropped labels, timesteps and noise drawn for the global batch, kept for the slice
                flip = (torch.rand(cfg.batch_size, generator=gen)[mine] < 0.5).to(x.device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            x = to_format(x, cfg)
        if null:
            drop = (torch.rand(cfg.batch_size, generator=gen)[mine] < cfg.cond_dropout).to(y.device)
            y = torch.where(drop, torch.full_like(y, null), y)
        t = sobol_t(cfg.batch_size, engine)[mine].to(x.device)
        noise = torch.randn((cfg.batch_size, *x.shape[1:]), generator=gen, dtype=x.dtype)[mine].to(x.device)
        loss = v_loss(net, x, y if null else None, cfg.schedule, t, cfg.weighting, noise=noise)
        run.optimize(loss, net, opt, sched)
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        return len(x), {"loss": loss}

    def evaluate(step: int, last: bool):
        t0 = time.perf_counter()
        sample = make_sampler(ema, model_cfg, cfg, ev.sampler, ev.sampler_steps)
        metrics, artifacts, tags = evaluate_generator(sample, null, trial, ctx, train, step)
        metrics.update(eval_seconds=time.perf_counter() - t0, params=sum(p.numel() for p in ema.parameters()))
        if last and cfg.interpolations:
            grid = interpolation_grid(sample, model_cfg, cfg.interpolations, 8, run.seed)
            artifacts.append(str(grid_png(grid, ctx.run_dir / "samples" / f"interp_{step:09d}.png", 8)))
        return metrics, artifacts, tags

    run.run(train_step, evaluate, log=lambda: {"lr": sched.get_last_lr()[0]})


def sample_grids(trial: dict[str, Any], state: dict[str, Any], out_dir: Path, n: int, seed: int,
                 steps: int | None = None, w: float | None = None, sampler: str | None = None) -> list[Path]:
    """`harness sample`: n class-balanced samples and an interpolation grid from a checkpoint's EMA weights."""
    import dataclasses

    from harness.recipes.compression_eval import grid_png
    from harness.recipes.generator_eval import balanced_sampler
    from harness.recipes.vdiff_config import VDiffTrain

    cfg = typed(VDiffTrain, trial["train"])
    if w is not None:
        cfg = dataclasses.replace(cfg, cfg_weight=w)
    model, model_cfg = trial_model(trial)
    model.load_state_dict(state["ema"])
    model.eval()
    ev = typed(EvalSpec, trial["eval"])
    sample = make_sampler(model, model_cfg, cfg, sampler or ev.sampler, steps or ev.sampler_steps)
    x, _ = balanced_sampler(sample, model_cfg.num_classes)(n, torch.Generator().manual_seed(seed))
    tag = f"w{cfg.cfg_weight:g}-s{seed}"
    paths = [grid_png(x, out_dir / f"samples-{tag}.png")]
    if cfg.interpolations:
        grid = interpolation_grid(sample, model_cfg, cfg.interpolations, 8, seed)
        paths.append(grid_png(grid, out_dir / f"interpolations-{tag}.png", 8))
    return paths
