"""What a study's report says about the numbers one recipe produces: the hook a recipe's registration supplies.

The settings report states how its numbers were measured (its header), how each substudy drew its samples, and
may draw generated against real points. That text depends on the recipe, so the recipe supplies it as a
``RecipeReport`` (the ``report`` field of its registration); the report code never switches on recipe names.
Recipes registered without one get ``DEFAULT``: image quality against reference images, no sampling clause.

Templates are filled with ``str.format`` from ``template_fields``: ``{eval.<key>}`` for the study's (or
substudy's) eval section (``{eval.n_samples}``, ``{eval.sampler}``, ``{eval.emd_n}``, ...), ``{train[<key>]}`` for
its train section as written in the study (``{train[steps]}``, ``{train[T]}``), ``{sources}`` (where each dataset came
from), ``{features}`` (the feature extractor, as ``metrics.FEATURE_SPACES`` describes it) and ``{reference}`` (the
split of the reference images). A value the study leaves unset (absent or None) takes ``defaults["eval.<key>"]`` or
``defaults["train.<key>"]``, else "?".

``RecipeReport`` itself is defined with the rest of a recipe's registration (harness.recipes.base).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from harness.recipes.base import DEFAULT_REPORT as DEFAULT
from harness.recipes.base import IMAGE_QUALITY, RecipeReport  # noqa: F401 - re-exported


class _Fields(dict):
    """A train section for templates: absent keys read as "?"."""

    def __missing__(self, key: str) -> str:
        return "?"


def template_fields(report: RecipeReport, eval_section: Any, train: Mapping[str, Any], **extra: Any) -> dict:
    """What a template may name: ``eval`` (attributes of the eval dataclass), ``train`` (a mapping), the report's
    ``reference`` and ``extra``; unset values from ``report.defaults``, else "?"."""
    def filled(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: report.defaults.get(f"{section}.{k}", "?") if v is None else v for k, v in values.items()}
        for key, v in report.defaults.items():
            prefix, _, k = key.partition(".")
            if prefix == section:
                out.setdefault(k, v)
        return out

    return {"eval": SimpleNamespace(**filled("eval", dataclasses.asdict(eval_section))),
            "train": _Fields(filled("train", train)), "reference": report.reference, **extra}


def report_of(recipe: Any) -> RecipeReport:
    """The report hook of a registered recipe: its own ``report``, else ``DEFAULT``."""
    own = getattr(recipe, "report", None)
    return own if own is not None else DEFAULT
