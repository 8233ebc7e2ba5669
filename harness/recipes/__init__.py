"""Recipes: one training function per task family, each its algorithm on the training skeleton
(``harness.training.loop``), registered by name.

Each recipe's ``<name>_config`` module defines its TrainConfig dataclass (the study's ``train:`` section is
validated against it) and one ``RECIPE`` (``harness.recipes.base.Recipe``): the import path of its trial function
(imported lazily inside Ray workers), its data loader, sampler and how a dataset's shape turns into zoo overrides.
The config modules are imported when a recipe is first looked up, not at package import, to keep `harness --help`
free of torch imports.
"""

from __future__ import annotations

import difflib
import importlib

from harness.errors import UserError
from harness.recipes.base import Recipe

BUILTIN = ("classify_config", "ddpm_config", "ddpm_image_config", "edm_config", "gan_config", "null_config",
           "score_config", "vdiff_config")
_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add a recipe (one defined outside the built-in config modules) to the registry."""
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
    for module in BUILTIN:
        recipe = importlib.import_module(f"harness.recipes.{module}").RECIPE
        _RECIPES.setdefault(recipe.name, recipe)
