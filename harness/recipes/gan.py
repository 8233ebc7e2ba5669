"""The conditional GAN recipe (see gan_config): its algorithm on the training skeleton
(harness.training.loop).

Per step: a real batch (flipped at random), one discriminator update on real (targets 1 - label_smoothing) and
generated images (targets 0), one generator update with the non-saturating loss on a fresh draw of noise and
labels, and the generator EMA. Every ``eval.every`` steps and at the end: class-balanced samples from the EMA
generator, image distances, a sample grid, and a checkpoint.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from harness.training.context import TrialContext
from harness.training.loop import Training, trial_model


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
    """Train one conditional GAN; see the module docstring."""
    from harness.recipes.gan_config import GANTrain
    from harness.recipes.generator_eval import evaluate_generator
    from harness.training.ema import ema_update
    from harness.training.speed import to_format

    run = Training(trial, ctx, GANTrain)
    cfg, gen, mine = run.cfg, run.gen, run.mine
    train = run.data("train")
    model, model_cfg = run.model()
    generator = model.generator
    g_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_g = run.optimizer(torch.optim.Adam, generator.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = run.optimizer(torch.optim.Adam, model.discriminator.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    batches = run.batches(train)
    run.track(model=model, g_ema=g_ema, opt_g=opt_g, opt_d=opt_d, batches=batches)
    run.resume()
    g_net, d_net, opt_g, opt_d = run.acc.prepare(generator, model.discriminator, opt_g, opt_d)
    k = model_cfg.num_classes

    def fakes(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and labels drawn for the global batch; this rank's slice of them."""
        z = torch.randn(cfg.batch_size, model_cfg.z_dim, generator=gen)[mine].to(device)
        return z, torch.randint(0, k, (cfg.batch_size,), generator=gen)[mine].to(device)

    def train_step(step: int) -> tuple[int, dict[str, torch.Tensor]]:
        g_net.train()
        d_net.train()
        with ctx.data_wait():
            x, y = next(batches)  # this rank's slice of the global batch
            if cfg.flip:  # flips drawn for the global batch, kept for the slice
                flip = (torch.rand(cfg.batch_size, generator=gen)[mine] < 0.5).to(x.device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            x = to_format(x, cfg)
        z, y_fake = fakes(x.device)
        fake = g_net(z, y_fake)
        d_real, d_fake = d_net(x, y), d_net(fake.detach(), y_fake)
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, 1 - cfg.label_smoothing))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        run.optimize(loss_d, d_net, opt_d)

        z, y_fake = fakes(x.device)
        d_gen = d_net(g_net(z, y_fake), y_fake)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        run.optimize(loss_g, g_net, opt_g)
        ema_update(g_ema, generator, min(cfg.ema_decay, (1 + step) / (10 + step)))
        return len(x), {"loss_d": loss_d, "loss_g": loss_g, "d_real": d_real.detach().sigmoid().mean(),
                        "d_fake": d_fake.detach().sigmoid().mean()}

    def evaluate(step: int, last: bool):
        t0 = time.perf_counter()
        metrics, artifacts, tags = evaluate_generator(make_sampler(g_ema, model_cfg), k, trial, ctx, train, step)
        metrics.update(eval_seconds=time.perf_counter() - t0, params=sum(p.numel() for p in model.parameters()),
                       generator_params=sum(p.numel() for p in g_ema.parameters()))
        return metrics, artifacts, tags

    run.run(train_step, evaluate)


def sample_grids(trial: dict[str, Any], state: dict[str, Any], out_dir: Path, n: int, seed: int,
                 **_ignored: Any) -> list[Path]:
    """`harness sample`: n class-balanced samples from a checkpoint's EMA generator."""
    from harness.recipes.compression_eval import grid_png
    from harness.recipes.generator_eval import balanced_sampler

    model, model_cfg = trial_model(trial)
    model.generator.load_state_dict(state["g_ema"])
    x, _ = balanced_sampler(make_sampler(model.generator, model_cfg), model_cfg.num_classes)(
        n, torch.Generator().manual_seed(seed))
    return [grid_png(x, out_dir / f"samples-gan-s{seed}.png")]
