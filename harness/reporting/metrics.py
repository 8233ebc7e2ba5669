"""The reporting layer's metric catalogue: one entry per quantity a table, comparison or Pareto plot shows.

A ``Metric`` holds the name a study uses for it (``eval.metrics``, ``table.metric``, ``table.scatter``, the paper
table's ``<name>_<dataset>`` columns), the key the recipe logs to MLflow, its labels, whether lower or higher is
better, its unit and, for image distances, the feature extractor it is computed in. A Frechet or kernel distance is
FID/KID only in Inception-v3 features: in any other feature space it has its own key and labels, and a ``Metric``
refuses to be built with an FID/KID label for another extractor.

Tables, settings tables, ``harness compare`` and the Pareto plots read names, labels and directions from here only.
The study schema keeps its own name -> (label, key) mapping to validate study files; tests/test_reporting.py checks
that the two agree. This module imports nothing from the harness, so any module may import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOWER, HIGHER = "lower", "higher"
INCEPTION, CLASSIFIER = "inception", "classifier"

# Labels that name the Inception distances; a distance in other features may only say it is "not FID/KID".
_INCEPTION_WORDS = re.compile(r"\b(FID|KID)\b")
_DISCLAIMER = re.compile(r"not (FID/KID|FID|KID)\b")


@dataclass(frozen=True)
class Metric:
    """One reported quantity.

    name: what studies call it. Under the classifier extractor the names ``fid``/``kid`` ask for the
        classifier-feature distances, which are separate entries with their own keys and labels.
    key: the metric key the recipe logs to MLflow.
    label: the column label of settings tables and the axis label of plots.
    direction: ``"lower"`` or ``"higher"`` (which is better).
    unit: the unit of the logged value ("" when it has none).
    features: for image distances, the ``eval.extractor`` whose features they are computed in; None otherwise.
    short: a compact label (Table 1's columns, the relative columns); defaults to ``label``.
    long: the label of captions and Table 1's plot axis; defaults to ``label``.
    """

    name: str
    key: str
    label: str
    direction: str = LOWER
    unit: str = ""
    features: str | None = None
    short: str = ""
    long: str = ""

    def __post_init__(self) -> None:
        if self.direction not in (LOWER, HIGHER):
            raise ValueError(f"metric {self.name!r}: direction must be {LOWER!r} or {HIGHER!r}, got {self.direction!r}")
        object.__setattr__(self, "short", self.short or self.label)
        object.__setattr__(self, "long", self.long or self.label)
        if self.features is not None and self.features != INCEPTION:
            for text in (self.label, self.short, self.long):
                if _INCEPTION_WORDS.search(_DISCLAIMER.sub("", text)):
                    raise ValueError(f"metric {self.key!r} is computed in {self.features} features: {text!r} must "
                                     "not call it FID/KID (those are Inception distances)")

    @property
    def higher_better(self) -> bool:
        return self.direction == HIGHER


@dataclass(frozen=True)
class FeatureSpace:
    """An ``eval.extractor``: what the image distances are computed in, as the report describes it.

    caption: Table 1's caption ("features: ..."); method: the settings report's header ("... with <method>")."""

    name: str
    caption: str
    method: str


FEATURE_SPACES = {
    INCEPTION: FeatureSpace(INCEPTION, "Inception-v3 (torch-fidelity)", "Inception-v3 features (FID/KID)"),
    CLASSIFIER: FeatureSpace(
        CLASSIFIER,
        "a small classifier trained on the dataset (a Frechet/kernel distance in its feature space, not FID/KID)",
        "a classifier trained on the dataset (Frechet/kernel distances in its feature space, not FID/KID)"),
}

# The table metrics, by study name. For fid and kid these are the Inception distances: the quantities papers report.
TABLE_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("emd", "emd_test", "EMD"),
    Metric("nll", "nll_test", "NLL", unit="nats"),
    Metric("fid", "fid", "FID", features=INCEPTION),
    Metric("kid", "kid", "KID", features=INCEPTION),
    Metric("size", "compressed_bytes", "Size (gzip bytes)", unit="bytes"),
    Metric("params", "params", "Params", unit="parameters"),
    Metric("nonzero", "nonzero_params", "Non-zero params", unit="parameters"),
    Metric("inference", "inference_ms_per_image", "Inference ms/image", unit="ms/image"),
    Metric("train_ms", "train_ms_per_epoch", "Train ms/epoch", unit="ms/epoch"),
    Metric("accuracy", "val_accuracy", "Val accuracy", HIGHER, unit="fraction"),
    Metric("val_loss", "val_loss", "Val loss", unit="nats"),
    Metric("train_accuracy", "train_accuracy", "Train accuracy", HIGHER, unit="fraction"),
    Metric("train_loss", "train_loss", "Train loss", unit="nats"),
)}

# The image distances per extractor: (Frechet distance, kernel distance). Studies name them fid and kid.
IMAGE_DISTANCES: dict[str, tuple[Metric, Metric]] = {
    INCEPTION: (TABLE_METRICS["fid"], TABLE_METRICS["kid"]),
    CLASSIFIER: (
        Metric("fid", "fd_classifier", "FD (classifier)", features=CLASSIFIER, short="FD (clf)",
               long="FD (classifier features, not FID)"),
        Metric("kid", "kd_classifier", "KD (classifier)", features=CLASSIFIER, short="KD (clf)",
               long="KD (classifier features, not KID)"),
    ),
}

# Logged keys that are no table metric but may be compared or plotted (`harness compare --metric KEY`).
# isc is computed from the study's extractor's logits, so it carries no feature-space name.
LOGGED_METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("images_per_s", "images_per_s", "Images/s", HIGHER, unit="images/s"),
    Metric("isc", "isc", "isc", HIGHER),
)}

_BY_KEY: dict[str, Metric] = {m.key: m for m in (*TABLE_METRICS.values(), *LOGGED_METRICS.values(),
                                                 *(m for pair in IMAGE_DISTANCES.values() for m in pair))}


def image_distances(extractor: str) -> tuple[Metric, Metric]:
    """(Frechet distance, kernel distance) in the features of ``extractor`` (a resolved ``eval.extractor``)."""
    if extractor not in IMAGE_DISTANCES:
        raise ValueError(f"no image distances for extractor {extractor!r}; known: {', '.join(IMAGE_DISTANCES)}")
    return IMAGE_DISTANCES[extractor]


def table_metric(name: str, extractor: str) -> Metric:
    """The metric a study's metric ``name`` means under ``extractor``; KeyError for a name that is no table metric."""
    if name in ("fid", "kid"):
        return image_distances(extractor)[0 if name == "fid" else 1]
    return TABLE_METRICS[name]


def resolve(name: str, extractor: str) -> Metric:
    """A table metric's name, else a logged key (its catalogue entry, or a lower-better metric labelled by the key:
    losses and distances, the usual kind of an uncatalogued key)."""
    if name in TABLE_METRICS:
        return table_metric(name, extractor)
    return _BY_KEY.get(name) or Metric(name, name, name)


def by_key(key: str) -> Metric | None:
    """The catalogue entry logged under ``key`` (None when the catalogue has none)."""
    return _BY_KEY.get(key)


def same_as_paper(name: str, extractor: str) -> bool:
    """Whether what we measure as ``name`` is the quantity the papers report under that name (their distances are
    Inception distances: a classifier-feature distance is never set beside them)."""
    return table_metric(name, extractor).key == TABLE_METRICS[name].key
