"""The discrete DDPM recipe on 3-D point clouds: one plain training function (CONVENTIONS 9).

As the CS 726 homework: the train split z-scored with its own statistics, shuffled mini-batches of 1024 for a number
of epochs, the epsilon-MSE loss with t uniform on {0..T-1}, Adam. After the last epoch, `n = len(test)` points are
sampled ancestrally three times and scored with EMD (128 random points) and the Gaussian-kernel NLL against the test
and train sets (harness.eval.point_metrics); the generated points of the last run are kept as an artifact.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from harness.training.context import TrialContext, TrialFailed


def train_ddpm(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.diffusion.ddpm import DDPM
    from harness.recipes import trial_model
    from harness.recipes.ddpm_config import DDPMTrain
    from harness.training.point_clouds import load_study_points
    from harness.training.speed import optimizer

    cfg = DDPMTrain(**trial["train"])
    ev = trial["eval"]
    acc = ctx.accelerator(cfg.mixed_precision, compile=cfg.compile)
    seed = int(trial["seed"])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # batch order, timesteps and noise
    data = {**trial["data"], "root": str(ctx.data_root)}
    train = load_study_points(trial["dataset"], data, "train")
    test = load_study_points(trial["dataset"], data, "test")
    model, _ = trial_model(trial)
    opt = optimizer(torch.optim.Adam, model.param_groups(cfg.lr, cfg.weight_decay), cfg, acc.device, lr=cfg.lr)
    ddpm = DDPM(cfg.T, cfg.schedule, cfg.lbeta, cfg.ubeta)

    epoch = 0
    state = ctx.load_checkpoint(required=("model", "opt", "rng", "epoch"))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["gen"])
        epoch = int(state["epoch"])
    resume_tags = {"harness.resumed_from_step": str(epoch)} if state is not None else {}
    model, opt = acc.prepare(model, opt)
    x = train.x.to(acc.device)
    n, bs = len(x), cfg.batch_size

    def checkpoint() -> dict[str, Any] | None:
        if not ctx.is_main:
            return None
        return {"model": acc.unwrap_model(model).state_dict(), "opt": opt.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state()}, "epoch": epoch, "config": trial}

    loss_sum, batches, t0 = torch.zeros((), device=acc.device), 0, time.perf_counter()
    while epoch < cfg.epochs:
        model.train()
        perm = torch.randperm(n, generator=gen).to(acc.device)
        for start in range(0, n, bs):  # the homework's DataLoader keeps the last, smaller batch
            with ctx.data_wait():
                batch = x[perm[start:start + bs]]
            loss = ddpm.loss(model, batch, generator=gen)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            loss_sum += loss.detach()
            batches += 1
        epoch += 1
        last = epoch == cfg.epochs
        if epoch % cfg.log_every == 0 or last:
            mean_loss = float(loss_sum) / max(1, batches)
            if not math.isfinite(mean_loss):
                raise TrialFailed(f"training loss became {mean_loss} by epoch {epoch}")
            elapsed = time.perf_counter() - t0
            metrics: dict[str, float] = {"loss": mean_loss, "points_per_s": batches * bs / max(elapsed, 1e-9),
                                         "data_wait_share": ctx.data_wait_share(elapsed)}
            tags, resume_tags = resume_tags, {}
            artifacts: list[str] = []
            if last and ctx.is_main:
                m, artifacts = _evaluate(acc.unwrap_model(model), ddpm, cfg, ev, train, test, seed, ctx)
                metrics.update(m)
            ckpt = checkpoint() if epoch % cfg.checkpoint_every == 0 or last else None
            acc.wait_for_everyone()
            ctx.report(epoch, metrics, artifacts, tags=tags, done=last, checkpoint=ckpt)
            loss_sum.zero_()
            batches, t0 = 0, time.perf_counter()
        elif epoch % cfg.checkpoint_every == 0 and ctx.is_main:
            ctx.save_checkpoint(checkpoint(), epoch)  # no report at this epoch: nothing to carry


def _evaluate(model, ddpm, cfg, ev: dict[str, Any], train, test, seed: int, ctx: TrialContext):
    """EMD and NLL over `runs` sampling runs (homework eval.py), the sampling time, and the generated points."""
    from harness.eval.point_metrics import evaluate_points

    model.eval()
    last: dict[str, torch.Tensor] = {}

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            out = ddpm.sample(model, n, 3, generator=generator, variance=cfg.variance).cpu()
        last["x"] = out
        return out

    t0 = time.perf_counter()
    out = evaluate_points(sample, train, test, runs=ev.get("runs") or 3, emd_n=ev.get("emd_n") or 128, seed=seed)
    metrics = {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}
    metrics["eval_seconds"] = time.perf_counter() - t0
    path = ctx.run_dir / "samples" / "points_final.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, last["x"].numpy())
    return metrics, [str(path)]
