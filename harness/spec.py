"""Study files: YAML -> validated dataclasses -> concrete trials, each with a stable config hash.

A study YAML is data (CONVENTIONS 6): it names zoo entries and lists axes, no code. Precedence is fixed
(CONVENTIONS 7): dataclass defaults < study YAML < scale profile < ``--set`` on the command line.

Every user-caused problem raises :class:`SpecError` whose message is one sentence naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from zoo.registry import type_name, type_ok


class SpecError(UserError):
    """A problem in a study file or its overrides."""


# ------------------------------------------------------------------------------------------------ schema sections
@dataclass(frozen=True)
class Resources:
    """Per-trial resources. One worker runs the recipe in the Tune trial process; several run as a Ray Train
    TorchTrainer (``ray_train: always`` forces that path for one worker too)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int | None = None  # default: as many as the cluster's CPUs allow
    ray_train: str = "auto"  # auto | always
    max_failures: int = 0  # Tune restarts of a failed trial (from its last checkpoint)

    @property
    def uses_train(self) -> bool:
        """Whether each trial runs as a Ray Train TorchTrainer (several workers, or forced)."""
        return self.workers > 1 or self.ray_train == "always"


@dataclass(frozen=True)
class Budget:
    """Constraints checked before anything trains; ``diagnostic`` variants may exceed them and are flagged."""

    max_params: int | None = None
    max_steps: int | None = None
    diagnostic: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSpec:
    root: str = "data"  # relative to the study file's parent's parent (the project), or absolute
    download: bool = False
    limit: int | None = None  # first n training images
    size: int | None = None
    channels: int | None = None
    pad: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the dataset's own options (synthetic: n, size; npz: path)


@dataclass(frozen=True)
class EvalSpec:
    every: int = 10_000  # steps between evaluations (and checkpoints); the last step is always evaluated
    n_samples: int = 2000  # generated samples per evaluation; the reference uses as many training images
    metrics: tuple[str, ...] = ("fid", "kid", "denoise_loss")
    # inception | classifier | auto (Inception when its weights are installed, else the classifier; resolved when the
    # study is loaded, so trial hashes, tables and MLflow carry the extractor actually used)
    extractor: str = "inception"
    inception_weights: str | None = None  # a local torch-fidelity weights file (offline clusters)
    sampler: str = "dpmpp_2m"  # dpmpp_2m | heun | euler
    sampler_steps: int = 50
    batch_size: int = 250
    grid: int = 64  # images in the sample grid logged at each evaluation
    runs: int | None = None  # point clouds: sampling runs averaged per evaluation (recipe default 3)
    emd_n: int | None = None  # point clouds: points in the EMD matching (recipe default 128)


@dataclass(frozen=True)
class TableSpec:
    kind: str = "best_checkpoint"  # which table builder: best_checkpoint (Table 1 style) | settings (per substudy)
    paper_csv: str | None = None  # file under harness/paper_tables/ with the paper's numbers
    metric: str = "fid"  # best_checkpoint: picks the checkpoint (lower is better); settings: the plotted metric
    # the reference variant: the report's relative columns and `harness compare --by variant`'s default baseline
    baseline: str | None = None
    # settings: a setting's value -> the paper's row label; "<substudy>/<setting>" for one substudy only
    labels: dict[str, str] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)  # settings: substudy -> x axis ("train.epochs", "depth")
    scatter: tuple[str, ...] = ()  # settings: (x metric, y metric) over every trial, e.g. (size, fid)
    # settings: substudy -> logged metric keys drawn over training steps (mean ± sd over seeds), e.g. accuracy curves
    curves: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # settings: extra tables made of other substudies' rows, e.g. {diffusion_vs_gan: [baseline, gan]}
    combine: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    name: str
    recipe: str
    datasets: tuple[str, ...]
    variants: tuple[str, ...]
    paper: str = ""
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # zoo overrides applied to every variant
    axes: dict[str, list] = field(default_factory=dict)  # "section.key" -> values, swept as a grid
    seeds: tuple[int, ...] = (0,)
    train: dict[str, Any] = field(default_factory=dict)  # validated by the recipe's TrainConfig
    eval: EvalSpec = field(default_factory=EvalSpec)
    resources: Resources = field(default_factory=Resources)
    budget: Budget = field(default_factory=Budget)
    data: DataSpec = field(default_factory=DataSpec)
    table: TableSpec = field(default_factory=TableSpec)
    profiles: dict[str, dict] = field(default_factory=dict)
    default_profile: str | None = None
    # Named parts of one study (e.g. one per question of a homework): each is a mapping of overrides (variants,
    # datasets, axes, train, ...) on top of the study; a trial shared by several parts runs once (same hash).
    substudies: dict[str, dict] = field(default_factory=dict)


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
            value = float(value)
        if not type_ok(value, ann):
            raise SpecError(f"{where}.{key}: {value!r} has type {type(value).__name__}, expected {type_name(ann)}")
        kwargs[key] = value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {e}") from None
    except (RuntimeError, MemoryError, OverflowError) as e:  # a value too large to check (e.g. T = 5e8 steps)
        raise SpecError(f"{where}: a value is too large to use ({_first_line(e)})") from None


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
                raise SpecError(f"--set {key}: {p!r} is set both as a value and as a section")
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
    parts: tuple[tuple[str, Study], ...] = ()  # (substudy name, its study); ("", study) without substudies

    @property
    def project_dir(self) -> Path:
        return self.path.resolve().parent.parent

    def data_root(self) -> Path:
        root = Path(self.study.data.root).expanduser()
        return root if root.is_absolute() else (self.project_dir / root).resolve()


def read_yaml(path: Path) -> dict:
    """Safe-load a study file; syntax errors become one sentence with the line number."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"study file {path} does not exist") from None
    except OSError as e:
        raise SpecError(f"cannot read study file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: YAML syntax error{at}: {problem}") from None
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
    # A part: the study < its substudy entry < the profile < the profile's entry for the part < --set. A part's
    # axes replace the study's (they are its question); the profile and --set never touch axes of parts they do
    # not name.
    global_over = [{k: v for k, v in prof.items() if k not in ("substudies", "axes")},
                   {k: v for k, v in dotted_to_nested(sets or {}).items() if k != "axes"}]
    base = {k: v for k, v in raw.items() if k not in ("substudies", "profiles")}
    parts: list[tuple[str, Study]] = []
    for name, over in study.substudies.items():
        _check_name(name, "substudy", where)
        if not isinstance(over, dict):
            raise SpecError(f"{where}: substudies.{name} must be a mapping of overrides")
        bad = sorted(set(over) & {"name", "profiles", "substudies", "default_profile", "resources"})
        if bad:
            raise SpecError(f"{where}: substudies.{name} cannot set {bad[0]!r} (set it for the whole study)")
        raw_over = (raw.get("substudies") or {}).get(name) or {}
        part = deep_merge(base, raw_over)
        if "axes" in raw_over:
            part["axes"] = raw_over["axes"]
        part = deep_merge(part, global_over[0])
        own = prof_parts.get(name) or {}
        part = deep_merge(part, own)
        if "axes" in own:
            part["axes"] = own["axes"]
        part = deep_merge(part, global_over[1])
        parts.append((name, _validated(part, f"{where}: substudies.{name}")))
    return LoadedStudy(study, path, profile, merged, tuple(parts) or (("", study),))


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")


def _check_name(name: Any, what: str, where: str) -> None:
    """Study, substudy and profile names become file and folder names (results/<study>/<profile>/<substudy>.csv)
    and MLflow experiment names: letters, digits, '_', '.', '-', not starting with a symbol, at most 80."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SpecError(f"{where}: {what} name {name!r} must be 1-80 letters, digits, '_', '.' or '-', starting "
                        "with a letter or digit")


def _paper_csv_exists(name: str) -> bool:
    import importlib.resources

    return "/" not in name and importlib.resources.files("harness").joinpath("paper_tables", name).is_file()


EXTRACTORS = ("inception", "classifier", "auto")


def resolve_extractor(ev: EvalSpec, where: str) -> EvalSpec:
    """``eval.extractor: auto`` becomes ``inception`` when Inception weights are available offline (torch-fidelity's
    own file, ``harness fid-weights install``'s conversion or ``eval.inception_weights``), else ``classifier``."""
    if ev.extractor not in EXTRACTORS:
        raise SpecError(f"{where}: eval.extractor must be one of {', '.join(EXTRACTORS)}, got {ev.extractor!r}")
    if ev.extractor != "auto":
        return ev
    if ev.inception_weights:  # a file named by the user: Inception, and a missing file is an error when it is used
        return dataclasses.replace(ev, extractor="inception")
    from harness.metrics import inception_available

    return dataclasses.replace(ev, extractor="inception" if inception_available() else "classifier")


def _validated(merged: dict, where: str) -> Study:
    from harness.recipes import get_recipe

    study = from_dict(Study, merged, where)
    study = dataclasses.replace(study, eval=resolve_extractor(study.eval, where))
    _check_name(study.name, "study", where)
    recipe = get_recipe(study.recipe, where)
    from_dict(recipe.train_config, study.train, f"{where}: train")  # validate now; trials rebuild it
    for key, values in study.axes.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: axes.{key} must be a non-empty list of values")
        keys = key.split("+")  # "train.lbeta+train.ubeta": values move together, as pairs
        for k in keys:
            if k.split(".", 1)[0] not in {"model", "train", "eval", "data"} or "." not in k:
                raise SpecError(f"{where}: axes key {k!r} must be 'model.<key>', 'train.<key>', 'eval.<key>' or "
                                "'data.<key>'")
        if len(keys) > 1 and any(not isinstance(v, list) or len(v) != len(keys) for v in values):
            raise SpecError(f"{where}: every value of axes.{key} must be a list of {len(keys)} values, one per key")
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
    return study


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
    substudies: tuple[str, ...] = ()  # the parts of the study this trial belongs to (not part of the hash)
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
    """The grid datasets x variants x axes x seeds of every part of the study, each trial resolved, budget-checked
    and hashed; a trial that several substudies share appears once, listing them all.

    Models are built on the meta device to count parameters, so nothing is allocated or trained here.
    """
    by_hash: dict[str, Trial] = {}
    for part_name, part in loaded.parts or (("", loaded.study),):
        where = f"{loaded.path}: substudies.{part_name}" if part_name else str(loaded.path)
        for t in _expand_part(loaded, part, where):
            t = dataclasses.replace(t, substudies=(part_name,) if part_name else ())
            old = by_hash.get(t.config_hash)
            if old is None:
                by_hash[t.config_hash] = t
            elif part_name and part_name not in old.substudies:
                by_hash[t.config_hash] = dataclasses.replace(old, substudies=old.substudies + (part_name,))
    return list(by_hash.values())


def _expand_part(loaded: LoadedStudy, s: Study, where: str) -> list[Trial]:
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
        train = dataclasses.asdict(from_dict(recipe.train_config, sections["train"], f"{where}: train"))
        try:
            cfg = zoo.config(variant, **recipe.model_overrides(sections["model"], dataset, sections["data"], train))
        except zoo.ZooError as e:
            raise SpecError(f"{where}: variant {variant!r}: {e}") from None
        ev = dataclasses.asdict(resolve_extractor(from_dict(EvalSpec, sections["eval"], f"{where}: eval"), where))
        data = dataclasses.asdict(from_dict(DataSpec, sections["data"], f"{where}: data"))
        family = zoo.entry(variant).family
        try:  # on the meta device: nothing is allocated, but absurd sizes still overflow torch's size arithmetic
            params = _meta_params(family, cfg)
            gflops = zoo.get_family(family).flops(cfg) / 1e9
        except (RuntimeError, MemoryError, OverflowError, ValueError) as e:
            raise SpecError(f"{where}: variant {variant!r} cannot be built with this config ({_first_line(e)})"
                            ) from None
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
            model=dataclasses.asdict(cfg), train=train, eval=ev, data=data, family=family, params=params,
            gflops=gflops, diagnostic=diagnostic,
        ).with_train_hash(recipe.training_view))
    return trials


def _meta_params(family: str, cfg: Any) -> int:
    import torch

    import zoo

    with torch.device("meta"):
        return zoo.param_count(zoo.build_from_config(family, cfg))
