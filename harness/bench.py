"""Benchmarks: scripts that print figures (never timed tests).

`harness bench zoo` measures, per zoo variant, width and batch size, the training-step throughput
(forward + backward + AdamW on the EDM loss, images/s) and the forward throughput, the achieved GFLOP/s from the
zoo's analytic FLOPs (training ~ 3x forward: one forward, two matmuls per weight in backward), and the fraction of
the machine's fp32 matmul throughput measured in the same run. Each configuration runs in a fresh process so its
peak resident memory is its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import multiprocessing as mp
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.console import format_table


def machine_info() -> dict[str, str]:
    """CPU model, cores, memory and package versions: the header of every benchmark report."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


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


def _measure(variant: str, width: int, batch: int, steps: int, threads: int | None) -> dict[str, Any]:
    """One configuration, in its own process: training-step and forward throughput and peak RSS."""
    import torch

    import zoo
    from harness.diffusion.edm import karras_loss, sample_sigmas_train

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = zoo.config(variant, width=width)
    model = zoo.build(variant, width=width)
    opt = torch.optim.AdamW(model.param_groups(5e-4, 1e-4), lr=5e-4, betas=(0.9, 0.95), eps=1e-8)
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
    t = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_s = (time.perf_counter() - t) / steps

    model.eval()
    sigma = torch.full((batch,), 1.0)
    with torch.inference_mode():
        model(x0, sigma, labels)
        t = time.perf_counter()
        for _ in range(steps):
            model(x0, sigma, labels)
        fwd_s = (time.perf_counter() - t) / steps
    fwd_flops = zoo.flops(variant, width=width)
    return {
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
    ctx = mp.get_context("spawn")
    for v in variants:
        for w in widths:
            for b in batches:
                with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    row = pool.submit(_measure, v, w, b, steps, threads).result()
                row["train_frac"] = row["train_gflops"] / ceiling
                row["fwd_frac"] = row["fwd_gflops"] / ceiling
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
    cols = ["variant", "width", "batch", "params", "train_img_s", "train_gflops", "train_frac",
            "fwd_img_s", "fwd_gflops", "fwd_frac", "peak_rss_mib"]
    table = format_table(rows, cols, markdown=True)
    echo("")
    echo(table)
    info = machine_info()
    if threads:
        info["torch threads"] = str(threads)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Zoo throughput benchmark", "", "Produced by `harness bench zoo`: fp32, no compile, 32x32x3 input,",
             "patch 4, 10 classes; training = forward + backward + AdamW on the EDM loss with gradient clipping.",
             f"Timed steps per cell: {steps} (after one warm-up step).", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += [f"| fp32 matmul (2048^3) | {ceiling:.1f} GFLOP/s |", "",
              "GFLOP/s are from the zoo's analytic forward FLOPs (training counted as 3x forward); `frac` is the",
              "fraction of the fp32 matmul throughput measured at the start of the same run.", "", table, ""]
    out.write_text("\n".join(lines))
    echo(f"\nwrote {out}")
    return rows
