"""Recipes: one plain training function per task family (CONVENTIONS 9).

A recipe is registered here by name with its TrainConfig dataclass (the study's ``train:`` section is validated
against it), the import path of its trial function (imported lazily inside Ray workers), and how a dataset's shape
turns into zoo overrides (channels, input size, classes) unless the study sets them itself.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError


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

    def load_trial_fn(self) -> Callable[..., Any]:
        return _resolve(self.trial_fn)

    def load_data_fn(self) -> Callable[..., Any]:
        return _resolve(self.data_loader)

    def load_sampler_fn(self) -> Callable[..., Any] | None:
        return _resolve(self.sampler_fn) if self.sampler_fn else None


def image_model_overrides(model: dict, dataset: str, data: dict, train: dict | None = None) -> dict[str, Any]:
    """Image channels, size and classes from the dataset unless the study's model section sets them."""
    from harness.training.data import image_meta

    c, h, _w, k = image_meta(dataset, data)
    return {"in_channels": c, "input_size": h, "num_classes": k, **model}


def start_trial(trial: dict[str, Any], ctx: Any, mixed_precision: str = "no") -> tuple[Any, ...]:
    """The common start of an image recipe: (accelerator, seed, a torch Generator seeded per rank, the training
    split, model in the study's memory format, model config), with torch's global RNG seeded per rank too."""
    import torch

    from harness.training.data import load_study_data
    from harness.training.speed import prepare_model

    acc = ctx.accelerator(mixed_precision, compile=trial["train"].get("compile"))
    seed = int(trial["seed"])
    torch.manual_seed(seed * 1000 + ctx.rank)
    gen = torch.Generator().manual_seed(seed * 1000 + ctx.rank)
    train = load_study_data(trial["dataset"], {**trial["data"], "root": str(ctx.data_root)}, "train")
    model, model_cfg = trial_model(trial)
    return acc, seed, gen, train, prepare_model(model, trial["train"]), model_cfg


def trial_model(trial: dict[str, Any]) -> tuple[Any, Any]:
    """(module, frozen config) of a trial's resolved zoo config (lists from the config dict back to tuples)."""
    import zoo

    family = zoo.get_family(trial["family"])
    cfg = family.config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in trial["model"].items()})
    return family.build(cfg), cfg


def param_groups(model: Any, lr: float, weight_decay: float) -> list[dict]:
    """The model's own AdamW groups when it declares them (zoo families decide what decays), else nanoGPT's rule."""
    if hasattr(model, "param_groups"):
        return model.param_groups(lr, weight_decay)
    from zoo.registry import decay_param_groups

    return decay_param_groups(model, lr, weight_decay)


def restore(state: dict[str, Any] | None, **parts: Any) -> dict[str, Any]:
    """Load a checkpoint into the named parts (anything with load_state_dict; None parts are skipped) and the
    torch RNG; returns the checkpoint's remaining entries (step, epoch, ...), or {} when starting fresh."""
    import torch

    if state is None:
        return {}
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(state[name])
    if "rng" in state and isinstance(state["rng"], torch.Tensor):
        torch.set_rng_state(state["rng"])
    return {k: v for k, v in state.items() if k not in parts and k != "rng"}


def report_history(ctx: Any, history: list[dict[str, float]], log_every: int) -> dict[str, str]:
    """Report the per-epoch training metrics of a trained model before its final epoch (those the driver already
    logged for this run are dropped there, by step), and return tags saying where the model was trained.

    A trial that shares a trained model with others (``ctx.shares_training``) may have trained none of it: its
    MLflow run still gets the training curve, from the checkpoint's history."""
    for epoch, metrics in enumerate(history[:-1], start=1):
        if epoch % log_every == 0:
            ctx.report(epoch, metrics)
    if not ctx.shares_training:
        return {}
    return {"harness.train_hash": str(ctx.trial.get("train_hash", "")),
            "harness.training": "trained here" if ctx.trained_epochs else "reused a shared trained model"}


def _resolve(path: str) -> Callable[..., Any]:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str, where: str = "study") -> Recipe:
    _load_builtin()
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, list(_RECIPES), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"recipes: {', '.join(sorted(_RECIPES))}"
        raise UserError(f"{where}: unknown recipe {name!r} ({hint})")
    return _RECIPES[name]


def recipe_names() -> list[str]:
    _load_builtin()
    return sorted(_RECIPES)


def _load_builtin() -> None:
    # Each recipe's config module registers itself; imported here, not at package import, to keep `harness --help`
    # free of torch imports.
    from harness.recipes import (  # noqa: F401
        classify_config,
        ddpm_config,
        ddpm_image_config,
        edm_config,
        gan_config,
        null_config,
        score_config,
        vdiff_config,
    )
