"""The null recipe's trial (see ``null_config``): ``work`` fixed matmuls per step, a report every ``report_every``
steps; the last report carries the trial's own timings (wall-clock time of its first and last step, seconds
inside ``ctx.report``), which ``harness bench overhead`` sets against the driver's MLflow run start and end."""

from __future__ import annotations

import time
from typing import Any

import torch

from harness.training.context import TrialContext
from harness.training.loop import Training


def train_null(trial: dict[str, Any], ctx: TrialContext) -> None:
    from harness.recipes.null_config import WORK_SIZE, NullTrain

    entered = time.time()
    run = Training(trial, ctx, NullTrain, seed_scale=1)
    cfg, acc = run.cfg, run.acc
    model, model_cfg = run.model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    run.track(model=model)
    step = run.resume()
    model, opt = acc.prepare(model, opt)
    x = torch.ones(1, model_cfg.features, device=acc.device)
    a = torch.linalg.qr(torch.randn(WORK_SIZE, WORK_SIZE))[0].to(acc.device)  # orthogonal: products stay finite

    first_step, report_seconds, reports = None, 0.0, 0
    phase_time = {True: 0.0, False: 0.0}  # reporting phase? -> seconds of its steps (reports included)
    phase_count = {True: 0, False: 0}
    t_loop = time.perf_counter()
    while step < cfg.steps:
        if first_step is None:
            first_step = time.time()
        t_step = time.perf_counter()
        reporting = not cfg.phase_steps or (step // cfg.phase_steps) % 2 == 0
        b = a
        for _ in range(cfg.work):  # stand-in compute: a step's worth of matmuls, fixed per step
            b = a @ b
        loss = model(x).sum() + b[0, 0] * 0
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        step += 1
        last = step == cfg.steps
        if (reporting and step % cfg.report_every == 0) or last:
            metrics = {"loss": float(loss.detach())}
            if last:
                import psutil

                metrics.update({"process_start_unix": psutil.Process().create_time(), "recipe_start_unix": entered,
                                "first_step_unix": first_step, "last_step_unix": time.time(),
                                "loop_seconds": time.perf_counter() - t_loop, "report_seconds": report_seconds,
                                "reports": reports + 1, "steps_run": step})
                for phase, name in ((True, "reporting"), (False, "quiet")):
                    if phase_count[phase]:
                        metrics[f"{name}_step_seconds"] = phase_time[phase] / phase_count[phase]
            ckpt = None
            if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                run.step = step
                ckpt = run.checkpoint()
            t = time.perf_counter()
            ctx.report(step, metrics, tags=run.take_tags(), done=last, checkpoint=ckpt)
            report_seconds += time.perf_counter() - t
            reports += 1
        if not last:
            phase_time[reporting] += time.perf_counter() - t_step
            phase_count[reporting] += 1
