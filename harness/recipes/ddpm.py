"""The discrete DDPM recipe on 3-D point clouds: its algorithm on the training skeleton (harness.training.loop).

As the CS 726 homework: the train split z-scored with its own statistics, shuffled mini-batches of 1024 for a number
of epochs, the epsilon-MSE loss with t uniform on {0..T-1}, Adam. After the last epoch, `n = len(test)` points are
sampled ancestrally three times and scored with EMD (128 random points) and the Gaussian-kernel NLL against the test
and train sets (harness.eval.point_metrics); the generated points of the last run are kept as an artifact.

Batch order, t and the noise are drawn for the global batch of ``batch_size`` points and each rank keeps its slice
(harness.training.loop), so N data-parallel workers train as one does, provided every batch of an epoch, the last
(smaller) one included, divides evenly across them: otherwise the ranks leave that batch's remainder untrained.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from harness.study.schema import EvalSpec
from harness.training.context import TrialContext
from harness.training.loop import Training, trial_model


def train_ddpm(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.diffusion.ddpm import DDPM
    from harness.recipes.ddpm_config import DDPMTrain
    from harness.training.data import shard_slice
    from harness.training.point_clouds import load_study_points

    run = Training(trial, ctx, DDPMTrain, seed_scale=1, rate_name="points_per_s")
    cfg, acc, gen = run.cfg, run.acc, run.gen  # gen: batch order, timesteps and noise
    train, test = run.data("train", load_study_points), run.data("test", load_study_points)
    model, _ = trial_model(trial)
    opt = run.optimizer(torch.optim.Adam, model.param_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr)
    ddpm = DDPM(cfg.T, cfg.schedule, cfg.lbeta, cfg.ubeta)
    run.track(model=model, opt=opt)
    run.resume()
    net, opt = acc.prepare(model, opt)
    x = train.x.to(acc.device)
    n, bs = len(x), cfg.batch_size

    while run.step < cfg.epochs:
        net.train()
        perm = torch.randperm(n, generator=gen).to(acc.device)
        for start in range(0, n, bs):  # the homework's DataLoader keeps the last, smaller batch
            idx = perm[start:start + bs]  # the global batch; t and noise for all of it, this rank's slice
            mine = shard_slice(len(idx), run.rank, run.world_size)
            with ctx.data_wait():
                batch = x[idx[mine]]
            t, noise = ddpm.draw(len(idx), tuple(x.shape[1:]), gen, x.device, x.dtype)
            loss = ddpm.loss(net, batch, t=t[mine], noise=noise[mine])
            run.optimize(loss, net, opt)
            run.window.add(len(batch), loss=loss)
        run.step += 1
        epoch, last = run.step, run.step == cfg.epochs
        if epoch % cfg.log_every == 0 or last:
            metrics, artifacts = run.window.close(ctx, epoch, unit="epoch"), []
            if last and ctx.is_main:
                m, artifacts = _evaluate(model, ddpm, cfg, run.ev, train, test, run.seed, ctx)
                metrics.update(m)
            ckpt = run.checkpoint() if epoch % cfg.checkpoint_every == 0 or last else None
            acc.wait_for_everyone()
            ctx.report(epoch, metrics, artifacts, tags=run.take_tags(), done=last, checkpoint=ckpt)
        elif epoch % cfg.checkpoint_every == 0:
            ctx.save_checkpoint(run.checkpoint(), epoch)  # no report at this epoch: nothing to carry


def _evaluate(model, ddpm, cfg, ev: EvalSpec, train, test, seed: int, ctx: TrialContext):
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
    out = evaluate_points(sample, train, test, runs=ev.runs or 3, emd_n=ev.emd_n or 128, seed=seed)
    metrics = {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}
    metrics["eval_seconds"] = time.perf_counter() - t0
    path = ctx.run_dir / "samples" / "points_final.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, last["x"].numpy())
    return metrics, [str(path)]


def calibrate_points(trial: dict[str, Any], ctx: TrialContext, draws: int) -> list:
    """``_evaluate``'s EMD and NLL (eval.emd_n points, ``draws`` runs) of a perfect generator (training points) and
    of N(0, I): the floor and the ceiling a trained model sits between."""
    from harness.eval.calibration import point_floors
    from harness.eval.point_metrics import evaluate_points
    from harness.training.loop import load_split, typed
    from harness.training.point_clouds import load_study_points

    ev = typed(EvalSpec, trial["eval"])
    train = load_split(trial, ctx, "train", load_study_points)
    test = load_split(trial, ctx, "test", load_study_points)
    return point_floors(lambda fn: evaluate_points(fn, train, test, runs=max(2, draws), emd_n=ev.emd_n or 128,
                                                   seed=int(trial["seed"])), train.x, len(test))
