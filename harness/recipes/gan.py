"""The conditional GAN recipe (see gan_config): one plain training function (CONVENTIONS 9).

Per step: a real batch (flipped at random), one discriminator update on real (targets 1 - label_smoothing) and
generated images (targets 0), one generator update with the non-saturating loss on a fresh draw of noise and
labels, and the generator EMA. Every ``eval.every`` steps and at the end: class-balanced samples from the EMA
generator, image distances, a sample grid, and a checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from harness.training.context import TrialContext, TrialFailed


def _config(trial: dict[str, Any]):
    from harness.recipes.gan_config import GANTrain

    return GANTrain(**{k: tuple(v) if isinstance(v, list) else v for k, v in trial["train"].items()})


def make_sampler(generator, model_cfg):
    """(n, labels, torch generator) -> (uint8 images, NFE = 1) from a generator network."""
    from harness.training.data import to_uint8

    @torch.no_grad()
    def sample(n: int, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, int]:
        generator.eval()
        z = torch.randn(n, model_cfg.z_dim, generator=g)
        return to_uint8(generator(z, y).clamp(-1, 1)), 1

    return sample


def train_gan(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.diffusion.edm import ema_update
    from harness.recipes import start_trial
    from harness.recipes.generator_eval import evaluate_generator
    from harness.training.data import TensorBatches
    from harness.training.speed import optimizer, to_format

    cfg = _config(trial)
    ev = trial["eval"]
    acc, _seed, gen, train, model, model_cfg = start_trial(trial, ctx, cfg.mixed_precision)
    g_net, d_net = model.generator, model.discriminator
    g_ema = copy.deepcopy(g_net).eval().requires_grad_(False)
    opt_g = optimizer(torch.optim.Adam, g_net.parameters(), cfg, acc.device, lr=cfg.lr_g, betas=cfg.betas)
    opt_d = optimizer(torch.optim.Adam, d_net.parameters(), cfg, acc.device, lr=cfg.lr_d, betas=cfg.betas)
    batches = TensorBatches(train, max(1, cfg.batch_size // ctx.world_size), gen, device=acc.device)
    k = model_cfg.num_classes

    step, state = 0, ctx.load_checkpoint(required=("model", "g_ema", "opt_g", "opt_d", "batches", "rng", "gen", "step"))
    if state is not None:
        for part, key in ((model, "model"), (g_ema, "g_ema"), (opt_g, "opt_g"), (opt_d, "opt_d"),
                          (batches, "batches")):
            part.load_state_dict(state[key])
        torch.set_rng_state(state["rng"])
        gen.set_state(state["gen"])
        step = int(state["step"])
    resume_tags = {"harness.resumed_from_step": str(step)} if state is not None else {}
    g_net, d_net, opt_g, opt_d = acc.prepare(g_net, d_net, opt_g, opt_d)

    sums = torch.zeros(4, device=acc.device)  # loss_d, loss_g, D(real), D(fake) (mean sigmoid)
    seen, t_log = 0, time.perf_counter()
    while step < cfg.steps:
        g_net.train()
        d_net.train()
        with ctx.data_wait():
            x, y = next(batches)
            if cfg.flip:
                x = torch.where((torch.rand(len(x), generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
            x = to_format(x, cfg)
        n = len(x)
        z = torch.randn(n, model_cfg.z_dim, generator=gen).to(x.device)
        y_fake = torch.randint(0, k, (n,), generator=gen).to(x.device)
        fake = g_net(z, y_fake)
        d_real, d_fake = d_net(x, y), d_net(fake.detach(), y_fake)
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, 1 - cfg.label_smoothing))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        acc.backward(loss_d)
        opt_d.step()

        z = torch.randn(n, model_cfg.z_dim, generator=gen).to(x.device)
        y_fake = torch.randint(0, k, (n,), generator=gen).to(x.device)
        d_gen = d_net(g_net(z, y_fake), y_fake)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad(set_to_none=True)
        acc.backward(loss_g)
        opt_g.step()
        ema_update(g_ema, acc.unwrap_model(g_net), min(cfg.ema_decay, (1 + step) / (10 + step)))
        sums += torch.stack([loss_d.detach(), loss_g.detach(), d_real.detach().sigmoid().mean(),
                             d_fake.detach().sigmoid().mean()])
        seen += n * ctx.world_size
        step += 1

        last = step == cfg.steps
        is_eval = step % ev["every"] == 0 or last
        if step % cfg.log_every == 0 or is_eval:
            n_steps = cfg.log_every if step % cfg.log_every == 0 else (step % cfg.log_every or cfg.log_every)
            loss_d_m, loss_g_m, p_real, p_fake = (float(v) / n_steps for v in sums)
            if not (math.isfinite(loss_d_m) and math.isfinite(loss_g_m)):
                raise TrialFailed(f"GAN losses became D {loss_d_m}, G {loss_g_m} by step {step}")
            elapsed = time.perf_counter() - t_log
            metrics = {"loss_d": loss_d_m, "loss_g": loss_g_m, "d_real": p_real, "d_fake": p_fake,
                       "images_per_s": seen / max(elapsed, 1e-9), "data_wait_share": ctx.data_wait_share(elapsed)}
            sums.zero_()
            seen = 0
            artifacts: list[str] = []
            tags, resume_tags = resume_tags, {}
            ckpt = None
            if is_eval:
                acc.wait_for_everyone()
                if ctx.is_main:
                    t0 = time.perf_counter()
                    m, artifacts, eval_tags = evaluate_generator(make_sampler(g_ema, model_cfg), k, trial, ctx,
                                                                 train, step)
                    metrics.update(m, eval_seconds=time.perf_counter() - t0, params=sum(p.numel() for p in
                                   model.parameters()), generator_params=sum(p.numel() for p in g_ema.parameters()))
                    tags.update(eval_tags)
                    model.generator, model.discriminator = acc.unwrap_model(g_net), acc.unwrap_model(d_net)
                    ckpt = {
                        "model": model.state_dict(), "g_ema": g_ema.state_dict(), "opt_g": opt_g.state_dict(),
                        "opt_d": opt_d.state_dict(), "batches": batches.state_dict(), "rng": torch.get_rng_state(),
                        "gen": gen.get_state(), "step": step, "config": trial}
                acc.wait_for_everyone()
            ctx.report(step, metrics, artifacts, tags=tags, done=last, checkpoint=ckpt)
            t_log = time.perf_counter()


def sample_grids(trial: dict[str, Any], state: dict[str, Any], out_dir: Path, n: int, seed: int,
                 **_ignored: Any) -> list[Path]:
    """`harness sample`: n class-balanced samples from a checkpoint's EMA generator."""
    from harness.recipes import trial_model
    from harness.recipes.compression_eval import grid_png
    from harness.recipes.generator_eval import balanced_sampler

    model, model_cfg = trial_model(trial)
    model.generator.load_state_dict(state["g_ema"])
    x, _ = balanced_sampler(make_sampler(model.generator, model_cfg), model_cfg.num_classes)(
        n, torch.Generator().manual_seed(seed))
    return [grid_png(x, out_dir / f"samples-gan-s{seed}.png")]
