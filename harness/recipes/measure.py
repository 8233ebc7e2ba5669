"""What the compression study measures after training, shared by its recipes (score/NCSN and image DDPM):
compression applied to the trained model, sizes and parameter counts, inference time per image with its NFE,
and image quality against the test set (FID with Inception features, or the classifier-feature distance)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.trial import TrialContext, TrialSkipped

SampleFn = Callable[[int, torch.Generator], tuple[torch.Tensor, int]]  # (n, generator) -> (uint8 images, NFE)
QUANTIZE = ("none", "int8_dynamic", "bnb8", "bnb4", "bnb8_adam8")  # bnb8_adam8: 8-bit Linear + 8-bit Adam


def check_arm(quantize: str, device: str) -> None:
    """Before training: an arm the device cannot run is skipped with its reason (bitsandbytes needs CUDA)."""
    from harness.compression import bnb_support

    if quantize.startswith("bnb"):
        ok, why = bnb_support(device)
        if not ok:
            raise TrialSkipped(why)


def compress(model: nn.Module, cfg: Any, seed: int) -> tuple[nn.Module, dict[str, float]]:
    """Apply the trial's post-training compression (pruning, then int8 dynamic quantisation) and measure the result."""
    from harness.compression import count_params, prune_model, quantize_dynamic_int8, state_dict_bytes

    metrics: dict[str, float] = {}
    if cfg.prune_method:
        metrics.update(prune_model(model, cfg.prune_method, cfg.prune_amount, cfg.prune_set, seed=seed))
    metrics.update(count_params(model))
    if cfg.quantize == "int8_dynamic":
        model = quantize_dynamic_int8(model)
    metrics.update(state_dict_bytes(model))
    return model, metrics


def inference_ms_per_image(sample: SampleFn, batch: int = 4, repeats: int = 3) -> dict[str, float]:
    """Warm (one untimed call), median of ``repeats`` timed calls of the sampler on ``batch`` images."""
    from harness.compression import time_per_call_ms

    nfe = {}

    def call() -> None:
        _, nfe["n"] = sample(batch, torch.Generator().manual_seed(0))

    ms = time_per_call_ms(call, warmup=1, repeats=repeats)
    return {"inference_ms_per_image": ms / batch, "nfe": float(nfe["n"])}


def save_grid(samples: torch.Tensor, ctx: TrialContext, k: int) -> str:
    """The first k uint8 samples as a grid PNG in the trial's samples folder; returns its path."""
    return str(grid_png(samples[:k], ctx.run_dir / "samples" / "final.png"))


def grid_png(images: torch.Tensor, path, nrow: int | None = None):
    """uint8 (N, C, H, W) images as one PNG grid at ``path`` (square-ish unless ``nrow`` is given)."""
    import math

    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255, path, nrow=nrow or int(math.ceil(math.sqrt(len(images)))))
    return path


def image_quality(sample: SampleFn, ev: dict[str, Any], train, test, ctx: TrialContext, seed: int):
    """n generated images against the first n test images: FID/KID (Inception) or the classifier distances."""
    from harness.metrics import image_distance, train_classifier_extractor

    n = int(ev["n_samples"])
    t0 = time.perf_counter()
    images, batches = [], []
    g = torch.Generator().manual_seed(seed + 12345)
    for start in range(0, n, ev["batch_size"]):
        x, _ = sample(min(ev["batch_size"], n - start), g)
        images.append(x)
        batches.append(len(x))
    samples = torch.cat(images)
    metrics: dict[str, float] = {"sample_seconds": time.perf_counter() - t0}
    classifier = None
    if ev["extractor"] == "classifier":
        classifier = train_classifier_extractor(train.x, train.y, train.num_classes, ctx.cache_dir,
                                                train.content_hash()[:16])
    ref = test.x[:n]
    out = image_distance(samples, ref, f"{test.content_hash()[:16]}-{len(ref)}", cache_dir=ctx.cache_dir,
                         extractor=ev["extractor"], weights_path=ev.get("inception_weights"), classifier=classifier,
                         kid="kid" in ev["metrics"], seed=0)
    tags = {}
    for key, value in out.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
        else:
            tags[f"harness.eval.{key}"] = str(value)
    return metrics, tags, samples
