"""Study files: YAML -> validated dataclasses -> concrete trials, each with a stable config hash.

A study YAML is data: it names zoo entries and lists axes, no code. Precedence is fixed: dataclass defaults <
study YAML < scale profile < ``--set`` on the command line (docs/conventions.md, "Study files are data").

Every user-caused problem raises :class:`SpecError` whose message is one sentence naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import YAML_VALUE_ERRORS, UserError, unreadable_value
from harness.study.schema import (  # noqa: F401 - the schema, re-exported for readers of spec
    Budget,
    DataSpec,
    EvalSpec,
    Resources,
    Study,
    TableSpec,
)
from zoo.registry import type_name, type_ok


class SpecError(UserError):
    """A problem in a study file or its overrides."""


# --------------------------------------------------------------------------------------------- generic validation
def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types with ``where`` in the message."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise SpecError(f"{where}: unknown key {key!r} ({_suggest(str(key), sorted(fields))})")
        ann = hints[key]
        if dataclasses.is_dataclass(ann):
            kwargs[key] = from_dict(ann, value, f"{where}.{key}")
            continue
        if isinstance(value, list) and typing.get_origin(ann) is tuple:
            value = tuple(value)
        if ann is float and isinstance(value, int) and not isinstance(value, bool):
            value = _as_float(value, f"{where}.{key}")
        if isinstance(value, float) and _int_field(ann) and value.is_integer() and abs(value) <= 2**53:
            value = int(value)  # 1e8 (YAML or --set) where an int is expected: the int; 2.5 stays a type error
        if not type_ok(value, ann):
            raise SpecError(f"{where}.{key}: {short(value)} has type {type(value).__name__}, expected {type_name(ann)}")
        _check_finite(value, f"{where}.{key}")
        kwargs[key] = value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        head, _, section = where.rpartition(": ")
        if head and str(e).startswith(f"{section}."):  # the message names its key in full (train.steps ...)
            raise SpecError(f"{head}: {e}") from None
        raise SpecError(f"{where}: {e}") from None
    except (RuntimeError, MemoryError, OverflowError) as e:  # a value too large to check (e.g. T = 5e8 steps)
        raise SpecError(f"{where}: a value is too large to use ({_first_line(e)})") from None


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters for a message (a 100,000-digit number or a page of text stays one
    short sentence)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"a {_digits(value):,}-digit number"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _key(key: Any) -> str:
    """A key for a message: as it is when short and printable, else its shortened repr."""
    return key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 80 else short(key)


def _digits(n: int) -> int:
    """Decimal digits of ``n`` without converting it to a string (which Python refuses past 4,300 digits)."""
    d = max(1, int(abs(n).bit_length() * 0.30103))
    while abs(n) >= 10**d:
        d += 1
    return d


def _int_field(ann: Any) -> bool:
    """An ``int`` or ``int | None`` field (not one that also takes floats)."""
    args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    return int in args and float not in args


def _as_float(value: int, where: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise SpecError(f"{where}: {short(value)} is too large for a number") from None


def _check_finite(value: Any, where: str) -> None:
    """NaN and infinity are never a setting; an int too large for a float is not a number either (one level of
    tuples/lists too: betas). Mappings are checked by the section they belong to."""
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, float) and not math.isfinite(v):
            raise SpecError(f"{where}: {v!r} is not a finite number")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 1e300:
            raise SpecError(f"{where}: {short(v)} is too large for a number")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def deep_merge(base: dict, over: dict) -> dict:
    """Recursive dict update (profiles and --set); lists and scalars are replaced, not merged."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dotted_to_nested(sets: dict[str, Any]) -> dict:
    """{"train.lr": 1e-4} -> {"train": {"lr": 1e-4}}."""
    out: dict = {}
    for key, value in sets.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {_key(key)}: {short(p)} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


# ------------------------------------------------------------------------------------------------ loading a study
@dataclass(frozen=True)
class LoadedStudy:
    """A study with its profile and CLI overrides applied, and where it came from."""

    study: Study
    path: Path
    profile: str
    raw: dict  # the merged mapping that was validated (written out as the resolved YAML)
    substudies: tuple[tuple[str, Study], ...] = ()  # (substudy name, its study); ("", study) without substudies

    @property
    def project_dir(self) -> Path:
        return self.path.resolve().parent.parent

    def data_root(self) -> Path:
        root = Path(self.study.data.root).expanduser()
        return root if root.is_absolute() else (self.project_dir / root).resolve()


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads 1e-4 and 1e8 (exponent, no dot) as numbers, as ``--set`` does; YAML 1.1 reads them as
    text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(path: Path) -> dict:
    """Safe-load a study file; syntax errors become one sentence with the line number."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"study file {path} does not exist") from None
    except OSError as e:
        raise SpecError(f"cannot read study file {path}: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: YAML syntax error{at}: {problem}") from None
    except YAML_VALUE_ERRORS as e:  # e.g. a 100,000-digit number
        raise SpecError(f"{path}: cannot read a value ({unreadable_value(e)})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a study file must be a mapping of keys, got {type(data).__name__}")
    return data


def load_study(path: str | Path, profile: str | None = None, sets: dict[str, Any] | None = None) -> LoadedStudy:
    """Read, merge (YAML < profile < --set) and validate a study file, including its recipe's train section."""
    path = Path(path)
    raw = read_yaml(path)
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise SpecError(f"{path}: 'profiles' must be a mapping of profile name to overrides")
    profile = profile or raw.get("default_profile") or "default"
    _check_name(profile, "profile", str(path))
    if profile != "default" and profile not in profiles:
        raise SpecError(f"{path}: unknown profile {profile!r} (profiles: {', '.join(profiles) or 'none'})")
    prof = profiles.get(profile) or {}
    if not isinstance(prof, dict):
        raise SpecError(f"{path}: profiles.{profile} must be a mapping of overrides, got {type(prof).__name__}")
    prof_parts = prof.get("substudies") or {}
    if not isinstance(prof_parts, dict) or not all(isinstance(v, dict) or v is None for v in prof_parts.values()):
        raise SpecError(f"{path}: profiles.{profile}.substudies must map substudy names to mappings of overrides")
    raw_parts = raw.get("substudies") or {}
    if not isinstance(raw_parts, dict) or not all(isinstance(v, dict) or v is None for v in raw_parts.values()):
        raise SpecError(f"{path}: 'substudies' must map substudy names to mappings of overrides")
    merged = deep_merge(raw, prof)
    if sets:
        merged = deep_merge(merged, dotted_to_nested(sets))
    where = str(path)
    study = _validated(merged, where)
    # A substudy: the study < its substudy entry < the profile < the profile's entry for the substudy < --set. A
    # substudy's axes replace the study's (they are its question); the profile and --set never touch axes of
    # substudies they do not name.
    global_over = [{k: v for k, v in prof.items() if k not in ("substudies", "axes")},
                   {k: v for k, v in dotted_to_nested(sets or {}).items() if k != "axes"}]
    base = {k: v for k, v in raw.items() if k not in ("substudies", "profiles")}
    substudies: list[tuple[str, Study]] = []
    for name, over in study.substudies.items():
        _check_name(name, "substudy", where)
        if not isinstance(over, dict):
            raise SpecError(f"{where}: substudies.{name} must be a mapping of overrides")
        bad = sorted(set(over) & {"name", "profiles", "substudies", "default_profile", "resources"})
        if bad:
            raise SpecError(f"{where}: substudies.{name} cannot set {bad[0]!r} (set it for the whole study)")
        raw_over = (raw.get("substudies") or {}).get(name) or {}
        sub = deep_merge(base, raw_over)
        if "axes" in raw_over:
            sub["axes"] = raw_over["axes"]
        sub = deep_merge(sub, global_over[0])
        own = prof_parts.get(name) or {}
        sub = deep_merge(sub, own)
        if "axes" in own:
            sub["axes"] = own["axes"]
        sub = deep_merge(sub, global_over[1])
        substudies.append((name, _validated(sub, f"{where}: substudies.{name}")))
    _check_table_refs(study, where)
    return LoadedStudy(study, path, profile, merged, tuple(substudies) or (("", study),))


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")


def safe_component(value: Any, what: str, where: str) -> str:
    """The one check for a study-controlled string that becomes (part of) a file or folder name: study, profile and
    substudy names, table.combine/plots/curves keys, metric names in plot and CSV names, `harness compare --by`.
    Letters, digits, '_', '.', '-', starting with a letter or digit, at most 80: no '/' (so no '..' component and no
    absolute path), no '.' or '..' alone, nothing a shell or a file system reads specially."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise SpecError(f"{where}: {what} {short(value, 90)} must be 1-80 letters, digits, '_', '.' or '-', starting "
                        "with a letter or digit (it becomes a file name)")
    return value


def _check_name(name: Any, what: str, where: str) -> None:
    """Study, substudy and profile names become file and folder names (results/<study>/<profile>/<substudy>.csv)
    and MLflow experiment names."""
    safe_component(name, f"{what} name", where)


def out_file(out_dir: Path, name: str) -> Path:
    """``out_dir / name`` for a file a table writer is about to write, refused unless it resolves inside ``out_dir``
    (the study's folder under the results directory). Names were checked when the study was loaded
    (:func:`safe_component`); this is the second lock, where the file is written."""
    target = Path(out_dir) / name
    base = Path(out_dir).resolve()
    if Path(name).is_absolute() or not target.resolve().is_relative_to(base):
        raise UserError(f"refusing to write {short(str(target), 200)}: it is not inside the results folder {base}")
    return target


def _paper_csv_exists(name: str) -> bool:
    import importlib.resources

    return "/" not in name and importlib.resources.files("harness").joinpath("paper_tables", name).is_file()


EXTRACTORS = ("inception", "classifier", "auto")
TABLE_KINDS = ("best_checkpoint", "settings")
RAY_TRAIN = ("auto", "always")
# Table columns by the study's eval.metrics name: (label, the key the recipe logs). The paper's CSV names its
# column <name>_<dataset>. Test-set values, as the papers report them. (harness.reporting.settings draws them.)
METRICS = {
    "emd": ("EMD", "emd_test"),
    "nll": ("NLL", "nll_test"),
    "fid": ("FID", "fid"),
    "kid": ("KID", "kid"),
    "size": ("Size (gzip bytes)", "compressed_bytes"),
    "params": ("Params", "params"),
    "nonzero": ("Non-zero params", "nonzero_params"),
    "inference": ("Inference ms/image", "inference_ms_per_image"),
    "train_ms": ("Train ms/epoch", "train_ms_per_epoch"),
    "accuracy": ("Val accuracy", "val_accuracy"),
    "val_loss": ("Val loss", "val_loss"),
    "train_accuracy": ("Train accuracy", "train_accuracy"),
    "train_loss": ("Train loss", "train_loss"),
}
# With the classifier extractor, distances are in its feature space: never labelled FID/KID.
CLASSIFIER_METRICS = {"fid": ("FD (classifier)", "fd_classifier"), "kid": ("KD (classifier)", "kd_classifier")}
# What eval.metrics may list: the table metrics, and the EDM recipe's held-out denoising loss.
EVAL_METRICS = (*METRICS, "denoise_loss")

# Bounds checked before anything runs (a value past them would fail, or fill the disk or memory, much later).
MAX_COUNT = 999_999_999  # steps and epochs: checkpoints and sample grids are named step_<9 digits>
MAX_SEED = 2**31 - 1  # seeds are offset (seed * 1000 + rank) and must stay inside torch's and NumPy's seed ranges
MAX_IMAGE_SIDE = 4096  # data.size / data.pad: no dataset here is near it (CIFAR 32, MNIST 28); larger is a typo
MAX_WORKERS = 4096
# Memory estimate per trial (a deliberate lower bound, so only what clearly cannot fit is refused): activations of
# at least ACTIVATION_FACTOR x the fp32 input batch, plus 16 bytes per parameter (fp32 weights, gradients and two
# Adam moments), plus the evaluation's fp32 samples held at once.
ACTIVATION_FACTOR = 32
BYTES_PER_PARAM = 16


def resolve_extractor(ev: EvalSpec, where: str) -> EvalSpec:
    """``eval.extractor: auto`` becomes ``inception`` when Inception weights are available offline (torch-fidelity's
    own file, ``harness fid-weights install``'s conversion or ``eval.inception_weights``), else ``classifier``."""
    if ev.extractor not in EXTRACTORS:
        raise SpecError(f"{where}: eval.extractor must be one of {', '.join(EXTRACTORS)}, got {ev.extractor!r}")
    if ev.extractor != "auto":
        return ev
    if ev.inception_weights:  # a file named by the user: Inception, and a missing file is an error when it is used
        return dataclasses.replace(ev, extractor="inception")
    from harness.eval.image_metrics import inception_available

    return dataclasses.replace(ev, extractor="inception" if inception_available() else "classifier")


def _validated(merged: dict, where: str) -> Study:
    from harness.recipes import get_recipe

    study = from_dict(Study, merged, where)
    study = dataclasses.replace(study, eval=resolve_extractor(study.eval, where))
    _check_name(study.name, "study", where)
    recipe = get_recipe(study.recipe, where)
    train = from_dict(recipe.train_config, study.train, f"{where}: train")  # validate now; trials rebuild it
    check_train(train, where)
    check_eval(study.eval, recipe, where)
    _check_resources(study.resources, where)
    check_data(study.data, where)
    _check_table(study.table, where)
    _count(study.calibration_draws, "calibration_draws", where, low=0, high=1000)
    for key, values in study.axes.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: axes.{_key(key)} must be a non-empty list of values")
        keys = key.split("+")  # "train.lbeta+train.ubeta": values move together, as pairs
        for k in keys:
            if k.split(".", 1)[0] not in {"model", "train", "eval", "data"} or "." not in k:
                raise SpecError(f"{where}: axes key {k!r} must be 'model.<key>', 'train.<key>', 'eval.<key>' or "
                                "'data.<key>'")
        if len(keys) > 1 and any(not isinstance(v, list) or len(v) != len(keys) for v in values):
            raise SpecError(f"{where}: every value of axes.{_key(key)} must be a list of {len(keys)} values, one per "
                            "key")
    if study.table.paper_csv and not _paper_csv_exists(study.table.paper_csv):
        raise SpecError(f"{where}: table.paper_csv {study.table.paper_csv!r} is not one of the paper tables in "
                        "harness/paper_tables/")
    batch, workers = study.train.get("batch_size"), study.resources.workers
    if isinstance(batch, int) and workers > 1 and batch % workers:
        raise SpecError(f"{where}: train.batch_size={batch} cannot be split evenly across resources.workers={workers} "
                        "(each worker trains on an equal slice of the global batch)")
    if not study.variants:
        raise SpecError(f"{where}: 'variants' must list at least one zoo name")
    if not study.datasets:
        raise SpecError(f"{where}: 'datasets' must list at least one dataset")
    if not study.seeds:
        raise SpecError(f"{where}: 'seeds' must list at least one seed")
    bad = [s for s in study.seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise SpecError(f"{where}: seed {short(bad[0])} must be an integer from 0 to {MAX_SEED:,}")
    return study


# ---------------------------------------------------------------------------------------------- value checks
def _count(value: Any, key: str, where: str, low: int = 1, high: int = MAX_COUNT, why: str = "") -> None:
    """``value`` (None allowed) must be an int in [low, high]; ``why`` explains the upper bound."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: {key} must be an integer, got {short(value)}")
    if value < low:
        raise SpecError(f"{where}: {key} must be at least {low}, got {short(value)}")
    if value > high:
        raise SpecError(f"{where}: {key}={short(value)} is too large: at most {high:,}{why}")


STEP_KEYS = ("steps", "epochs")
POSITIVE_TRAIN_KEYS = ("steps", "epochs", "batch_size")
_STEPS_WHY = " (checkpoint and sample files number steps and epochs with 9 digits)"


def _is_lr(name: str) -> bool:
    return name == "lr" or name.startswith("lr_") or name.endswith("_lr")


def check_train(cfg: Any, where: str) -> None:
    """Bounds every recipe's TrainConfig shares (its own ``__post_init__`` checks the rest): steps, epochs and batch
    sizes positive, every count below 10^9 (steps and epochs name checkpoint files with 9 digits), learning rates
    positive, mixed precision one torch has."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"train.{f.name}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            low = 1 if f.name in POSITIVE_TRAIN_KEYS else -MAX_COUNT
            _count(value, key, where, low, MAX_COUNT, _STEPS_WHY if f.name in STEP_KEYS else "")
        elif isinstance(value, float) and _is_lr(f.name) and not value > 0:
            raise SpecError(f"{where}: {key} must be a positive learning rate, got {value!r}")
    mp = getattr(cfg, "mixed_precision", "no")
    if mp not in ("no", "fp16", "bf16"):
        raise SpecError(f"{where}: train.mixed_precision must be no, fp16 or bf16, got {short(mp)}")


def check_eval(ev: EvalSpec, recipe: Any, where: str) -> None:
    """Counts positive and bounded, metric names known, and the sampler one the recipe has (recipes that do not sample
    with eval.sampler ignore it)."""
    for key in ("every", "n_samples", "batch_size", "grid", "sampler_steps", "runs", "emd_n", "sampling_seeds"):
        _count(getattr(ev, key), f"eval.{key}", where)
    for m in ev.metrics:
        if m not in EVAL_METRICS:
            close = difflib.get_close_matches(str(m), EVAL_METRICS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"metrics: {', '.join(EVAL_METRICS)}"
            raise SpecError(f"{where}: eval.metrics entry {short(m)} is not a known metric ({hint})")
    samplers = getattr(recipe, "eval_samplers", ())
    if samplers and ev.sampler not in samplers:
        close = difflib.get_close_matches(str(ev.sampler), samplers, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(f"{where}: eval.sampler {short(ev.sampler)} is not a sampler of recipe {recipe.name!r} "
                        f"({hint}samplers: {', '.join(samplers)})")


def _check_resources(res: Resources, where: str) -> None:
    _count(res.workers, "resources.workers", where, 1, MAX_WORKERS)
    if not res.cpus_per_worker > 0:
        raise SpecError(f"{where}: resources.cpus_per_worker must be positive (fractions are allowed), got "
                        f"{res.cpus_per_worker!r}")
    if not res.gpus_per_worker >= 0:
        raise SpecError(f"{where}: resources.gpus_per_worker must be 0 or more, got {res.gpus_per_worker!r}")
    _count(res.max_concurrent_trials, "resources.max_concurrent_trials", where, 1, MAX_WORKERS)
    _count(res.max_failures, "resources.max_failures", where, 0)
    if res.ray_train not in RAY_TRAIN:
        raise SpecError(f"{where}: resources.ray_train must be one of {', '.join(RAY_TRAIN)}, got "
                        f"{short(res.ray_train)}")


def check_data(data: DataSpec, where: str) -> None:
    _count(data.limit, "data.limit", where)
    _count(data.size, "data.size", where, 1, MAX_IMAGE_SIDE)
    _count(data.channels, "data.channels", where, 1, MAX_IMAGE_SIDE)
    _count(data.pad, "data.pad", where, 0, MAX_IMAGE_SIDE)


def _check_table(t: TableSpec, where: str) -> None:
    """The table section's own values; which substudies its keys name is checked with the whole study."""
    if t.kind not in TABLE_KINDS:
        raise SpecError(f"{where}: table.kind must be one of {', '.join(TABLE_KINDS)}, got {short(t.kind)}")
    safe_component(t.metric, "table.metric", where)  # names pareto_<metric>.png
    if t.paper_csv is not None:
        safe_component(t.paper_csv, "table.paper_csv", where)
    if t.scatter:
        if len(t.scatter) != 2:
            raise SpecError(f"{where}: table.scatter must name two metrics, x then y (e.g. [size, fid]), got "
                            f"{len(t.scatter)}")
        for m in t.scatter:
            safe_component(m, "table.scatter entry", where)  # names <x>_vs_<y>.png
            if m not in METRICS:
                close = difflib.get_close_matches(m, list(METRICS), n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else f"metrics: {', '.join(METRICS)}"
                raise SpecError(f"{where}: table.scatter entry {m!r} is not a known metric ({hint})")
    for what, mapping in (("combine", t.combine), ("curves", t.curves)):
        for key, names in mapping.items():
            safe_component(key, f"table.{what} key", where)  # names <key>.csv / <key>_curves.png
            if (not isinstance(names, (list, tuple)) or not names
                    or not all(isinstance(n, str) and n for n in names)):
                entries = "substudy names" if what == "combine" else "logged metric keys"
                raise SpecError(f"{where}: table.{what}.{key} must be a non-empty list of {entries}, got "
                                f"{short(names)}")
    for key, x in t.plots.items():
        safe_component(key, "table.plots key", where)  # names <key>_<metric>.png
        section, dot, rest = x.partition(".") if isinstance(x, str) else ("", "", "")
        if x != "depth" and not (dot and rest and section in ("model", "train", "eval", "data")):
            raise SpecError(f"{where}: table.plots.{key} must be 'depth' or a config key such as 'train.epochs', got "
                            f"{short(x)}")
    for key, label in t.labels.items():
        if not isinstance(key, str) or not isinstance(label, str):
            raise SpecError(f"{where}: table.labels must map settings to text labels, got {short(key)}: "
                            f"{short(label)}")


def _check_table_refs(study: Study, where: str) -> None:
    """table.combine values and table.plots/curves keys name substudies of this study."""
    names = list(study.substudies)
    have = f"substudies: {', '.join(names)}" if names else "this study has no substudies"
    for key, parts in study.table.combine.items():
        for n in parts:
            if n not in names:
                raise SpecError(f"{where}: table.combine.{key} lists {short(n)}, which is not a substudy ({have})")
    for what, mapping in (("plots", study.table.plots), ("curves", study.table.curves)):
        for key in mapping:
            if key not in names:
                raise SpecError(f"{where}: table.{what} key {key!r} is not a substudy ({have})")


# ---------------------------------------------------------------------------------------------------------- trials
@dataclass(frozen=True)
class Trial:
    """One concrete run: everything that determines its result, and its stable hash."""

    study: str
    recipe: str
    variant: str
    dataset: str
    seed: int
    axes: dict[str, Any]
    model: dict[str, Any]  # the full resolved zoo config
    train: dict[str, Any]  # the full resolved recipe TrainConfig
    eval: dict[str, Any]
    data: dict[str, Any]
    family: str
    params: int
    gflops: float
    diagnostic: bool = False  # over budget but allowed, flagged in tables
    substudies: tuple[str, ...] = ()  # the substudies this trial belongs to (not part of the hash)
    # Trials with the same train_hash differ only after training (e.g. pruning arms of one baseline) and share one
    # trained model; "" when the recipe does not share (each trial trains its own).
    train_hash: str = ""

    def resolved(self) -> dict[str, Any]:
        """What the hash covers: the result-determining config (not resources, paths or the profile name).

        Keys whose value is None (unset) are left out, so adding an optional key to the schema later does not
        change the hash of trials that never set it.
        """
        data = {k: v for k, v in self.data.items() if k not in ("root", "download")}
        return _prune({
            "recipe": self.recipe, "variant": self.variant, "family": self.family, "dataset": self.dataset,
            "seed": self.seed, "model": self.model, "train": self.train, "eval": self.eval, "data": data,
        })

    @property
    def config_hash(self) -> str:
        return _hash(self.resolved())

    def payload(self) -> dict[str, Any]:
        """What a recipe receives: the resolved config with the model, train and eval sections whole (a key set to
        None stays None instead of falling back to its default), plus the trial's identity."""
        return {**self.resolved(), "model": self.model, "train": self.train, "eval": self.eval, "axes": self.axes,
                "study": self.study, "config_hash": self.config_hash, "train_hash": self.train_hash}

    def with_train_hash(self, training_view) -> Trial:
        """This trial with its train_hash: the hash of what determines training alone (no eval section, and the
        train section through the recipe's ``training_view``)."""
        if training_view is None:
            return self
        r = self.resolved()
        r.pop("eval", None)
        r["train"] = _prune(training_view(self.train))
        return dataclasses.replace(self, train_hash=_hash(r))

    def axes_text(self) -> str:
        """The trial's axis values as ``key=value`` words (last part of each key; zipped axes spelled out)."""
        items = [(kk, vv) for k, v in self.axes.items() for kk, vv in (zip(k.split("+"), v) if "+" in k else [(k, v)])]
        return " ".join(f"{k.split('.')[-1]}={v}" for k, v in items)

    @property
    def run_name(self) -> str:
        """Readable MLflow run name: variant + dataset + axes + seed."""
        return " ".join(x for x in (self.variant, self.dataset, self.axes_text(), f"seed={self.seed}") if x)


def _hash(resolved: dict[str, Any]) -> str:
    blob = json.dumps(resolved, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _prune(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def _set_dotted(sections: dict[str, dict], key: str, value: Any) -> None:
    section, _, rest = key.partition(".")
    sections[section][rest] = value


def expand_trials(loaded: LoadedStudy) -> list[Trial]:
    """The grid datasets x variants x axes x seeds of every substudy, each trial resolved, budget-checked
    and hashed; a trial that several substudies share appears once, listing them all.

    Models are built on the meta device to count parameters, so nothing is allocated or trained here.
    """
    by_hash: dict[str, Trial] = {}
    for substudy, sub in loaded.substudies or (("", loaded.study),):
        where = f"{loaded.path}: substudies.{substudy}" if substudy else str(loaded.path)
        substudy_trials = _expand_substudy(loaded, sub, where)
        _check_plot_key(loaded, substudy, substudy_trials)
        for t in substudy_trials:
            t = dataclasses.replace(t, substudies=(substudy,) if substudy else ())
            old = by_hash.get(t.config_hash)
            if old is None:
                by_hash[t.config_hash] = t
            elif substudy and substudy not in old.substudies:
                by_hash[t.config_hash] = dataclasses.replace(old, substudies=old.substudies + (substudy,))
    return list(by_hash.values())


def _check_plot_key(loaded: LoadedStudy, substudy: str, trials: list[Trial]) -> None:
    """table.plots.<substudy>: its x axis must be a key every trial of the substudy has (or 'depth')."""
    x = loaded.study.table.plots.get(substudy) if substudy else None
    if x is None or x == "depth":
        return
    section, _, rest = x.partition(".")
    for t in trials:
        if rest not in {"model": t.model, "train": t.train, "eval": t.eval, "data": t.data}[section]:
            raise SpecError(f"{loaded.path}: table.plots.{substudy} {x!r} is not a key of the substudy's trials "
                            f"(variant {t.variant!r})")


def _expand_substudy(loaded: LoadedStudy, s: Study, where: str) -> list[Trial]:
    import zoo
    from harness.recipes import get_recipe

    recipe = get_recipe(s.recipe, where)
    axis_keys = list(s.axes)
    trials: list[Trial] = []
    for dataset, variant, combo, seed in itertools.product(
        s.datasets, s.variants, itertools.product(*(s.axes[k] for k in axis_keys)), s.seeds
    ):
        sections = {
            "model": dict(s.model),
            "train": dict(s.train),
            "eval": dataclasses.asdict(s.eval),
            "data": dataclasses.asdict(s.data),
        }
        axes = dict(zip(axis_keys, combo))
        for k, v in axes.items():
            for kk, vv in zip(k.split("+"), v if "+" in k else [v]):
                _set_dotted(sections, kk, vv)
        sections["data"]["root"] = str(loaded.data_root())
        train_cfg = from_dict(recipe.train_config, sections["train"], f"{where}: train")
        check_train(train_cfg, where)  # again: axes may set what the study's own section did not
        train = dataclasses.asdict(train_cfg)
        eval_spec = resolve_extractor(from_dict(EvalSpec, sections["eval"], f"{where}: eval"), where)
        check_eval(eval_spec, recipe, where)
        data_spec = from_dict(DataSpec, sections["data"], f"{where}: data")
        check_data(data_spec, where)
        _check_generated_data(data_spec, s.resources, where)
        try:
            cfg = zoo.config(variant, **recipe.model_overrides(sections["model"], dataset, sections["data"], train))
        except zoo.ZooError as e:
            raise SpecError(f"{where}: variant {variant!r}: {e}") from None
        except (RuntimeError, MemoryError, OverflowError, ValueError, TypeError) as e:  # data options too absurd
            raise SpecError(f"{where}: dataset {dataset!r} cannot be prepared with this data section "
                            f"({_first_line(e)})") from None
        ev = dataclasses.asdict(eval_spec)
        data = dataclasses.asdict(data_spec)
        family = zoo.entry(variant).family
        model = dataclasses.asdict(cfg)
        for key, value in model.items():
            try:
                _check_finite(value, f"{where}: model.{key}")
            except SpecError as e:
                raise SpecError(f"{e} (variant {variant!r})") from None
        try:  # on the meta device: nothing is allocated, but absurd sizes still overflow torch's size arithmetic
            params = _meta_params(family, cfg)
            gflops = zoo.get_family(family).flops(cfg) / 1e9
        except (RuntimeError, MemoryError, OverflowError, ValueError) as e:
            raise SpecError(f"{where}: variant {variant!r} cannot be built with this config ({_first_line(e)})"
                            ) from None
        _check_memory(variant, params, model, train, ev, s.resources, where)
        diagnostic = variant in s.budget.diagnostic
        steps = train.get("steps", 0)
        if s.budget.max_params is not None and params > s.budget.max_params and not diagnostic:
            raise SpecError(f"{where}: variant {variant!r} has {params:,} parameters, over the study's budget "
                            f"max_params={s.budget.max_params:,} (list it under budget.diagnostic to run it anyway)")
        if s.budget.max_steps is not None and steps > s.budget.max_steps and not diagnostic:
            raise SpecError(f"{where}: train.steps={steps:,} is over the study's budget "
                            f"max_steps={s.budget.max_steps:,}")
        trials.append(Trial(
            study=s.name, recipe=s.recipe, variant=variant, dataset=dataset, seed=seed, axes=axes,
            model=model, train=train, eval=ev, data=data, family=family, params=params,
            gflops=gflops, diagnostic=diagnostic,
        ).with_train_hash(recipe.training_view))
    return trials


def machine_memory(gpus_per_worker: float) -> tuple[int, str]:
    """(bytes, whose) of the memory one trial's worker has: the GPU's when the study asks for GPUs and CUDA is
    here, else this machine's RAM."""
    if gpus_per_worker > 0:
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_properties(0).total_memory, f"the GPU's ({torch.cuda.get_device_name(0)})"
        except Exception:  # noqa: BLE001 - no usable CUDA: the RAM is the bound
            pass
    import psutil

    return psutil.virtual_memory().total, "this machine's"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def _sample_elements(model: dict[str, Any]) -> int:
    """Numbers in one training sample: channels x height x width for image models, n_dim for point models."""
    c, side = model.get("in_channels") or model.get("n_dim") or 1, model.get("input_size")
    if isinstance(side, (list, tuple)) and len(side) == 2:
        return int(c) * int(side[0]) * int(side[1])
    return int(c) * (int(side) ** 2 if isinstance(side, int) and side > 0 else 1)


def memory_estimate(params: int, model: dict[str, Any], train: dict[str, Any], ev: dict[str, Any],
                    workers: int = 1) -> tuple[int, str]:
    """A lower bound on one worker's memory, in bytes, with how it was counted: the larger of its slice of the
    training batch and the evaluation batch, x the fp32 sample x ACTIVATION_FACTOR; plus BYTES_PER_PARAM per
    parameter; plus the evaluation's n_samples fp32 samples."""
    elems = _sample_elements(model)
    train_batch = -(-int(train.get("batch_size") or 1) // max(workers, 1))
    batch = max(train_batch, int(ev.get("batch_size") or 1))
    n = int(ev.get("n_samples") or 0)
    total = batch * elems * 4 * ACTIVATION_FACTOR + params * BYTES_PER_PARAM + n * elems * 4
    how = (f"batch {batch:,} x {elems:,} numbers per sample x 4 bytes x {ACTIVATION_FACTOR} for activations + "
           f"{params:,} parameters x {BYTES_PER_PARAM} bytes + {n:,} evaluation samples")
    return total, how


def _check_memory(variant: str, params: int, model: dict, train: dict, ev: dict, res: Resources, where: str) -> None:
    need, how = memory_estimate(params, model, train, ev, res.workers)
    have, whose = machine_memory(res.gpus_per_worker)
    if need > have:
        raise SpecError(f"{where}: variant {variant!r} needs at least {_gb(need)} of memory per worker ({how}), more "
                        f"than {whose} {_gb(have)}; lower train.batch_size, eval.batch_size or eval.n_samples")


def _check_generated_data(data: DataSpec, res: Resources, where: str) -> None:
    """A dataset generated from its options (the synthetic set: n images of size x size) is drawn while the study is
    planned, in float64 with a few temporaries: refuse one that cannot fit before drawing it."""
    opts = data.options or {}
    n, side = opts.get("n"), opts.get("size")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, side)):
        return
    need = n * side * side * 3 * 8 * 4
    have, _ = machine_memory(0)
    if need > have:
        raise SpecError(f"{where}: data.options n={short(n)} and size={short(side)} generate at least {_gb(need)} of "
                        f"images (n x size x size x 3 channels x 8 bytes x 4 temporaries), more than this machine's "
                        f"{_gb(have)}")


def _meta_params(family: str, cfg: Any) -> int:
    import torch

    import zoo

    with torch.device("meta"):
        return zoo.param_count(zoo.build_from_config(family, cfg))
