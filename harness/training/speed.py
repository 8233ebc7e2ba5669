"""Speed keys every recipe's train section accepts, and the helpers that apply them.

- ``fused_optimizer`` (default: on where torch has the kernel, i.e. CPU and CUDA): Adam/AdamW as torch's fused
  kernel, several times faster than the default multi-tensor path on CPU (``harness bench keys``; the figures
  are in results/bench/keys.md).
- ``compile`` (default off): the training module goes through ``torch.compile`` (inductor), by Accelerate's
  ``dynamo_backend`` so the wrapped, distributed and unwrapped modules stay consistent. The first steps pay the
  compilation (tens of seconds on CPU); worth it only for long runs.
- ``channels_last`` (default off): conv models and their input batches in NHWC memory format.

Each key is ``None`` when a study leaves it unset, so adding these keys changed no existing trial's config hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: study files load without it
    import torch


@dataclass(frozen=True)
class SpeedKeys:
    compile: bool | None = None  # torch.compile the training module (None = off)
    channels_last: bool | None = None  # NHWC memory format for the model and its batches (None = off)
    fused_optimizer: bool | None = None  # fused Adam/AdamW kernel (None = on where available)


def speed_keys(train: dict[str, Any] | Any) -> SpeedKeys:
    """The speed keys of a train section (a dict or a recipe's train config); absent keys are unset."""
    if isinstance(train, SpeedKeys):  # every recipe's train config is one
        return train
    get = train.get if isinstance(train, dict) else lambda k, d=None: getattr(train, k, d)
    return SpeedKeys(compile=get("compile"), channels_last=get("channels_last"),
                     fused_optimizer=get("fused_optimizer"))


def fused_available(device: torch.device | str) -> bool:
    """Whether torch has fused Adam/AdamW kernels for ``device`` (CPU and CUDA in the torch this project pins)."""
    import torch

    return torch.device(device).type in ("cpu", "cuda")


def optimizer(cls: type[torch.optim.Optimizer], params: Any, train: Any, device: torch.device | str = "cpu",
              **kwargs: Any) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)`` (Adam or AdamW), fused unless the study set ``fused_optimizer: false`` or the device
    has no fused kernel."""
    fused = speed_keys(train).fused_optimizer is not False and fused_available(device)
    return cls(params, fused=True, **kwargs) if fused else cls(params, **kwargs)


def to_format(x: torch.Tensor, train: Any) -> torch.Tensor:
    """A 4-D batch in the study's memory format (a no-op unless ``channels_last``)."""
    import torch

    if x.ndim == 4 and speed_keys(train).channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: torch.nn.Module, train: Any) -> torch.nn.Module:
    """The model in the study's memory format (compilation is Accelerate's, see ``TrialContext.accelerator``)."""
    import torch

    if speed_keys(train).channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
