"""Benchmarks: scripts that print figures (never timed tests).

`harness bench zoo` measures, per zoo variant, width and batch size, the training-step throughput
(forward + backward + AdamW on the EDM loss, images/s) and the forward throughput, the achieved GFLOP/s from the
zoo's analytic FLOPs (training ~ 3x forward: one forward, two matmuls per weight in backward), and the fraction of
the machine's fp32 matmul throughput measured in the same run. Each configuration runs in a fresh process so its
peak resident memory is its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.console import format_table
from harness.run.machine import machine_info


def matmul_gflops(n: int = 2048, repeats: int = 8, threads: int | None = None) -> float:
    """Best-of fp32 square-matmul throughput (GFLOP/s): the machine's practical compute ceiling."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# Issue targets for the block-sharing training step at batch 32: fraction of the measured matmul throughput by width
TRAIN_TARGETS = {512: 0.75, 128: 0.50}
EVAL_TARGET = 1.9  # issue 9: the second evaluation (reference features cached) >= 1.9x faster than the first
TARGET_BATCH = 32
REPEATS = 3  # timed runs of ``steps`` steps per cell; the fastest counts (as for the matmul ceiling)


def train_target(width: int, batch: int) -> float | None:
    """The issue's target fraction of the matmul ceiling for a training-step cell, or None (no target)."""
    return TRAIN_TARGETS.get(width) if batch == TARGET_BATCH else None


def _best_of(fn: Callable[[], None], steps: int) -> float:
    """Seconds per call: the fastest of REPEATS runs of ``steps`` calls (other processes only ever slow a run)."""
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def profile_summary(fn: Callable[[], None], steps: int = 2, rows: int = 12) -> str:
    """Where a step's time goes: torch.profiler's operators by self CPU time over ``steps`` calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


def _measure(variant: str, width: int, batch: int, steps: int, threads: int | None,
             ceiling: float | None = None) -> dict[str, Any]:
    """One configuration, in its own process: training-step and forward throughput and peak RSS; with the matmul
    ``ceiling`` of a cell that has a target, also a profile summary of the training step when it misses it."""
    import torch

    import zoo
    from harness.diffusion.edm import karras_loss, sample_sigmas_train
    from harness.training.speed import optimizer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = zoo.config(variant, width=width)
    model = zoo.build(variant, width=width)
    # as the edm recipe trains: AdamW with the model's groups, fused (the recipe's default)
    opt = optimizer(torch.optim.AdamW, model.param_groups(5e-4, 1e-4), {}, "cpu", lr=5e-4, betas=(0.9, 0.95),
                    eps=1e-8)
    shape = (batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    x0 = torch.randn(shape).clamp(-1, 1)
    labels = torch.randint(0, max(cfg.num_classes, 1), (batch,))

    def train_step() -> None:
        sigma = sample_sigmas_train(batch, model.sigma_data)
        loss = karras_loss(model, x0, sigma, class_labels=labels).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    model.train()
    train_step()  # warm-up: allocator and optimizer state
    train_s = _best_of(train_step, steps)
    fwd_flops = zoo.flops(variant, width=width)
    summary = ""
    target = train_target(width, batch)
    if ceiling and target and 3 * fwd_flops * batch / train_s / 1e9 / ceiling < target:
        summary = profile_summary(train_step)

    model.eval()
    sigma = torch.full((batch,), 1.0)
    with torch.inference_mode():
        model(x0, sigma, labels)
        fwd_s = _best_of(lambda: model(x0, sigma, labels), steps)
    return {
        "profile": summary,
        "variant": variant,
        "width": width,
        "batch": batch,
        "params": zoo.param_count(model),
        "train_img_s": batch / train_s,
        "train_gflops": 3 * fwd_flops * batch / train_s / 1e9,
        "fwd_img_s": batch / fwd_s,
        "fwd_gflops": fwd_flops * batch / fwd_s / 1e9,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def zoo_benchmark(
    variants: list[str],
    widths: list[int],
    batches: list[int],
    steps: int,
    threads: int | None,
    out: str | Path,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every (variant, width, batch), print the table and write it with the machine description to ``out``."""
    import zoo

    for v in variants:
        zoo.entry(v)  # unknown names fail before anything runs
    ceiling = matmul_gflops(threads=threads)
    echo(f"fp32 matmul throughput (2048^3, best of 8): {ceiling:.1f} GFLOP/s")
    rows = []
    profiles: list[tuple[str, str]] = []
    ctx = mp.get_context("spawn")
    for v in variants:
        for w in widths:
            for b in batches:
                with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    row = pool.submit(_measure, v, w, b, steps, threads, ceiling).result()
                row["train_frac"] = row["train_gflops"] / ceiling
                row["fwd_frac"] = row["fwd_gflops"] / ceiling
                target = train_target(w, b)
                row["target"] = f">= {target:.2f}" if target else ""
                row["met"] = ("yes" if row["train_frac"] >= target else "no") if target else ""
                if row["profile"]:
                    profiles.append((f"{v} width {w} batch {b}: train {row['train_frac']:.1%} of matmul, "
                                     f"target {target:.0%}", row["profile"]))
                for k in ("train_img_s", "train_gflops", "fwd_img_s", "fwd_gflops", "peak_rss_mib"):
                    row[k] = round(row[k], 1)
                for k in ("train_frac", "fwd_frac"):
                    row[k] = round(row[k], 3)
                echo(
                    f"{v:8s} width {w:4d} batch {b:3d}: train {row['train_img_s']:7.1f} img/s "
                    f"({row['train_frac']:.0%} of matmul), forward {row['fwd_img_s']:7.1f} img/s "
                    f"({row['fwd_frac']:.0%}), peak RSS {row['peak_rss_mib']:.0f} MiB"
                )
                rows.append(row)
    cols = ["variant", "width", "batch", "params", "train_img_s", "train_gflops", "train_frac", "target", "met",
            "fwd_img_s", "fwd_gflops", "fwd_frac", "peak_rss_mib"]
    table = format_table(rows, cols, markdown=True)
    echo("")
    echo(table)
    if profiles:  # where the time goes in each cell that misses its target
        table += "\n\n## Where the time goes (cells below their target)\n"
        for title, summary in profiles:
            echo(f"\n{title}\n{summary}")
            table += f"\n### {title}\n\n```\n{summary.rstrip()}\n```\n"
    extra = {"torch threads": str(threads)} if threads else {}
    extra["fp32 matmul (2048^3)"] = f"{ceiling:.1f} GFLOP/s"
    _write_report(out, "Zoo throughput benchmark", [
        "Produced by `harness bench zoo`: fp32, no compile, 32x32x3 input, patch 4, 10 classes, the paper's",
        "dropout 0.05; training = forward + backward + fused AdamW (the recipes' default) on the EDM loss with",
        f"gradient clipping. Per cell: one warm-up step, then the fastest of {REPEATS} runs of {steps} steps.", "",
        "GFLOP/s are from the zoo's analytic forward FLOPs (training counted as 3x forward); `frac` is the",
        "fraction of the fp32 matmul throughput measured at the start of the same run. Targets (issue 9): the",
        f"training step at batch {TARGET_BATCH} reaches >= 75% of it at width 512 and >= 50% at width 128; a cell",
        "that misses its target gets a profile summary below the table."], table, extra, echo=echo)
    return rows


def inprocess_context(payload: dict[str, Any], tmp: str | Path, data_root: str | Path,
                      report_fn: Callable[[dict[str, Any]], None], cpus: float) -> Any:
    """A trial's context for running its recipe in this process (benchmarks): run and cache directories under
    ``tmp`` (a fresh cache), torch threads from ``cpus``."""
    from harness.training.context import TrialContext

    paths = {"run_dir": f"{tmp}/run", "cache_dir": f"{tmp}/cache", "data_root": str(data_root)}
    ctx = TrialContext(payload, paths, report_fn, cpus=cpus)
    ctx.set_threads()
    return ctx


def _write_report(out: str | Path, title: str, intro: list[str], table: str, extra: dict[str, str] | None = None,
                  echo: Callable[[str], None] = print) -> Path:
    """results/bench/<name>.md: the title, what was measured, the machine and versions, the table."""
    info = {**machine_info(), **(extra or {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *intro, "", "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in info.items()],
             "", table, ""]
    out.write_text("\n".join(lines))
    echo(f"\nwrote {out}")
    return out


def eval_benchmark(path: str | Path, profile: str | None, sets: dict[str, Any] | None, out: str | Path,
                   echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time a study's evaluation twice in one fresh cache, as a study's first and second evaluation run it: sampling,
    features of the samples, features of the reference set (first run only: the second finds them in torch-fidelity's
    cache) and the rest (held-out denoising loss, grid). Uses the study's first trial with its model at random
    initialisation: the times are real, the distances meaningless, so none is printed. EDM-recipe studies only."""
    import tempfile

    import torch

    from harness.errors import UserError
    from harness.recipes.edm import evaluate
    from harness.study.spec import expand_trials, load_study
    from harness.training.loop import load_split, trial_model

    loaded = load_study(path, profile, sets)
    if loaded.study.recipe != "edm":
        raise UserError(f"harness bench eval times the edm recipe's evaluation; {path} uses {loaded.study.recipe!r}")
    trial = expand_trials(loaded)[0]
    payload = trial.payload()
    ev = payload["eval"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = inprocess_context(payload, tmp, loaded.data_root(), lambda _p: None, os.cpu_count() or 1)
        train = load_split(payload, ctx, "train")
        torch.manual_seed(0)
        model, _cfg = trial_model(payload)
        model.eval()
        for run in ("first", "second"):
            m, _arts, _tags = evaluate(model, payload, ctx, train, 1)
            rows.append({"run": run, "sample_s": m["sample_seconds"], "metric_s": m.get("metric_seconds", 0.0),
                         "eval_s": m["eval_seconds"]})
    first, second = rows
    for r in rows:
        r["other_s"] = r["eval_s"] - r["sample_s"] - r["metric_s"]
    # torch-fidelity extracts the samples' features on both runs and the reference's on the first only
    first["sample_features_s"] = second["sample_features_s"] = second["metric_s"]
    first["reference_features_s"] = max(0.0, first["metric_s"] - second["metric_s"])
    second["reference_features_s"] = 0.0
    speedup = first["eval_s"] / max(second["eval_s"], 1e-9)
    metric_speedup = first["metric_s"] / max(second["metric_s"], 1e-9)  # the part the reference cache can change
    cols = ["run", "eval_s", "sample_s", "sample_features_s", "reference_features_s", "other_s"]
    for r in rows:
        for k in cols[1:]:
            r[k] = round(r[k], 2)
    table = format_table(rows, cols, markdown=True)
    what = (f"{loaded.study.name} [{loaded.profile}], trial {trial.run_name}: n = {ev['n_samples']} samples "
            f"({ev['sampler']}, {ev['sampler_steps']} steps) against as many training images, extractor "
            f"{ev['extractor']}")
    echo(what)
    echo(table)
    echo(f"second evaluation {speedup:.2f}x faster than the first (reference features cached); its distance "
         f"computation (features and statistics) {metric_speedup:.2f}x")
    shares = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {second[k] / second['eval_s']:.0%}"
                       for k in ("sample_s", "sample_features_s", "other_s"))
    if speedup < EVAL_TARGET:
        echo(f"below the {EVAL_TARGET}x target: the second evaluation's time goes to {shares}; only reference "
             "features can be cached, and they cost about as much as the samples' features")
    _write_report(out, "Evaluation benchmark", [
        "Produced by `harness bench eval`: one study trial's evaluation run twice in a fresh cache, as a study's",
        "first and second evaluation run it. The model is at random initialisation (times only; no distance is",
        "reported). sample_features_s is the second run's metric time; reference_features_s is what the first run",
        "spent beyond it (the reference features, cached by torch-fidelity under a content-hash name).", "",
        f"{what}.", "",
        f"**Second evaluation: {speedup:.2f}x faster than the first** (target {EVAL_TARGET}x); its distance",
        f"computation (features of samples and reference, FID/KID statistics): {metric_speedup:.2f}x. The second",
        f"evaluation's time: {shares}. Caching can only remove the reference features, which cost as much as the",
        "samples' (as many images), so the whole evaluation speeds up by less than 2x whenever sampling takes",
        "time."], table, echo=echo)
    return rows
