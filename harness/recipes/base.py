"""What a recipe registers: its name, train config, trial function, data loader, sampler and how a dataset's
shape becomes zoo overrides. Each ``<recipe>_config`` module defines one ``RECIPE``; the registry
(``harness.recipes``) collects them."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

IMAGE_QUALITY = ("image quality of n = {eval.n_samples} samples ({eval.sampler}, {eval.sampler_steps} steps) "
                 "against the first n {reference} images with {features}")


@dataclass(frozen=True)
class RecipeReport:
    """A recipe's part of the study report (harness.reporting.recipe_report fills the templates: ``{eval.<key>}``,
    ``{train[<key>]}``, ``{sources}``, ``{features}``, ``{reference}``).

    method: the sentence after "Ours: mean ± std over seeds ...;" saying how the numbers were measured.
    sampling: a substudy's sampling, after "Varies <axes>; <length> unless varied; " ("": not stated).
    reference: the split the image distances compare against ("test" or "training").
    points_figure: draw the best trial's generated points against the real test points (the recipe logs
        ``samples/points_final.npy``).
    defaults: values of template fields the study leaves unset: the recipe's own defaults for them.
    """

    method: str = IMAGE_QUALITY
    sampling: str = ""
    reference: str = "test"
    points_figure: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


MIXED_PRECISION = ("no", "fp16", "bf16")  # train.mixed_precision: Accelerate's modes

SAMPLING_REPORT = "n = {eval.n_samples} samples, {eval.sampler} with {eval.sampler_steps} steps"
DEFAULT_REPORT = RecipeReport()  # image quality against reference images, no sampling clause


@dataclass(frozen=True)
class Recipe:
    name: str
    train_config: type
    trial_fn: str  # "module:function", called as fn(trial: dict, ctx: TrialContext)
    model_overrides: Callable[[dict, str, dict, dict], dict]  # (model, dataset, data, train) -> zoo overrides
    description: str = ""
    # "module:function" loading a dataset split as fn(name, data_section, split, download): the driver calls it once
    # per dataset before anything starts, so missing data fails early with one sentence.
    data_loader: str = "harness.training.data:load_study_data"
    # The train section as training sees it, without keys applied only after training (pruning, post-training
    # quantisation): trials equal under it share one trained model (spec.Trial.train_hash). None: no sharing.
    training_view: Callable[[dict], dict] | None = None
    # "module:function" writing sample (and interpolation) grids from a finished trial's checkpoint, for
    # `harness sample`: fn(trial: dict, state: dict, out_dir: Path, n: int, seed: int, **overrides) -> list[Path].
    sampler_fn: str | None = None
    # The names eval.sampler may take, checked when the study is loaded; () when the recipe does not sample with
    # eval.sampler (the value is then ignored).
    eval_samplers: tuple[str, ...] = ()
    # What the study report says about this recipe's numbers; None: the default image-quality wording.
    report: RecipeReport | None = None
    # "module:function" measuring the floor of the recipe's metrics at a trial's evaluation settings (real vs real,
    # a perfect and a trivial generator, chance): fn(trial: dict, ctx: TrialContext, draws: int) ->
    # list[harness.eval.calibration.Floor]. None: the recipe's metrics have no calibration.
    calibrate_fn: str | None = None

    def load_trial_fn(self) -> Callable[..., Any]:
        return _resolve(self.trial_fn)

    def load_data_fn(self) -> Callable[..., Any]:
        return _resolve(self.data_loader)

    def load_calibrate_fn(self) -> Callable[..., Any] | None:
        return _resolve(self.calibrate_fn) if self.calibrate_fn else None

    def load_sampler_fn(self) -> Callable[..., Any] | None:
        return _resolve(self.sampler_fn) if self.sampler_fn else None


def image_model_overrides(model: dict, dataset: str, data: dict, train: dict | None = None) -> dict[str, Any]:
    """Image channels, size and classes from the dataset unless the study's model section sets them."""
    from harness.training.data import image_meta

    c, h, _w, k = image_meta(dataset, data)
    return {"in_channels": c, "input_size": h, "num_classes": k, **model}


_BOUND = re.compile(r"(>=|>)\s*(\S+)|in\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


def check_bounds(cfg: Any, bounds: Mapping[str | tuple[str, ...], str]) -> None:
    """Raise one ValueError naming every key of a recipe's train config ``cfg`` that is outside its bound, with its
    value ("train.steps must be >= 1, got -5"), so a bad ``--set`` says which key to fix. ``bounds`` maps a key (or
    a tuple of keys) to ">= a", "> a" or an interval "in [a, b)" (brackets include the end, parentheses exclude it);
    a key set to None is not checked (it switches a feature off)."""
    bad = []
    for keys, bound in bounds.items():
        for key in (keys,) if isinstance(keys, str) else keys:
            value = getattr(cfg, key)
            if value is not None and not _within(value, bound):
                bad.append(f"train.{key} must be {bound}, got {_shown(value)}")
    if bad:
        raise ValueError("; ".join(bad))


def check_choice(cfg: Any, key: str, choices: Iterable[str]) -> None:
    """Raise a ValueError naming ``train.<key>`` and its value unless it is one of ``choices``."""
    choices = tuple(choices)
    value = getattr(cfg, key)
    if value not in choices:
        raise ValueError(f"train.{key} must be one of {', '.join(choices)}, got {_shown(value)}")


def _within(value: Any, bound: str) -> bool:
    m = _BOUND.fullmatch(bound.strip())
    if m is None:
        raise RuntimeError(f"bad bound {bound!r}")  # a mistake in a config's bounds, not the user's
    if m[1]:
        return value >= float(m[2]) if m[1] == ">=" else value > float(m[2])
    low, high = float(m[4]), float(m[5])
    return (low <= value if m[3] == "[" else low < value) and (value <= high if m[6] == "]" else value < high)


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _resolve(path: str) -> Callable[..., Any]:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)
