"""Model compression as study axes, applicable to any zoo model (the MNIST compression report's three techniques).

- Unstructured pruning with ``torch.nn.utils.prune`` (the report used it): random or L1, over a module set
  (``global``: every conv/linear weight; ``middle`` / ``extremes``: the sets a model declares in
  ``compression_sets()``, e.g. a U-Net's bottleneck and its first/last layers), made permanent with ``prune.remove``
  so the saved state dict has plain tensors that load anywhere.
- Dynamic int8 quantisation of Linear layers with PyTorch's own ``quantize_dynamic`` (CPU); bitsandbytes 4/8-bit
  Linear layers only where bitsandbytes supports the device (``bnb_support`` says why not otherwise).
- Grouped convolutions are a model config key (``groups``), trained from scratch; nothing to do here.

Measurements: trainable and non-zero parameters, state-dict bytes raw and gzip-compressed (unstructured zeros only
shrink a compressed file, which is why the report measured compressed size), and warm, synchronised inference time.
"""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

PRUNE_METHODS = {"random": prune.RandomUnstructured, "l1": prune.L1Unstructured}
MODULE_SETS = ("global", "middle", "extremes")
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


class CompressionError(ValueError):
    """A compression setting that cannot apply to this model (one sentence)."""


def prunable_weights(model: nn.Module, module_set: str = "global") -> list[tuple[nn.Module, str]]:
    """(module, "weight") pairs of the conv and linear layers in ``module_set``.

    ``middle`` and ``extremes`` come from the model's ``compression_sets()`` -> {set: [module name prefixes]}; a
    layer belongs to a set when its qualified name starts with one of the prefixes.
    """
    if module_set not in MODULE_SETS:
        raise CompressionError(f"unknown module set {module_set!r}; use one of {', '.join(MODULE_SETS)}")
    prefixes: list[str] | None = None
    if module_set != "global":
        sets = getattr(model, "compression_sets", lambda: {})()
        if module_set not in sets:
            raise CompressionError(f"{type(model).__name__} declares no {module_set!r} module set (it declares: "
                                   f"{', '.join(sets) or 'none'}); use module set 'global'")
        prefixes = list(sets[module_set])
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, _PRUNABLE):
            continue
        if prefixes is None or any(name == p or name.startswith(p + ".") for p in prefixes):
            out.append((module, "weight"))
    if not out:
        raise CompressionError(f"module set {module_set!r} of {type(model).__name__} holds no conv or linear layer")
    return out


def prune_model(model: nn.Module, method: str, amount: float, module_set: str = "global",
                seed: int = 0) -> dict[str, float]:
    """Zero ``amount`` (a fraction) of the weights in ``module_set``, chosen by ``method`` over the whole set at once
    (``prune.global_unstructured``), then make it permanent. Returns the set's size and achieved sparsity."""
    if method not in PRUNE_METHODS:
        raise CompressionError(f"unknown pruning method {method!r}; use one of {', '.join(PRUNE_METHODS)}")
    if not 0 <= amount < 1:
        raise CompressionError(f"pruning amount must be a fraction in [0, 1), got {amount}")
    params = prunable_weights(model, module_set)
    total = sum(m.weight.numel() for m, _ in params)
    if amount > 0:
        with torch.random.fork_rng(devices=[]):  # random pruning draws from its own seeded stream
            torch.manual_seed(seed)
            prune.global_unstructured(params, pruning_method=PRUNE_METHODS[method], amount=amount)
        for module, name in params:
            prune.remove(module, name)  # weight = weight_orig * mask, as a plain parameter
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return {"pruned_set_weights": total, "pruned_set_sparsity": zeros / total}


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters (tied ones once; an EMA copy's count too, though it does not require grad) and the non-zeros."""
    params = list(model.parameters())
    return {"params": sum(p.numel() for p in params), "nonzero_params": sum(int(p.count_nonzero()) for p in params)}


def state_dict_bytes(model: nn.Module) -> dict[str, int]:
    """Size of ``torch.save(model.state_dict())`` raw and gzip-compressed (level 9)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    raw = buf.getvalue()
    return {"state_dict_bytes": len(raw), "compressed_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's dynamic int8 quantisation of every nn.Linear (weights int8, activations quantised on the fly)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def bnb_support(device: str) -> tuple[bool, str]:
    """Whether bitsandbytes 4/8-bit layers can run on ``device``; otherwise the reason, for a skipped trial."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False, "bitsandbytes 4/8-bit Linear layers need a CUDA GPU and this trial runs on the CPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False, "bitsandbytes is not installed (pip install bitsandbytes on a CUDA machine)"
    return True, ""


def time_per_call_ms(fn: Callable[[], object], warmup: int = 2, repeats: int = 5, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` in ms after ``warmup`` untimed calls, synchronising CUDA around each call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") and torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[len(times) // 2]
