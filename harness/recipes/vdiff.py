"""The v-diffusion generator recipe (Crowson's CIFAR-10 colab as extended by "Modern Methods, Classical
Constraints"): one plain training function (CONVENTIONS 9).

Per step: a batch from the in-memory dataset, horizontal flips, labels dropped to the null class with probability
``cond_dropout``, Sobol timesteps mapped to log-SNR by the schedule, the v-objective, AdamW with linear warm-up,
gradient clipping, and the EMA. Every ``eval.every`` steps and at the end: class-balanced samples from the EMA
model with classifier-free guidance (paper Eq. 4) and dynamic thresholding, image distances, a sample grid, and a
checkpoint; at the end also a grid of slerp latent interpolations decoded with DDIM.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch

from harness.training.context import TrialContext, TrialFailed


def _config(trial: dict[str, Any]):
    from harness.recipes.vdiff_config import VDiffTrain

    return VDiffTrain(**{k: tuple(v) if isinstance(v, list) else v for k, v in trial["train"].items()})


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
    from harness.diffusion.edm import ema_update
    from harness.diffusion.vdiff import sobol_engine, sobol_t, v_loss
    from harness.recipes import param_groups, start_trial
    from harness.recipes.compression_eval import grid_png
    from harness.recipes.generator_eval import evaluate_generator
    from harness.training.data import TensorBatches
    from harness.training.speed import optimizer, to_format

    cfg = _config(trial)
    ev = trial["eval"]
    acc, seed, gen, train, model, model_cfg = start_trial(trial, ctx, cfg.mixed_precision)
    make_sampler(model, model_cfg, cfg, ev["sampler"], ev["sampler_steps"])  # a bad sampler fails before training
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = optimizer(torch.optim.AdamW, param_groups(model, cfg.lr, cfg.weight_decay), cfg, acc.device, lr=cfg.lr,
                    betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    batches = TensorBatches(train, max(1, cfg.batch_size // ctx.world_size), gen, device=acc.device)
    engine = sobol_engine(seed * 1000 + ctx.rank)
    null = model_cfg.num_classes

    step, state = 0, ctx.load_checkpoint(required=("model", "ema", "opt", "sched", "batches", "rng", "gen", "step"))
    if state is not None:
        for part, key in ((model, "model"), (ema, "ema"), (opt, "opt"), (sched, "sched"), (batches, "batches")):
            part.load_state_dict(state[key])
        torch.set_rng_state(state["rng"])
        gen.set_state(state["gen"])
        step = int(state["step"])
        engine.fast_forward(step * batches.batch_size)
    resume_tags = {"harness.resumed_from_step": str(step)} if state is not None else {}
    model, opt = acc.prepare(model, opt)

    loss_sum = torch.zeros((), device=acc.device)
    seen, t_log = 0, time.perf_counter()
    while step < cfg.steps:
        model.train()
        with ctx.data_wait():
            x, y = next(batches)
            if cfg.flip:
                x = torch.where((torch.rand(len(x), generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
            x = to_format(x, cfg)
        if null:
            y = torch.where(torch.rand(len(y), generator=gen) < cfg.cond_dropout, torch.full_like(y, null), y)
        t = sobol_t(len(x), engine).to(x.device)
        loss = v_loss(model, x, y if null else None, cfg.schedule, t, cfg.weighting, generator=gen)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        ema_update(ema, acc.unwrap_model(model), min(cfg.ema_decay, (1 + step) / (10 + step)))
        loss_sum += loss.detach()
        seen += len(x) * ctx.world_size
        step += 1

        last = step == cfg.steps
        is_eval = step % ev["every"] == 0 or last
        if step % cfg.log_every == 0 or is_eval:
            n_steps = cfg.log_every if step % cfg.log_every == 0 else (step % cfg.log_every or cfg.log_every)
            mean = float(loss_sum) / n_steps
            if not math.isfinite(mean):
                raise TrialFailed(f"training loss became {mean} by step {step}")
            elapsed = time.perf_counter() - t_log
            metrics = {"loss": mean, "lr": sched.get_last_lr()[0],
                       "images_per_s": seen / max(elapsed, 1e-9), "data_wait_share": ctx.data_wait_share(elapsed)}
            loss_sum.zero_()
            seen = 0
            artifacts: list[str] = []
            tags, resume_tags = resume_tags, {}
            ckpt = None
            if is_eval:
                acc.wait_for_everyone()
                if ctx.is_main:
                    t0 = time.perf_counter()
                    sample = make_sampler(ema, model_cfg, cfg, ev["sampler"], ev["sampler_steps"])
                    m, artifacts, eval_tags = evaluate_generator(sample, model_cfg.num_classes, trial, ctx, train,
                                                                 step)
                    metrics.update(m, eval_seconds=time.perf_counter() - t0)
                    tags.update(eval_tags)
                    metrics["params"] = sum(p.numel() for p in ema.parameters())
                    if last and cfg.interpolations:
                        grid = interpolation_grid(sample, model_cfg, cfg.interpolations, 8, seed)
                        artifacts.append(str(grid_png(grid, ctx.run_dir / "samples" / f"interp_{step:09d}.png", 8)))
                    ckpt = {
                        "model": acc.unwrap_model(model).state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "batches": batches.state_dict(), "rng": torch.get_rng_state(),
                        "gen": gen.get_state(), "step": step, "config": trial}
                acc.wait_for_everyone()
            ctx.report(step, metrics, artifacts, tags=tags, done=last, checkpoint=ckpt)
            t_log = time.perf_counter()


def sample_grids(trial: dict[str, Any], state: dict[str, Any], out_dir: Path, n: int, seed: int,
                 steps: int | None = None, w: float | None = None, sampler: str | None = None) -> list[Path]:
    """`harness sample`: n class-balanced samples and an interpolation grid from a checkpoint's EMA weights."""
    import dataclasses

    from harness.recipes import trial_model
    from harness.recipes.compression_eval import grid_png
    from harness.recipes.generator_eval import balanced_sampler

    cfg = _config(trial)
    if w is not None:
        cfg = dataclasses.replace(cfg, cfg_weight=w)
    model, model_cfg = trial_model(trial)
    model.load_state_dict(state["ema"])
    model.eval()
    ev = trial["eval"]
    sample = make_sampler(model, model_cfg, cfg, sampler or ev["sampler"], steps or ev["sampler_steps"])
    x, _ = balanced_sampler(sample, model_cfg.num_classes)(n, torch.Generator().manual_seed(seed))
    tag = f"w{cfg.cfg_weight:g}-s{seed}"
    paths = [grid_png(x, out_dir / f"samples-{tag}.png")]
    if cfg.interpolations:
        grid = interpolation_grid(sample, model_cfg, cfg.interpolations, 8, seed)
        paths.append(grid_png(grid, out_dir / f"interpolations-{tag}.png", 8))
    return paths
