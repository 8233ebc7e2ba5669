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

This module imports nothing from the harness, so a recipe's registration can import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, SimpleNamespace
from typing import Any

IMAGE_QUALITY = ("image quality of n = {eval.n_samples} samples ({eval.sampler}, {eval.sampler_steps} steps) "
                 "against the first n {reference} images with {features}")


@dataclass(frozen=True)
class RecipeReport:
    """A recipe's part of the report.

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


DEFAULT = RecipeReport()


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


# ------------------------------------------------------------------------------------------------------ fallback
# FALLBACK, keyed by recipe name, for recipes whose registration does not supply ``report`` yet. This is the only
# place in the reporting layer that names recipes; a recipe whose registration sets ``report`` is never looked up
# here, and an entry can go once its recipe supplies its own.
_SAMPLER = "n = {eval.n_samples} samples, {eval.sampler} with {eval.sampler_steps} steps"
FALLBACK: dict[str, RecipeReport] = {
    "ddpm": RecipeReport(
        method=("test-set EMD over {eval.emd_n} random points and Gaussian-kernel NLL (temperature 0.1), each "
                "averaged over {eval.runs} sampling runs; data: {sources}"),
        points_figure=True, defaults={"eval.emd_n": 128, "eval.runs": 3}),
    "classify": RecipeReport(
        method=("top-1 accuracy and cross-entropy on the whole test split, {train[steps]} steps of batch "
                "{train[batch_size]}; training accuracy on augmented batches; data: {sources}")),
    "ddpm_image": RecipeReport(sampling="n = {eval.n_samples} samples, ancestral over T = {train[T]} steps",
                               defaults={"train.T": 1000}),
    "score": RecipeReport(sampling=_SAMPLER),
    "edm": RecipeReport(sampling=_SAMPLER),
    "vdiff": RecipeReport(sampling=_SAMPLER, reference="training"),
    "gan": RecipeReport(sampling="n = {eval.n_samples} samples", reference="training"),
}


def report_of(recipe: Any, name: str) -> RecipeReport:
    """The report hook of a registered recipe: its own ``report``, else the fallback entry, else ``DEFAULT``."""
    own = getattr(recipe, "report", None)
    return own if own is not None else FALLBACK.get(name, DEFAULT)
